# PyTorch reference trainer for bench/vs_pytorch.sh: same models, data and optimizer as ringflow; prints one JSON line.
"""Times PyTorch training steps (MLP or CNN, Fashion-MNIST, momentum SGD) on the CPU.

Per timed step: index a shuffled batch from the in-memory data set, forward, cross-entropy
loss, zero_grad(set_to_none=True), backward, optimizer step, loss.item() (ringflow reads the
loss every step too). Warm-up steps run first and are not timed.
"""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn


def read_idx(path, header, magic):
    """The uint8 payload of a gzipped IDX file (header bytes skipped, magic number checked)."""
    if not os.path.isfile(path):
        sys.exit(f"torch_train: error: {path} not found (install dataset-fashion-mnist or pass --data-dir)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        sys.exit(f"torch_train: error: {path} is not an IDX file with magic {magic}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header)


def load_fashion_mnist(data_dir):
    images = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"), 16, 2051)
    labels = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"), 8, 2049)
    n = labels.shape[0]
    if images.size != n * 28 * 28:
        raise ValueError(f"image file holds {images.size} bytes, expected {n} x 784")
    x = torch.from_numpy(images.astype(np.float32).reshape(n, 1, 28, 28) / 255.0)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def build_model(name):
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 10),
        )
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3136, 128), nn.ReLU(),
            nn.Linear(128, 10),
        )
    raise ValueError(f"unknown model {name!r}")


class Batches:
    """Endless shuffled batches of indices from a seeded permutation (reshuffled each epoch)."""

    def __init__(self, n, batch, seed):
        self.n, self.batch = n, batch
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, n

    def next(self):
        if self.pos + self.batch > self.n:  # drop the last partial batch, start a new epoch
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return idx


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=500, help="timed steps")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    if a.steps < 1 or a.warmup < 0 or a.batch < 1 or a.threads < 1:
        p.error("--steps, --batch and --threads must be >= 1 and --warmup >= 0")

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before any parallel work has started
        pass
    torch.manual_seed(a.seed)

    x, y = load_fashion_mnist(a.data_dir)
    model = build_model(a.model)
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    batches = Batches(x.shape[0], a.batch, a.seed)

    def step():
        idx = batches.next()
        xb, yb = x[idx], y[idx]
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    loss = float("nan")
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0

    print(json.dumps({
        "framework": "pytorch",
        "model": a.model,
        "batch": a.batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "threads": a.threads,
        "torch_version": torch.__version__,
        "seconds": round(elapsed, 6),
        "cpu_seconds": round(cpu, 6),  # process CPU time of the timed loop (less hit by a busy machine)
        "samples_per_second": round(a.steps * a.batch / elapsed, 2),
        "final_loss": round(loss, 6),
    }, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
