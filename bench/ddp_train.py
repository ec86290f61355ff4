# PyTorch DistributedDataParallel (gloo, CPU) reference for bench/scaling.sh: N processes, prints one JSON line.
"""Times PyTorch data-parallel training (MLP or CNN, Fashion-MNIST, momentum SGD) on the CPU.

The script launches the N processes itself (torch.multiprocessing.spawn); they meet over TCP on
127.0.0.1 (a free loopback port, GLOO_SOCKET_IFNAME=lo) and use the gloo backend. Each process
runs one compute thread (OMP/OPENBLAS/MKL_NUM_THREADS and torch.set_num_threads set before any
work). The global batch B is split evenly: every rank draws the same seeded permutation of the
training set, and at each step rank r takes its own contiguous B/N slice of the next B indices
(disjoint shards, like DistributedSampler). Models, data, loss and optimizer are the ones of
bench/torch_train.py.

Per timed step: index the local batch, forward, cross-entropy, zero_grad(set_to_none=True),
backward (DDP all-reduces the gradients in buckets, overlapped with backward), optimizer step,
loss.item(). W warm-up steps run untimed; then a barrier, and rank 0 times S steps.

--world-size 1 runs in this process without torch.distributed and without the DDP wrapper (plain
single-process training, the fair 1-rank baseline, the same as torch_train.py); --ddp-at-1 wraps
the model in DDP with a world of 1 instead, to see the wrapper's own cost.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--world-size", type=int, default=2, help="processes (ranks)")
    p.add_argument("--batch", type=int, default=64, help="GLOBAL batch, split over the ranks")
    p.add_argument("--steps", type=int, default=500, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=1, help="compute threads per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    p.add_argument("--ddp-at-1", action="store_true",
                   help="with --world-size 1, still use a process group and the DDP wrapper")
    p.add_argument("--port", type=int, default=0, help="rendezvous port on 127.0.0.1 (0: pick a free one)")
    p.add_argument("--timeout", type=float, default=300.0, help="gloo timeout in seconds")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args(argv)
    if a.steps < 1 or a.warmup < 0 or a.batch < 1 or a.threads < 1 or a.world_size < 1:
        p.error("--steps, --batch, --threads and --world-size must be >= 1 and --warmup >= 0")
    if a.batch % a.world_size:
        p.error(f"--batch {a.batch} is not divisible by --world-size {a.world_size}")
    return a


def set_thread_env(threads):
    """Thread counts for OpenMP/BLAS: must happen before torch is imported (here and in children)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only


if __name__ == "__main__":
    _ARGS = parse_args()
    set_thread_env(_ARGS.threads)

import ctypes  # noqa: E402
import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_train import Batches, build_model, load_fashion_mnist  # noqa: E402


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """Linux: SIGTERM this process when the launching process dies (no orphaned ranks)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def spawned_worker(rank, a, port):
    """Entry point of a spawned rank (torch.multiprocessing.spawn); see worker(exit_when_done)."""
    die_with_parent()
    worker(rank, a, port, exit_when_done=True)


def worker(rank, a, port, exit_when_done=False):
    """One rank: trains, and on rank 0 prints the JSON line. Raises on any failure.

    exit_when_done: end the process with os._exit(0) at the end, while the DDP model is still
    alive. Freeing it (when this function returns) destroys the Reducer and with it the
    ProcessGroupGloo, whose destructor joins gloo's worker threads while holding the GIL; in
    PyTorch 1.13 such a thread can be freeing a tensor that needs the GIL, and the process then
    deadlocks (seen here: about one 2-rank run in ten never exited). An exception still
    propagates to torch.multiprocessing, which reports it and exits non-zero.
    """
    set_thread_env(a.threads)  # already inherited; harmless
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only allowed before any parallel work has started
        pass
    world = a.world_size
    use_ddp = world > 1 or a.ddp_at_1
    if use_ddp:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world, timeout=timedelta(seconds=a.timeout))
    torch.manual_seed(a.seed)  # same initial weights everywhere (DDP broadcasts rank 0's anyway)

    x, y = load_fashion_mnist(a.data_dir)
    net = build_model(a.model)
    net.train()
    model = nn.parallel.DistributedDataParallel(net, bucket_cap_mb=a.bucket_mb) if use_ddp else net
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    local = a.batch // world
    batches = Batches(x.shape[0], a.batch, a.seed)  # same global sequence on every rank

    def step():
        idx = batches.next()[rank * local:(rank + 1) * local]
        xb, yb = x[idx], y[idx]
        loss = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    if use_ddp:
        dist.barrier()
    loss = float("nan")
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0

    final_loss = loss
    if use_ddp:  # untimed: mean of the ranks' last local losses, and done together
        t = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(t)
        final_loss = t.item() / world
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        print(json.dumps({
            "framework": "pytorch-ddp",
            "model": a.model,
            "world_size": world,
            "ddp": use_ddp,
            "backend": "gloo" if use_ddp else "none",
            "batch": a.batch,
            "batch_per_rank": local,
            "steps": a.steps,
            "warmup": a.warmup,
            "threads": a.threads,
            "torch_version": torch.__version__,
            "seconds": round(elapsed, 6),  # wall time of rank 0's timed loop
            "cpu_seconds": round(cpu, 6),  # rank 0's process CPU time in that loop
            "samples_per_second": round(a.steps * a.batch / elapsed, 2),  # global samples/s
            "final_loss": round(final_loss, 6),
        }, separators=(",", ":")), flush=True)
    if exit_when_done:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main(a):
    if a.world_size == 1 and not a.ddp_at_1:
        worker(0, a, 0)
        return 0
    port = a.port or free_port()
    try:
        mp.spawn(spawned_worker, args=(a, port), nprocs=a.world_size, join=True)
    except Exception as e:  # a rank raised or died: report it and fail
        print(f"ddp_train: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(_ARGS))
