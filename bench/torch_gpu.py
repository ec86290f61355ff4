# PyTorch reference for bench/gpu_vs_torch.sh: ringflow's MLP and CNN trained on one device
# (CUDA, or the CPU for a dry run) in eager mode and under torch.compile; one JSON line per result.
"""Times PyTorch training steps on a GPU (or the CPU), eager and torch.compile, several batch sizes.

The models, their initialisation, the loss, the optimizer (momentum SGD) and the data come from
bench/torch_train.py, so both benchmarks train exactly what ringflow trains.

For each (model, batch, variant) a fresh model is built from --seed, --warmup untimed steps run
(for torch.compile the first of them compiles), then --runs timed runs of --steps steps each;
torch.cuda.synchronize() brackets every timed run. One step: index a shuffled batch from the data
set (held on the device unless --data-on host), forward, cross-entropy, zero_grad(set_to_none=True),
backward, optimizer step, loss.item() (ringflow reads the loss every step too).

Output: one JSON line per (model, batch, variant) on stdout, flushed as soon as it is known, so a
caller that is killed at its time limit still keeps the finished results:
  {"framework":"pytorch","variant":"eager"|"compile","model":...,"batch":...,
   "samples_per_second":<median>|null,"samples_per_second_runs":[...],"note":...,...}
A variant that cannot run (torch.compile missing, as in torch 1.x, or failing) gets
"samples_per_second": null and a "note"; the exit status stays 0 unless the arguments are bad.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import build_model, load_fashion_mnist  # noqa: E402  (same models and data)


def emit(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DeviceBatches:
    """Endless shuffled batches of indices (seeded permutation on the CPU, reshuffled each epoch,
    last partial batch dropped), moved to the device once per epoch."""

    def __init__(self, n, batch, seed, device):
        self.n, self.batch, self.device = n, batch, device
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, n

    def next(self):
        if self.pos + self.batch > self.n:
            self.perm = torch.randperm(self.n, generator=self.gen).to(self.device)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


def load_data(a, device):
    if a.data_dir:
        x, y = load_fashion_mnist(a.data_dir)
    else:  # synthetic: same shapes as ringflow's --data synthetic (throughput does not depend on values)
        g = torch.Generator().manual_seed(a.seed)
        x = torch.rand(a.synthetic_train, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (a.synthetic_train,), generator=g)
    if a.data_on == "device":
        return x.to(device), y.to(device)
    if device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def compile_unavailable_reason():
    if not hasattr(torch, "compile"):
        return f"n/a: torch {torch.__version__} has no torch.compile"
    return None


def time_variant(a, device, x, y, model_name, batch, variant):
    """Returns the result dict for one (model, batch, variant)."""
    base = {"framework": "pytorch", "variant": variant, "model": model_name, "batch": batch,
            "device": str(device), "steps": a.steps, "warmup": a.warmup, "runs": a.runs,
            "torch_version": torch.__version__}
    if variant == "compile":
        why = compile_unavailable_reason()
        if why:
            return dict(base, samples_per_second=None, note=why)
    torch.manual_seed(a.seed)
    model = build_model(model_name).to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    loss_fn = nn.CrossEntropyLoss()
    fwd = model
    if variant == "compile":
        try:
            torch._dynamo.reset()
        except Exception:  # noqa: BLE001 (older or stripped builds)
            pass
        fwd = torch.compile(model, mode=a.compile_mode) if a.compile_mode else torch.compile(model)
    batches = DeviceBatches(x.shape[0], batch, a.seed, x.device)
    non_blocking = device.type == "cuda"

    def step():
        idx = batches.next()
        xb, yb = x[idx], y[idx]
        if xb.device != device:
            xb = xb.to(device, non_blocking=non_blocking)
            yb = yb.to(device, non_blocking=non_blocking)
        loss = loss_fn(fwd(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    try:
        t0 = time.perf_counter()
        for _ in range(max(a.warmup, 1 if variant == "compile" else 0)):
            step()
        synchronize(device)
        warmup_seconds = time.perf_counter() - t0
        sps, loss = [], float("nan")
        for _ in range(a.runs):
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                loss = step()
            synchronize(device)
            sps.append(a.steps * batch / (time.perf_counter() - t0))
    except Exception as e:  # noqa: BLE001 (report and go on with the next variant)
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        return dict(base, samples_per_second=None, note=f"failed: {msg}")
    return dict(base, samples_per_second=round(statistics.median(sps), 2),
                samples_per_second_runs=[round(v, 2) for v in sps],
                warmup_seconds=round(warmup_seconds, 3), final_loss=round(loss, 6))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,cnn", help="comma separated: mlp, cnn")
    p.add_argument("--batches", default="64,512", help="comma separated batch sizes")
    p.add_argument("--variants", default="eager,compile", help="comma separated: eager, compile")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    p.add_argument("--steps", type=int, default=300, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--runs", type=int, default=3, help="timed runs (the median is reported)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="Fashion-MNIST IDX directory; empty: synthetic data")
    p.add_argument("--synthetic-train", type=int, default=12000)
    p.add_argument("--data-on", choices=["device", "host"], default="device",
                   help="keep the data set on the device (default) or in pinned host memory")
    p.add_argument("--compile-mode", default="", help="torch.compile mode (default: torch's default)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in matmuls and convolutions (default off)")
    p.add_argument("--time-limit", type=float, default=0,
                   help="seconds: start no new (model, batch, variant) after this (0: no limit)")
    a = p.parse_args()
    models = [m for m in a.models.split(",") if m]
    variants = [v for v in a.variants.split(",") if v]
    try:
        batches = [int(b) for b in a.batches.split(",") if b]
    except ValueError:
        p.error(f"--batches must be comma separated integers, got {a.batches!r}")
    if not models or any(m not in ("mlp", "cnn") for m in models):
        p.error(f"--models must name mlp and/or cnn, got {a.models!r}")
    if not variants or any(v not in ("eager", "compile") for v in variants):
        p.error(f"--variants must name eager and/or compile, got {a.variants!r}")
    if not batches or min(batches) < 1 or a.steps < 1 or a.runs < 1 or a.warmup < 0:
        p.error("--batches, --steps and --runs must be >= 1 and --warmup >= 0")

    start = time.monotonic()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"torch_gpu: error: --device {a.device} but torch.cuda.is_available() is False")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if device.type == "cuda":
        # ringflow's CUDA backend keeps TF32 off (runtime/cuda_options.h): compare fp32 with fp32.
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotuned during the warm-up
    x, y = load_data(a, device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    # Every eager result before any compile one: compiling is slow, eager numbers matter most.
    for variant in variants:
        for model_name in models:
            for batch in batches:
                if a.time_limit and time.monotonic() - start > a.time_limit:
                    emit({"framework": "pytorch", "variant": variant, "model": model_name, "batch": batch,
                          "device": str(device), "samples_per_second": None,
                          "note": f"not run: --time-limit {a.time_limit:g} s reached"})
                    continue
                if batch > x.shape[0]:
                    emit({"framework": "pytorch", "variant": variant, "model": model_name, "batch": batch,
                          "device": str(device), "samples_per_second": None,
                          "note": f"batch larger than the data set ({x.shape[0]})"})
                    continue
                r = time_variant(a, device, x, y, model_name, batch, variant)
                r["gpu"] = gpu
                emit(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
