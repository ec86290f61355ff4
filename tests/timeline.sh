#!/usr/bin/env bash
# --timeline: one Chrome trace for all ranks. Runs 3 training steps at 2 ranks (fused update and
# allreduce) and 1 rank, and checks the file: valid JSON {"traceEvents": [...]}, one process per
# rank with its name, every op of a step as a complete span on lane 0 with the op type as its
# category, each bucket's wait on lane 1, the trainer's "next batch" and "step" spans on lane 2,
# spans inside their step, and no temporary file left behind.
# Usage: tests/timeline.sh path/to/ringflow path/to/mpiexec
set -uo pipefail
bin="$1"; mpiexec="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() {  # check NAME NP TRACE [FUSE]
  python3 - "$@" <<'PY'
import json, sys
name, np, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
doc = json.load(open(path))
ev = doc["traceEvents"]
problems = []
procs = {e["pid"]: e["args"]["name"] for e in ev if e.get("ph") == "M" and e["name"] == "process_name"}
if procs != {r: f"rank {r}" for r in range(np)}:
    problems.append(f"process names {procs}")
for r in range(np):
    spans = [e for e in ev if e.get("ph") == "X" and e["pid"] == r]
    ops = [e for e in spans if e["tid"] == 0]
    cats = {e["cat"] for e in ops}
    for want in ("MatMul", "MatMul+BiasAdd+Relu", "ReluGrad", "SparseSoftmaxXent", "ApplyMomentum"):
        if want not in cats:
            problems.append(f"rank {r}: no {want} span on lane 0 (have {sorted(cats)})")
    steps = [e for e in spans if e["tid"] == 2 and e["name"] == "step"]
    batches = [e for e in spans if e["tid"] == 2 and e["name"] == "next batch"]
    if len(steps) != 3 or len(batches) < 3:
        problems.append(f"rank {r}: {len(steps)} step and {len(batches)} next-batch spans on lane 2, want 3 and >= 3")
    if any(e["dur"] < 0 for e in spans):
        problems.append(f"rank {r}: negative duration")
    if steps:
        for e in ops:
            if not any(s["ts"] <= e["ts"] and e["ts"] + e["dur"] <= s["ts"] + s["dur"] for s in steps):
                problems.append(f"rank {r}: op span {e['name']} outside every step span"); break
    if np > 1:
        comm = [e for e in spans if e["tid"] == 1 and e["cat"] == "allreduce" and "bucket" in e["name"]]
        if len(comm) < 3:
            problems.append(f"rank {r}: {len(comm)} bucket spans on lane 1, want one per bucket and step")
for p in problems:
    print(f"FAIL {name}: {p}")
if not problems:
    print(f"ok   {name}: {len(ev)} events")
sys.exit(1 if problems else 0)
PY
}
run() {  # run NAME NP ARGS...
  local name="$1" np="$2"; shift 2
  local trace="$tmp/$name.json"
  if ! "$mpiexec" --allow-run-as-root --oversubscribe -np "$np" "$bin" train --model mlp --data synthetic \
      --synthetic-train 512 --batch 32 --max-steps 3 --epochs 1 --device cpu --threads 1 --quiet \
      --timeline "$trace" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
    echo "FAIL $name: ringflow failed: $(tail -2 "$tmp/$name.err")"; fails=$((fails + 1)); return
  fi
  check "$name" "$np" "$trace" || fails=$((fails + 1))
  if compgen -G "$trace.tmp.*" >/dev/null; then echo "FAIL $name: temporary file left"; fails=$((fails + 1)); fi
}
run np1 1
run np2-fused 2 --fuse-update on
run np2-allreduce 2 --fuse-update off
echo "$fails failed"
[[ $fails -eq 0 ]]
