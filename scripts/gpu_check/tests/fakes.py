"""Stand-ins for the build's binaries, so that the stages and the driver run end to end in a unit
test: a `ringflow train` that writes loss curves, a summary and a timeline trace, and a
`ringflow_tests` that writes a gtest XML report. FAKE_DRIFT (env) makes the "GPU" side's loss
drift by that much per step."""
import os
import stat

RINGFLOW = r'''#!/usr/bin/env python3
import json, os, sys
a = sys.argv[1:]
def opt(n, d=None):
    return a[a.index(n) + 1] if n in a else d
assert a[0] == "train", a
steps = int(opt("--max-steps", "20"))
gpu = "--threads" in a or opt("--device") == "cuda:0"
drift = float(os.environ.get("FAKE_DRIFT", "0")) if gpu else 0.0
loss = [2.0 / k * (1 + drift * k) for k in range(1, steps + 1)]
if opt("--metrics"):
    with open(opt("--metrics"), "w") as fh:
        for k, l in enumerate(loss, 1):
            fh.write(json.dumps({"step": k, "loss": l}) + "\n")
        fh.write(json.dumps({"step": steps, "loss": loss[-1], "test_loss": 1.0}) + "\n")
if opt("--timeline"):
    ev, ts = [], 0
    for s in range(steps):
        ev.append({"ph": "X", "pid": 0, "tid": 2, "name": "step", "ts": ts, "dur": 3000})
        for name, dur in (("Conv2D_1", 2000), ("MatMul_2", 1000)):
            ev.append({"ph": "X", "pid": 0, "tid": 0, "name": name, "cat": name.split("_")[0], "ts": ts, "dur": dur})
            ts += dur
    with open(opt("--timeline"), "w") as fh:
        json.dump({"traceEvents": ev}, fh)
print(json.dumps({"final_loss": loss[-1], "param_norm": 10.0, "cuda_graph": False, "samples_per_second": 1000.0}))
'''

RINGFLOW_TESTS = r'''#!/usr/bin/env python3
import sys
xml = [x for x in sys.argv if x.startswith("--gtest_output=xml:")][0].split(":", 1)[1]
with open(xml, "w") as fh:
    fh.write('<?xml version="1.0"?><testsuites><testsuite name="CudaKernels">'
             '<testcase name="Unary" classname="CudaKernels" status="run" result="completed"/>'
             '<testcase name="Gemm" classname="CudaKernels" status="run" result="skipped">'
             '<skipped message="no CUDA device: none"/></testcase></testsuite></testsuites>')
print("[  SKIPPED ] CudaKernels.Gemm (0 ms)")
'''


def install(build_dir):
    """Writes build_dir/ringflow and build_dir/ringflow_tests."""
    os.makedirs(build_dir, exist_ok=True)
    for name, text in (("ringflow", RINGFLOW), ("ringflow_tests", RINGFLOW_TESTS)):
        p = os.path.join(build_dir, name)
        with open(p, "w") as fh:
            fh.write(text)
        os.chmod(p, os.stat(p).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
