"""PyTorch reference of ringflow's `--model gpt` (docs/GPT.md is the contract).

  gpt_ref.py init  --out FILE.safetensors [--layers 4 --heads 4 --width 128 --context 128 --seed 42 --dtype f32]
  gpt_ref.py train --init FILE --steps N [--batch 32 --dtype f32 --threads 1 --minutes M
                   --eval-every S --log FILE.jsonl --lr 1e-3 --warmup 200 --clip 1.0 --seed 42 --save FILE]
  gpt_ref.py bench [--batch 32 --threads 1 --steps 5 --windows 5 --warmup 3 --dtype f32]

The model's parameters are plain tensors named as GPT.md's table (state_dict names); the forward
uses F.embedding, F.layer_norm, F.linear, exact GELU, a -inf causal mask and F.cross_entropy. The
training step is written out in GPT.md's order: loss -> backward -> clip -> lr set -> Adam step.
Runs are deterministic for a given thread count (torch.use_deterministic_algorithms); the f64
parity fixture uses one thread.
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kjv  # noqa: E402
import safetensors_io  # noqa: E402

PROG = "gpt_ref"
DTYPES = {"f32": torch.float32, "f64": torch.float64}
ST_DTYPES = {torch.float32: "F32", torch.float64: "F64"}
ST_TORCH = {"F32": torch.float32, "F64": torch.float64}

ADAM_BETAS = (0.9, 0.99)
ADAM_EPS = 1e-8


def die(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Parameters

def param_specs(L, d, T, V):
    """(name, shape, init) in state_dict order; init is ("normal", std), ("ones",) or ("zeros",)."""
    proj_std = 0.02 / math.sqrt(2 * L)
    specs = [("wte.weight", [V, d], ("normal", 0.02)),
             ("wpe.weight", [T, d], ("normal", 0.02))]
    for i in range(L):
        p = f"h.{i}."
        specs += [
            (p + "ln_1.weight", [d], ("ones",)),
            (p + "ln_1.bias", [d], ("zeros",)),
            (p + "attn.c_attn.weight", [3 * d, d], ("normal", 0.02)),
            (p + "attn.c_attn.bias", [3 * d], ("zeros",)),
            (p + "attn.c_proj.weight", [d, d], ("normal", proj_std)),
            (p + "attn.c_proj.bias", [d], ("zeros",)),
            (p + "ln_2.weight", [d], ("ones",)),
            (p + "ln_2.bias", [d], ("zeros",)),
            (p + "mlp.c_fc.weight", [4 * d, d], ("normal", 0.02)),
            (p + "mlp.c_fc.bias", [4 * d], ("zeros",)),
            (p + "mlp.c_proj.weight", [d, 4 * d], ("normal", proj_std)),
            (p + "mlp.c_proj.bias", [d], ("zeros",)),
        ]
    specs += [("ln_f.weight", [d], ("ones",)), ("ln_f.bias", [d], ("zeros",))]
    return specs


def init_params(L, d, T, V, seed, dtype=torch.float64):
    """GPT.md's initial values, drawn in f64 from a torch.Generator seeded with `seed`, then cast."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape, how in param_specs(L, d, T, V):
        if how[0] == "normal":
            t = torch.empty(shape, dtype=torch.float64).normal_(0.0, how[1], generator=g)
        elif how[0] == "ones":
            t = torch.ones(shape, dtype=torch.float64)
        else:
            t = torch.zeros(shape, dtype=torch.float64)
        out[name] = t.to(dtype)
    return out


def config_of(params, heads):
    """(L, H, d, T, V) from the parameter shapes (heads cannot be read off them)."""
    V, d = params["wte.weight"].shape
    T = params["wpe.weight"].shape[0]
    L = 0
    while f"h.{L}.ln_1.weight" in params:
        L += 1
    return L, heads, d, T, V


def save_params(path, params, metadata=None):
    tensors = []
    for name, t in params.items():
        t = t.detach().contiguous()
        if t.dtype not in ST_DTYPES:
            raise ValueError(f"{name}: cannot save dtype {t.dtype}")
        # x86 is little-endian, as safetensors and ringflow's reader are.
        tensors.append((name, ST_DTYPES[t.dtype], list(t.shape), t.numpy().tobytes()))
    safetensors_io.write(path, tensors, {k: str(v) for k, v in (metadata or {}).items()})


def load_params(path):
    """({name: tensor}, metadata) in file order; F32/F64 only."""
    tensors, metadata = safetensors_io.read(path)
    out = {}
    for name, (dtype, shape, raw) in tensors.items():
        if dtype not in ST_TORCH:
            raise safetensors_io.SafetensorsError(f"{path}: tensor {name!r} is {dtype}, not F32/F64")
        out[name] = torch.frombuffer(bytearray(raw), dtype=ST_TORCH[dtype]).reshape(shape).clone()
    return out, metadata


def check_params(params, L, d, T, V):
    """The names and shapes of GPT.md's table, exactly (no missing or extra name)."""
    want = {n: s for n, s, _ in param_specs(L, d, T, V)}
    missing = sorted(set(want) - set(params))
    extra = sorted(set(params) - set(want))
    if missing or extra:
        raise ValueError(f"parameters differ from GPT.md's table: missing {missing}, extra {extra}")
    for n, s in want.items():
        if list(params[n].shape) != s:
            raise ValueError(f"{n} has shape {list(params[n].shape)}, GPT.md says {s}")


# ---------------------------------------------------------------------------------------------
# Model

class GPT:
    """The forward of GPT.md over a dict of leaf tensors (requires_grad) named as its table."""

    def __init__(self, params, heads, dropout=0.0):
        self.L, self.H, self.d, self.T, self.V = config_of(params, heads)
        if self.d % self.H:
            raise ValueError(f"width {self.d} is not a multiple of heads {self.H}")
        check_params(params, self.L, self.d, self.T, self.V)
        self.p = params
        self.dropout = dropout
        self.training = True
        # True above the diagonal: position t may not look at t' > t.
        self.mask = torch.triu(torch.ones(self.T, self.T, dtype=torch.bool), diagonal=1)

    def parameters(self):
        return list(self.p.values())

    def _drop(self, x):
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x

    def logits(self, x):
        p, H, d = self.p, self.H, self.d
        B, T = x.shape
        dh = d // H
        h = F.embedding(x, p["wte.weight"]) + p["wpe.weight"][:T]
        h = self._drop(h)
        mask = self.mask[:T, :T]
        for i in range(self.L):
            q_ = f"h.{i}."
            a = F.layer_norm(h, (d,), p[q_ + "ln_1.weight"], p[q_ + "ln_1.bias"], 1e-5)
            qkv = F.linear(a, p[q_ + "attn.c_attn.weight"], p[q_ + "attn.c_attn.bias"])
            q, k, v = qkv.split(d, dim=-1)
            q = q.reshape(B, T, H, dh).transpose(1, 2)
            k = k.reshape(B, T, H, dh).transpose(1, 2)
            v = v.reshape(B, T, H, dh).transpose(1, 2)
            s = (q @ k.transpose(-2, -1)) / math.sqrt(dh)
            s = s.masked_fill(mask, float("-inf"))
            att = self._drop(torch.softmax(s, dim=-1))
            y = (att @ v).transpose(1, 2).reshape(B, T, d)
            h = h + self._drop(F.linear(y, p[q_ + "attn.c_proj.weight"], p[q_ + "attn.c_proj.bias"]))
            m = F.layer_norm(h, (d,), p[q_ + "ln_2.weight"], p[q_ + "ln_2.bias"], 1e-5)
            u = F.gelu(F.linear(m, p[q_ + "mlp.c_fc.weight"], p[q_ + "mlp.c_fc.bias"]))
            h = h + self._drop(F.linear(u, p[q_ + "mlp.c_proj.weight"], p[q_ + "mlp.c_proj.bias"]))
        h = F.layer_norm(h, (d,), p["ln_f.weight"], p["ln_f.bias"], 1e-5)
        return F.linear(h, p["wte.weight"])

    def loss(self, x, y, reduction="mean"):
        """Cross-entropy in nats, averaged (or summed) over the B*T positions."""
        z = self.logits(x)
        return F.cross_entropy(z.reshape(-1, self.V), y.reshape(-1), reduction=reduction)


# ---------------------------------------------------------------------------------------------
# Data as tensors

class Data:
    def __init__(self, corpus, T):
        self.T = T
        self.train = torch.tensor(corpus.encode(corpus.train), dtype=torch.long)
        self.test = torch.tensor(corpus.encode(corpus.test), dtype=torch.long)
        self.n_train = kjv.n_windows(len(self.train), T)
        self.n_test = kjv.n_windows(len(self.test), T)
        self.offsets = torch.arange(T + 1)

    def batch(self, tokens, windows):
        """(inputs, targets), each [len(windows), T], of the given window indices."""
        idx = torch.as_tensor(windows, dtype=torch.long)[:, None] * self.T + self.offsets
        w = tokens[idx]
        return w[:, :-1], w[:, 1:]


def evaluate(model, data, eval_batch=64):
    """Mean loss (nats) over every position of every test window, in window order."""
    was = model.training
    model.training = False
    total = 0.0
    with torch.no_grad():
        for b in range(0, data.n_test, eval_batch):
            x, y = data.batch(data.test, range(b, min(b + eval_batch, data.n_test)))
            total += model.loss(x, y, reduction="sum").item()
    model.training = was
    return total / (data.n_test * data.T)


# ---------------------------------------------------------------------------------------------
# Training

class Trainer:
    """One step = GPT.md's recipe, in this order: zero grads, loss, backward, clip, lr, Adam."""

    def __init__(self, model, lr=1e-3, warmup=200, clip=1.0):
        self.model = model
        self.params = model.parameters()
        for t in self.params:
            t.requires_grad_(True)
        self.peak, self.warmup, self.clip = lr, warmup, clip
        # foreach=False: the single-tensor path, whose arithmetic test_gpt_ref.py checks against
        # the formulas (m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
        # w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)).
        self.opt = torch.optim.Adam(self.params, lr=0.0, betas=ADAM_BETAS, eps=ADAM_EPS,
                                    weight_decay=0.0, amsgrad=False, foreach=False)
        self.step_no = 0

    def step(self, x, y):
        """Returns (loss, lr, grad_norm before clipping) as Python floats."""
        self.step_no += 1
        for t in self.params:
            t.grad = None
        loss = self.model.loss(x, y)
        loss.backward()
        if self.clip > 0:
            # torch 1.13: total = ||(||g_i||_2)_i||_2; every g_i *= min(1, clip / (total + 1e-6)).
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.clip).item()
        else:
            gnorm = global_norm(self.params)
        lr = kjv.lr_at(self.step_no, self.peak, self.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return loss.item(), lr, gnorm


def global_norm(params):
    with torch.no_grad():
        return torch.norm(torch.stack([torch.norm(t.grad, 2.0) for t in params]), 2.0).item()


def setup_threads(k):
    torch.set_num_threads(k)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set (a second call in one process)
    torch.use_deterministic_algorithms(True)


def load_model(path, dtype, heads_flag, dropout):
    try:
        params, meta = load_params(path)
    except (OSError, safetensors_io.SafetensorsError) as e:
        die(f"cannot load --init {path}: {e}")
    heads = heads_flag if heads_flag else int(meta.get("heads", 0))
    if heads <= 0:
        die(f"{path} does not record the number of heads (no 'heads' metadata): pass --heads")
    params = {n: t.to(dtype) for n, t in params.items()}
    try:
        return GPT(params, heads, dropout)
    except ValueError as e:
        die(f"--init {path}: {e}")


# ---------------------------------------------------------------------------------------------
# Subcommands

def cmd_init(a):
    if a.width % a.heads:
        die(f"--width {a.width} is not a multiple of --heads {a.heads}")
    corpus = kjv.load_or_exit(a.data, PROG) if a.vocab is None else None
    V = a.vocab if a.vocab is not None else len(corpus.vocab)
    params = init_params(a.layers, a.width, a.context, V, a.seed, DTYPES[a.dtype])
    meta = {"layers": a.layers, "heads": a.heads, "width": a.width, "context": a.context,
            "vocab": V, "seed": a.seed, "init": "gpt_ref.py init (torch.Generator, drawn in f64)"}
    try:
        save_params(a.out, params, meta)
    except OSError as e:
        die(f"cannot write {a.out}: {e.strerror}")
    n = sum(t.numel() for t in params.values())
    print(json.dumps({"out": a.out, "parameters": n, "dtype": a.dtype, **{k: meta[k] for k in
                      ("layers", "heads", "width", "context", "vocab", "seed")}}))


def train_run(model, data, steps, batch, seed, lr, warmup, clip, minutes=None, eval_every=0,
              log=None, on_step=None):
    """Trains in place; returns the summary dict. Wall time counts training steps only (not
    set-up, not evaluation). `on_step(step, windows, loss, lr, gnorm)` is called after each step."""
    trainer = Trainer(model, lr, warmup, clip)
    order = kjv.DataOrder(data.n_train, batch, seed)
    budget = minutes * 60.0 if minutes else None
    wall = 0.0
    loss = float("nan")
    evals = []
    step = 0

    def do_eval():
        t = time.perf_counter()
        test_loss = evaluate(model, data)
        rec = {"step": step, "test_loss": test_loss, "test_bpc": test_loss / math.log(2),
               "train_wall": wall, "eval_seconds": time.perf_counter() - t}
        evals.append(rec)
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    while step < steps and (budget is None or wall < budget):
        t0 = time.perf_counter()
        windows = order.windows(step)
        x, y = data.batch(data.train, windows)
        loss, lr_now, gnorm = trainer.step(x, y)
        wall += time.perf_counter() - t0
        step += 1
        if not math.isfinite(loss):
            die(f"the loss is {loss} at step {step}")
        if log:
            log.write(json.dumps({"step": step, "loss": loss, "lr": lr_now, "grad_norm": gnorm,
                                  "wall": wall}) + "\n")
        if on_step:
            on_step(step, windows, loss, lr_now, gnorm)
        if eval_every > 0 and step % eval_every == 0:
            do_eval()
    if eval_every >= 0 and (not evals or evals[-1]["step"] != step):
        do_eval()
    return {"steps": step, "train_seconds": wall,
            "chars_per_second": step * batch * data.T / wall if wall > 0 else None,
            "final_loss": loss, "test_loss": evals[-1]["test_loss"] if evals else None,
            "test_bpc": evals[-1]["test_bpc"] if evals else None}


def cmd_train(a):
    setup_threads(a.threads)
    torch.manual_seed(a.seed)  # dropout's masks (GPT.md's parity runs use none)
    dtype = DTYPES[a.dtype]
    corpus = kjv.load_or_exit(a.data, PROG)
    model = load_model(a.init, dtype, a.heads, a.dropout)
    if model.V != len(corpus.vocab):
        die(f"--init {a.init} has a vocabulary of {model.V}, the corpus {len(corpus.vocab)}")
    data = Data(corpus, model.T)
    if a.batch > data.n_train:
        die(f"--batch {a.batch} is larger than the {data.n_train} training windows")
    log = None
    if a.log:
        try:
            log = open(a.log, "w")
        except OSError as e:
            die(f"cannot write --log {a.log}: {e.strerror}")
    summary = train_run(model, data, a.steps, a.batch, a.seed, a.lr, a.warmup, a.clip,
                        a.minutes, a.eval_every, log)
    if log:
        log.close()
    if a.save:
        save_params(a.save, {n: t.detach() for n, t in model.p.items()}, {"heads": model.H})
    summary = {"model": "gpt", "framework": "torch " + torch.__version__, "dtype": a.dtype,
               "threads": a.threads, "batch": a.batch, "layers": model.L, "heads": model.H,
               "width": model.d, "context": model.T, "seed": a.seed, "lr": a.lr,
               "warmup": a.warmup, "clip": a.clip, **summary}
    print(json.dumps(summary))


def cmd_bench(a):
    setup_threads(a.threads)
    dtype = DTYPES[a.dtype]
    corpus = kjv.load_or_exit(a.data, PROG)
    params = init_params(a.layers, a.width, a.context, len(corpus.vocab), a.seed, dtype)
    model = GPT(params, a.heads)
    data = Data(corpus, model.T)
    trainer = Trainer(model)
    order = kjv.DataOrder(data.n_train, a.batch, a.seed)
    step = 0

    def run(n):
        nonlocal step
        for _ in range(n):
            x, y = data.batch(data.train, order.windows(step))
            trainer.step(x, y)
            step += 1

    run(a.warmup)
    rates = []
    for _ in range(a.windows):
        t = time.perf_counter()
        run(a.steps)
        rates.append(a.steps * a.batch * model.T / (time.perf_counter() - t))
    print(json.dumps({"model": "gpt", "framework": "torch " + torch.__version__, "dtype": a.dtype,
                      "threads": a.threads, "batch": a.batch, "layers": model.L, "heads": model.H,
                      "width": model.d, "context": model.T, "steps_per_window": a.steps,
                      "windows": a.windows, "warmup_steps": a.warmup,
                      "chars_per_second": statistics.median(rates),
                      "chars_per_second_all": [round(r, 1) for r in rates]}))


def positive(kind):
    def conv(s):
        v = kind(s)
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {s}")
        return v
    return conv


def main(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--data", help="the corpus (default: $KJV, data/kjv/kjv.txt, /tmp/kjv.txt)")

    def shape(p):
        p.add_argument("--layers", type=positive(int), default=4)
        p.add_argument("--heads", type=positive(int), default=4)
        p.add_argument("--width", type=positive(int), default=128)
        p.add_argument("--context", type=positive(int), default=128)

    p = sub.add_parser("init", help="write GPT.md's initial weights as safetensors")
    common(p)
    shape(p)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", choices=DTYPES, default="f32")
    p.add_argument("--vocab", type=positive(int), help="vocabulary size (default: the corpus's)")
    p.set_defaults(fn=cmd_init)

    p = sub.add_parser("train", help="train from an --init file with GPT.md's recipe")
    common(p)
    p.add_argument("--init", required=True, help="initial weights (safetensors, GPT.md's names)")
    p.add_argument("--heads", type=positive(int), help="heads (default: the file's metadata)")
    p.add_argument("--steps", type=positive(int), required=True)
    p.add_argument("--batch", type=positive(int), default=32)
    p.add_argument("--dtype", choices=DTYPES, default="f32")
    p.add_argument("--threads", type=positive(int), default=1)
    p.add_argument("--minutes", type=positive(float), help="stop after this much training time")
    p.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every S steps (0: at the end only; -1: never)")
    p.add_argument("--log", help="JSON lines: one per step, one per evaluation")
    p.add_argument("--lr", type=positive(float), default=1e-3, help="peak learning rate")
    p.add_argument("--warmup", type=positive(int), default=200)
    p.add_argument("--clip", type=float, default=1.0, help="global-norm clip (0: none)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=42, help="data-order seed (epoch e uses seed + e)")
    p.add_argument("--save", help="write the final weights (safetensors)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("bench", help="training characters per second (median of timed windows)")
    common(p)
    shape(p)
    p.add_argument("--batch", type=positive(int), default=32)
    p.add_argument("--threads", type=positive(int), default=1)
    p.add_argument("--steps", type=positive(int), default=5, help="steps per timed window")
    p.add_argument("--windows", type=positive(int), default=5, help="timed windows")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--dtype", choices=DTYPES, default="f32")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(fn=cmd_bench)

    a = ap.parse_args(argv)
    if a.cmd == "train" and not 0 <= a.dropout < 1:
        ap.error("--dropout must be in [0, 1)")
    a.fn(a)


if __name__ == "__main__":
    main()
