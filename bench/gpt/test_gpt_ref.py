"""Unit tests of gpt_ref.py (needs torch; skipped without it).

  /usr/bin/python3 -B -m unittest discover -s bench/gpt

The model and the optimizer step are checked against independent, written-out versions of
GPT.md's formulas (loops over heads and positions, LayerNorm and GELU by hand, Adam and the
clip as arithmetic), in f64.
"""
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import kjv  # noqa: E402

if torch is not None:
    import gpt_ref  # noqa: E402
    torch.set_num_threads(1)

SMALL = dict(L=2, d=16, T=8, V=11)


def small_params(seed=0, dtype=None):
    p = gpt_ref.init_params(SMALL["L"], SMALL["d"], SMALL["T"], SMALL["V"], seed,
                            dtype or torch.float64)
    # Give the LayerNorms and biases non-trivial values, so that their use is tested too.
    g = torch.Generator().manual_seed(seed + 100)
    for n, t in p.items():
        if not n.endswith(".weight") or ".ln_" in n or n.startswith("ln_f"):
            t += 0.1 * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
    return p


def tokens(B, T, V, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, V, (B, T + 1), generator=g)
    return w[:, :-1], w[:, 1:]


def naive_logits(p, x, L, H):
    """GPT.md's forward, written with loops and elementary operations."""
    B, T = x.shape
    V, d = p["wte.weight"].shape
    dh = d // H

    def ln(v, w, b):
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)  # biased
        return (v - mu) / torch.sqrt(var + 1e-5) * w + b

    def gelu(v):
        return 0.5 * v * (1 + torch.erf(v / math.sqrt(2)))

    h = torch.stack([torch.stack([p["wte.weight"][x[b, t]] + p["wpe.weight"][t] for t in range(T)])
                     for b in range(B)])
    for i in range(L):
        q_ = f"h.{i}."
        a = ln(h, p[q_ + "ln_1.weight"], p[q_ + "ln_1.bias"])
        qkv = a @ p[q_ + "attn.c_attn.weight"].T + p[q_ + "attn.c_attn.bias"]
        y = torch.zeros(B, T, d, dtype=h.dtype)
        for b in range(B):
            for hd in range(H):
                q = qkv[b, :, hd * dh:(hd + 1) * dh]
                k = qkv[b, :, d + hd * dh:d + (hd + 1) * dh]
                v = qkv[b, :, 2 * d + hd * dh:2 * d + (hd + 1) * dh]
                for t in range(T):
                    s = torch.stack([(q[t] * k[u]).sum() / math.sqrt(dh) for u in range(t + 1)])
                    e = torch.exp(s - s.max())
                    w = e / e.sum()
                    y[b, t, hd * dh:(hd + 1) * dh] = (w[:, None] * v[:t + 1]).sum(0)
        h = h + y @ p[q_ + "attn.c_proj.weight"].T + p[q_ + "attn.c_proj.bias"]
        m = ln(h, p[q_ + "ln_2.weight"], p[q_ + "ln_2.bias"])
        u = gelu(m @ p[q_ + "mlp.c_fc.weight"].T + p[q_ + "mlp.c_fc.bias"])
        h = h + u @ p[q_ + "mlp.c_proj.weight"].T + p[q_ + "mlp.c_proj.bias"]
    return ln(h, p["ln_f.weight"], p["ln_f.bias"]) @ p["wte.weight"].T


@unittest.skipIf(torch is None, "torch is not installed")
class Parameters(unittest.TestCase):
    def test_names_shapes_and_init(self):
        L, d, T, V = 3, 24, 10, 73
        p = gpt_ref.init_params(L, d, T, V, 5)
        self.assertEqual(list(p)[:2], ["wte.weight", "wpe.weight"])
        self.assertEqual(len(p), 2 + 12 * L + 2)
        self.assertEqual(list(p["h.2.mlp.c_proj.weight"].shape), [d, 4 * d])
        self.assertEqual(list(p["h.0.attn.c_attn.weight"].shape), [3 * d, d])
        self.assertTrue(torch.equal(p["h.1.ln_2.weight"], torch.ones(d, dtype=torch.float64)))
        self.assertTrue(torch.equal(p["ln_f.bias"], torch.zeros(d, dtype=torch.float64)))
        self.assertTrue(torch.equal(p["h.0.mlp.c_fc.bias"], torch.zeros(4 * d, dtype=torch.float64)))
        big = gpt_ref.init_params(4, 128, 128, 73, 1)
        self.assertAlmostEqual(big["h.0.mlp.c_fc.weight"].std().item(), 0.02, delta=0.0005)
        self.assertAlmostEqual(big["h.3.mlp.c_proj.weight"].std().item(), 0.02 / math.sqrt(8), delta=0.0002)
        self.assertAlmostEqual(big["h.1.attn.c_proj.weight"].std().item(), 0.02 / math.sqrt(8), delta=0.0004)
        self.assertAlmostEqual(big["h.0.mlp.c_fc.weight"].mean().item(), 0.0, delta=0.0003)
        self.assertEqual(sum(t.numel() for t in big.values()), 819072)
        # Reproducible, and different for another seed.
        self.assertTrue(torch.equal(gpt_ref.init_params(L, d, T, V, 5)["wte.weight"], p["wte.weight"]))
        self.assertFalse(torch.equal(gpt_ref.init_params(L, d, T, V, 6)["wte.weight"], p["wte.weight"]))

    def test_wrong_names_are_refused(self):
        p = small_params()
        p["extra"] = p.pop("h.1.ln_1.bias")
        with self.assertRaises(ValueError):
            gpt_ref.GPT(p, 2)

    def test_safetensors_round_trip(self):
        for dtype in (torch.float32, torch.float64):
            p = small_params(3, dtype)
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, "p.safetensors")
                gpt_ref.save_params(path, p, {"heads": 2})
                q, meta = gpt_ref.load_params(path)
            self.assertEqual(meta["heads"], "2")
            self.assertEqual(list(q), list(p))
            for n in p:
                self.assertEqual(q[n].dtype, dtype)
                self.assertTrue(torch.equal(q[n], p[n]), n)


@unittest.skipIf(torch is None, "torch is not installed")
class Forward(unittest.TestCase):
    def test_matches_the_written_out_formulas(self):
        p = small_params(1)
        for H in (1, 2, 4):
            x, y = tokens(3, SMALL["T"], SMALL["V"], 2)
            got = gpt_ref.GPT(p, H).logits(x)
            want = naive_logits(p, x, SMALL["L"], H)
            self.assertLess((got - want).abs().max().item(), 1e-12, H)
            # The loss: mean over positions of -log softmax at the target.
            lp = torch.log_softmax(want, -1)
            ce = -lp.gather(-1, y[..., None]).mean()
            self.assertLess(abs(gpt_ref.GPT(p, H).loss(x, y).item() - ce.item()), 1e-13)

    def test_shorter_inputs_use_the_first_positions(self):
        p = small_params(2)
        x, _ = tokens(2, SMALL["T"], SMALL["V"], 3)
        m = gpt_ref.GPT(p, 2)
        self.assertLess((m.logits(x[:, :5]) - naive_logits(p, x[:, :5], SMALL["L"], 2)).abs().max().item(), 1e-12)

    def test_causal(self):
        p = small_params(4)
        m = gpt_ref.GPT(p, 2)
        x, _ = tokens(2, SMALL["T"], SMALL["V"], 5)
        z = m.logits(x)
        for t in range(SMALL["T"]):
            x2 = x.clone()
            x2[:, t] = (x2[:, t] + 1) % SMALL["V"]
            z2 = m.logits(x2)
            self.assertTrue(torch.equal(z2[:, :t], z[:, :t]), t)
            self.assertFalse(torch.equal(z2[:, t], z[:, t]), t)

    def test_dropout_zero_is_identity_and_positive_is_not(self):
        p = small_params(6)
        x, y = tokens(2, SMALL["T"], SMALL["V"], 7)
        a = gpt_ref.GPT(p, 2).loss(x, y)
        torch.manual_seed(0)
        b = gpt_ref.GPT(p, 2, dropout=0.3).loss(x, y)
        self.assertNotEqual(a.item(), b.item())
        m = gpt_ref.GPT(p, 2, dropout=0.3)
        m.training = False
        self.assertEqual(m.loss(x, y).item(), a.item())


def written_out_training(p, batches, H, peak, warmup, clip):
    """Adam + clip as GPT.md and torch 1.13 state them, with plain tensor arithmetic."""
    p = {n: t.clone() for n, t in p.items()}
    m = {n: torch.zeros_like(t) for n, t in p.items()}
    v = {n: torch.zeros_like(t) for n, t in p.items()}
    b1, b2, eps = 0.9, 0.99, 1e-8
    losses = []
    for step, (x, y) in enumerate(batches, start=1):
        leaf = {n: t.clone().requires_grad_(True) for n, t in p.items()}
        loss = gpt_ref.GPT(leaf, H).loss(x, y)
        loss.backward()
        losses.append(loss.item())
        g = {n: t.grad for n, t in leaf.items()}
        norm = math.sqrt(sum((t * t).sum().item() for t in g.values()))
        coef = min(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        lr = peak * min(step / warmup, math.sqrt(warmup / step))
        for n in p:
            gn = g[n] * coef
            m[n] = b1 * m[n] + (1 - b1) * gn
            v[n] = b2 * v[n] + (1 - b2) * gn * gn
            mhat = m[n] / (1 - b1 ** step)
            vhat = v[n] / (1 - b2 ** step)
            p[n] = p[n] - lr * mhat / (torch.sqrt(vhat) + eps)
    return p, losses


@unittest.skipIf(torch is None, "torch is not installed")
class Training(unittest.TestCase):
    def run_trainer(self, p, batches, H, peak, warmup, clip):
        model = gpt_ref.GPT({n: t.clone() for n, t in p.items()}, H)
        tr = gpt_ref.Trainer(model, peak, warmup, clip)
        out = [tr.step(x, y) for x, y in batches]
        return {n: t.detach() for n, t in model.p.items()}, out

    def test_adam_and_clip_do_what_the_formulas_say(self):
        p = small_params(8)
        batches = [tokens(4, SMALL["T"], SMALL["V"], 100 + s) for s in range(6)]
        # clip 0.5: active on every step; clip 100: never active (coefficient 1); clip 0: none.
        for clip in (0.5, 100.0, 0.0):
            got, rows = self.run_trainer(p, batches, 2, 1e-2, 3, clip)
            want, losses = written_out_training(p, batches, 2, 1e-2, 3, clip)
            for n in p:
                err = (got[n] - want[n]).abs().max().item()
                self.assertLess(err, 1e-13 * max(1.0, want[n].abs().max().item()), (clip, n))
            for (loss, lr, gnorm), ref, s in zip(rows, losses, range(1, 7)):
                self.assertLess(abs(loss - ref), 1e-13)
                self.assertEqual(lr, kjv.lr_at(s, 1e-2, 3))
            if clip == 0.5:
                self.assertTrue(all(r[2] > 0.5 for r in rows))
            # The updates moved the weights by about lr per step (Adam's scale), not by 0.
            self.assertGreater((got["wte.weight"] - p["wte.weight"]).abs().max().item(), 1e-3)

    def test_f64_training_is_deterministic(self):
        p = small_params(9)
        batches = [tokens(4, SMALL["T"], SMALL["V"], 200 + s) for s in range(4)]
        a, ra = self.run_trainer(p, batches, 2, 1e-3, 2, 1.0)
        b, rb = self.run_trainer(p, batches, 2, 1e-3, 2, 1.0)
        self.assertEqual(ra, rb)
        for n in a:
            self.assertTrue(torch.equal(a[n], b[n]), n)


@unittest.skipIf(torch is None, "torch is not installed")
@unittest.skipUnless(any(os.path.isfile(p) for p in kjv.CANDIDATES) or os.environ.get("KJV"),
                     "the KJV corpus is not staged")
class Fixture(unittest.TestCase):
    def test_committed_fixture_reproduces(self):
        fx_dir = os.path.join(HERE, "fixture")
        with open(os.path.join(fx_dir, "losses.json")) as f:
            fx = json.load(f)
        c = fx["config"]
        params, meta = gpt_ref.load_params(os.path.join(fx_dir, "init.safetensors"))
        self.assertEqual(int(meta["heads"]), c["heads"])
        self.assertTrue(all(t.dtype == torch.float64 for t in params.values()))
        model = gpt_ref.GPT(params, c["heads"])
        data = gpt_ref.Data(kjv.Corpus(), c["context"])
        self.assertEqual(data.n_train, fx["corpus"]["train_windows"])
        order = kjv.DataOrder(data.n_train, c["batch"], c["data_seed"])
        tr = gpt_ref.Trainer(model, c["lr"], c["warmup"], c["clip"])
        for s in range(4):
            w = order.windows(s)
            self.assertEqual(w, fx["windows"][s])
            x, y = data.batch(data.train, w)
            if s == 0:
                self.assertEqual(x.tolist(), fx["first_batch"]["inputs"])
            loss, lr, gnorm = tr.step(x, y)
            self.assertEqual(lr, fx["lr"][s])
            # One thread, f64: bit for bit on this machine; 1e-12 leaves room for another BLAS.
            self.assertLess(abs(loss - fx["losses"][s]), 1e-12, s)
            self.assertLess(abs(gnorm - fx["grad_norm"][s]), 1e-12, s)


@unittest.skipIf(torch is None, "torch is not installed")
class Cli(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([sys.executable, "-B", os.path.join(HERE, "gpt_ref.py"), *args],
                              capture_output=True, text=True)

    def test_init_writes_the_table_and_train_refuses_a_bad_file(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "i.safetensors")
            r = self.run_cli("init", "--out", out, "--layers", "1", "--heads", "2", "--width", "8",
                             "--context", "4", "--vocab", "73", "--dtype", "f64", "--seed", "3")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["parameters"], 73 * 8 + 4 * 8 + 12 * 64 + 13 * 8 + 2 * 8)
            q, meta = gpt_ref.load_params(out)
            self.assertEqual(meta["heads"], "2")
            self.assertEqual(len(q), 2 + 12 + 2)
            bad = os.path.join(d, "bad.safetensors")
            with open(bad, "wb") as f:
                f.write(b"\x10\0\0\0\0\0\0\0{}")
            r = self.run_cli("train", "--init", bad, "--steps", "1", "--data", "/nonexistent")
            self.assertNotEqual(r.returncode, 0)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
            self.assertTrue(r.stderr.startswith("gpt_ref: error:"), r.stderr)


if __name__ == "__main__":
    unittest.main()
