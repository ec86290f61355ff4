"""Plots the equal-wall-time comparison of ringflow and the PyTorch reference on the gpt model
(docs/GPT.md): test bits per character and training loss (in bits) against training seconds.

usage: /usr/bin/python3 bench/gpt/plot_curves.py RINGFLOW_METRICS.jsonl TORCH_LOG.jsonl OUT.png
  RINGFLOW_METRICS  `ringflow train --metrics` lines (train_seconds; test_loss on evaluation lines)
  TORCH_LOG         `gpt_ref.py train --log` lines (wall; test loss on evaluation lines)
Prints the last test bits per character of each as one JSON line.
"""
import json
import math
import sys


def ringflow_curves(path):
    train, test = [], []
    for line in open(path):
        r = json.loads(line)
        if "test_loss" in r:
            test.append((r["train_seconds"], r["test_loss"] / math.log(2)))
        elif "loss" in r:
            train.append((r["train_seconds"], r["loss"] / math.log(2)))
    return train, test


def torch_curves(path):
    train, test = [], []
    for line in open(path):
        r = json.loads(line)
        key = next((k for k in ("test_loss", "test_nats") if k in r), None)
        if key is not None:
            test.append((r.get("train_wall", r.get("wall", 0.0)), r[key] / math.log(2)))
        elif "loss" in r:
            train.append((r["wall"], r["loss"] / math.log(2)))
    return train, test


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[3])
    rf_train, rf_test = ringflow_curves(sys.argv[1])
    pt_train, pt_test = torch_curves(sys.argv[2])
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pts, style, label in ((rf_train, "-", "ringflow train"), (pt_train, "-", "PyTorch train")):
        if pts:
            ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], style, alpha=0.45, label=label)
    for pts, style, label in ((rf_test, "o-", "ringflow test"), (pt_test, "s-", "PyTorch test")):
        if pts:
            ax.plot([p[0] / 60 for p in pts], [p[1] for p in pts], style, label=label)
    ax.set_xlabel("training minutes")
    ax.set_ylabel("bits per character")
    ax.set_ylim(1.0, 4.5)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("gpt (L4 H4 d128 T128) on the King James Bible, same init and recipe")
    fig.tight_layout()
    fig.savefig(sys.argv[3], dpi=110)
    print(json.dumps({"ringflow_test_bpc": rf_test[-1][1] if rf_test else None,
                      "pytorch_test_bpc": pt_test[-1][1] if pt_test else None,
                      "ringflow_minutes": rf_test[-1][0] / 60 if rf_test else None,
                      "pytorch_minutes": pt_test[-1][0] / 60 if pt_test else None}))


if __name__ == "__main__":
    main()
