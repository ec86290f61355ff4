#!/usr/bin/env python3
"""The largest relative difference between two safetensors files of the same Variables (per
Variable: max |a - b| / max |b|), printed as "<diff> (<variable>)"; exit 1 above TOL.
Usage: tests/safetensors_diff.py A B [TOL]   (TOL default 1e-5)"""
import json
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        blob = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        code, size = {"F32": ("f", 4), "F64": ("d", 8)}[t["dtype"]]
        b, e = t["data_offsets"]
        out[name] = struct.unpack("<%d%s" % ((e - b) // size, code), blob[b:e])
    return out


def main():
    a, b = load(sys.argv[1]), load(sys.argv[2])
    tol = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-5
    if a.keys() != b.keys():
        print("different Variables: %s vs %s" % (sorted(a), sorted(b)))
        return 1
    worst, where = 0.0, ""
    for name in a:
        scale = max(max(abs(v) for v in b[name]), 1e-30)
        d = max(abs(x - y) for x, y in zip(a[name], b[name])) / scale
        if d > worst:
            worst, where = d, name
    print("%.3g (%s)" % (worst, where))
    return 0 if worst <= tol else 1


if __name__ == "__main__":
    sys.exit(main())
