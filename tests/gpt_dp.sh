#!/usr/bin/env bash
# The gpt model data parallel (docs/GPT.md): `mpirun -np 2` with the same global batch follows
# 1 rank to 1e-10 relative in f64 over 20 steps (per-step loss from --metrics, and every
# Variable at the end), with Adam, the invsqrt warm-up and the global-norm clip read after the
# exchange, under --check-every (the replicas' Variables checked equal every 5 steps). A small
# configuration (L2 H2 d32 T16, global batch 8) keeps it fast.
# Usage: tests/gpt_dp.sh path/to/ringflow path/to/mpiexec
set -uo pipefail
bin="$1"; mpiexec="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ ! -f "$(dirname "$0")/../data/kjv/kjv.txt" ]] && ! command -v bible >/dev/null; then
  echo "SKIP: no King James text (scripts/install_deps.sh installs bible-kjv)"; exit 0
fi
run() {  # run NP OUT
  "$mpiexec" --allow-run-as-root --oversubscribe -np "$1" "$bin" train --model gpt --layers 2 --heads 2 --width 32 \
    --context 16 --dtype f64 --device cpu --threads 1 --batch 8 --max-steps 20 --epochs 1 --optimizer adam \
    --beta2 0.99 --lr 1e-3 --lr-schedule invsqrt --warmup-steps 10 --clip-grad-norm 1 --check-every 5 \
    --metrics "$2.jsonl" --metrics-every 1 --eval-batch 4096 --quiet --save "$2" >"$2.json" 2>"$2.err"
}
fails=0
for np in 1 2; do
  if ! run $np "$tmp/np$np.safetensors"; then
    echo "FAIL np=$np: $(tail -2 "$tmp/np$np.safetensors.err")"; exit 1
  fi
done
python3 - "$tmp/np1.safetensors.jsonl" "$tmp/np2.safetensors.jsonl" "$tmp/np2.safetensors.json" <<'PY' || fails=$((fails + 1))
import json, sys
def losses(path):
    return [json.loads(l)["loss"] for l in open(path) if '"test_loss"' not in l]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
s = json.load(open(sys.argv[3]))
assert len(a) == len(b) == 20, (len(a), len(b))
assert s["world_size"] == 2 and s["clip_grad_norm"] == 1.0, s
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"per-step loss, np=2 against np=1: worst relative difference {worst:.3g} over 20 steps")
sys.exit(0 if worst <= 1e-10 else 1)
PY
if diff=$(python3 "$(dirname "${BASH_SOURCE[0]}")/safetensors_diff.py" "$tmp/np1.safetensors" "$tmp/np2.safetensors" 1e-10); then
  echo "ok   Variables after 20 steps: max relative difference $diff"
else
  echo "FAIL Variables after 20 steps: max relative difference $diff > 1e-10"; fails=$((fails + 1))
fi
[[ $fails -eq 0 ]]
