"""Writes the f64 parity fixture that ringflow's gpt model is tested against:

  bench/gpt/fixture/init.safetensors   initial weights (F64, GPT.md's names; metadata: the config)
  bench/gpt/fixture/losses.json        the run from them: per-step loss, lr and gradient norm
                                       (17 significant digits), the config, the windows each step
                                       read, the first batch's token ids, per-tensor gradient
                                       norms at step 1 (before clipping), per-tensor weight norms
                                       after the last step, and the test loss before and after.

  /usr/bin/python3 -B bench/gpt/make_fixture.py [--out DIR] [--data FILE]

Config: L=2, H=2, d=32, T=16, batch 4, f64, 20 steps, seed 1 (init and data order), one thread.
The schedule's warm-up is 10 steps (not the recipe's 200) so that 20 steps cover both of its
branches (step <= 10: linear, then inverse square root); the clip (global norm 1.0) is active
on the steps whose grad_norm is above 1.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpt_ref  # noqa: E402
import kjv  # noqa: E402

CONFIG = {"layers": 2, "heads": 2, "width": 32, "context": 16, "batch": 4, "steps": 20,
          "dtype": "f64", "seed": 1, "lr": 1e-3, "warmup": 10, "clip": 1.0}


def dumps17(obj, indent=0):
    """JSON with every float written with 17 significant digits (exact round trip)."""
    pad = "  " * indent
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite value {obj}")
        return format(obj, ".17g")
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(k)}: {dumps17(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return "[" + ", ".join(dumps17(v) for v in obj) + "]"
        return "[\n" + ",\n".join(pad + "  " + dumps17(v, indent + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixture"))
    ap.add_argument("--data")
    a = ap.parse_args()
    c = CONFIG
    t_start = time.perf_counter()
    gpt_ref.setup_threads(1)
    corpus = kjv.load_or_exit(a.data, "make_fixture")
    V = len(corpus.vocab)
    os.makedirs(a.out, exist_ok=True)
    init_path = os.path.join(a.out, "init.safetensors")
    params = gpt_ref.init_params(c["layers"], c["width"], c["context"], V, c["seed"], torch.float64)
    meta = {"layers": c["layers"], "heads": c["heads"], "width": c["width"],
            "context": c["context"], "vocab": V, "seed": c["seed"],
            "init": "gpt_ref.py init (torch.Generator, drawn in f64)"}
    gpt_ref.save_params(init_path, params, meta)

    # Train from the file as written (what the C++ test loads).
    loaded, _ = gpt_ref.load_params(init_path)
    model = gpt_ref.GPT(loaded, c["heads"])
    data = gpt_ref.Data(corpus, model.T)
    order = kjv.DataOrder(data.n_train, c["batch"], c["seed"])

    # Per-tensor gradient norms of the first step's batch at the initial weights (no clipping).
    x0, y0 = data.batch(data.train, order.windows(0))
    probe = {n: t.clone().requires_grad_(True) for n, t in loaded.items()}
    gpt_ref.GPT(probe, c["heads"]).loss(x0, y0).backward()
    grad_norms_step1 = {n: t.grad.norm().item() for n, t in probe.items()}

    initial_test_loss = gpt_ref.evaluate(model, data)
    rows = []

    def on_step(step, windows, loss, lr, gnorm):
        rows.append((step, windows, loss, lr, gnorm))

    t_train = time.perf_counter()
    summary = gpt_ref.train_run(model, data, c["steps"], c["batch"], c["seed"], c["lr"],
                                c["warmup"], c["clip"], eval_every=-1, on_step=on_step)
    train_seconds = time.perf_counter() - t_train
    final_test_loss = gpt_ref.evaluate(model, data)
    final_norms = {n: t.detach().norm().item() for n, t in model.p.items()}

    out = {
        "what": "ringflow gpt parity fixture, written by bench/gpt/make_fixture.py (PyTorch "
                + torch.__version__ + ", f64, 1 thread) from init.safetensors",
        "config": {**c, "vocab": V, "data_seed": c["seed"], "init_seed": c["seed"],
                   "adam": {"beta1": gpt_ref.ADAM_BETAS[0], "beta2": gpt_ref.ADAM_BETAS[1],
                            "eps": gpt_ref.ADAM_EPS, "weight_decay": 0.0},
                   "lr_rule": "lr * min(step / warmup, sqrt(warmup / step)), step = 1, 2, ...",
                   "clip_rule": "torch 1.13 clip_grad_norm_: n = sqrt(sum of squares of all "
                                "gradients); every gradient *= min(1, clip / (n + 1e-6))",
                   "order": "zero grads, loss, backward, clip, lr set, Adam step"},
        "corpus": {"bytes": len(corpus.text), "sha256": hashlib.sha256(corpus.text).hexdigest(),
                   "train_tokens": len(data.train), "test_tokens": len(data.test),
                   "train_windows": data.n_train, "test_windows": data.n_test},
        "losses": [r[2] for r in rows],
        "lr": [r[3] for r in rows],
        "grad_norm": [r[4] for r in rows],
        "windows": [r[1] for r in rows],
        "first_batch": {"inputs": x0.tolist(), "targets": y0.tolist()},
        "grad_norms_step1": grad_norms_step1,
        "final_param_norms": final_norms,
        "initial_test_loss": initial_test_loss,
        "final_test_loss": final_test_loss,
    }
    with open(os.path.join(a.out, "losses.json"), "w") as f:
        f.write(dumps17(out) + "\n")
    total = time.perf_counter() - t_start
    print(json.dumps({"out": a.out, "steps": summary["steps"], "train_seconds": round(train_seconds, 3),
                      "seconds_per_step": round(train_seconds / summary["steps"], 4),
                      "total_seconds": round(total, 3), "first_loss": rows[0][2],
                      "last_loss": rows[-1][2], "final_test_loss": final_test_loss}))


if __name__ == "__main__":
    main()
