#!/usr/bin/env bash
# Accuracy versus bytes for the gradient compressors: `mpirun -np N build/ringflow train --model M
# --epochs E --compress C` for each compressor (test accuracy, bytes_sent_per_step), then the step
# time of each from short interleaved runs (medians), on a quiet machine.
#
# usage: bench/compression.sh [--np N] [--model cnn|mlp] [--epochs E] [--compressors "LIST"]
#                             [--timing-steps S] [--timing-runs R] [--skip-accuracy] [--skip-build]
#   --np N             ranks (default 2)
#   --model M          default cnn
#   --epochs E         epochs of the accuracy runs (default 3)
#   --compressors LIST default "none fp16 bf16 powersgd:4 topk:0.01"
#   --timing-steps S   steps of each timing run (default 300); --timing-runs R rounds (default 3)
#   --skip-accuracy    only the timing runs;  --skip-build: do not run install_deps/build first
# Output: one row per compressor (markdown) and one JSON line each:
#   {"bench":"compression","compress":...,"test_accuracy":...,"bytes_sent_per_step":...,
#    "bytes_ratio":...,"step_ms_median":...}
# bytes_ratio = uncompressed bytes / bytes sent (what a bandwidth-optimal ring sends, per rank).
set -euo pipefail
cd "$(dirname "$0")/.."

np=2 model=cnn epochs=3 timing_steps=300 timing_runs=3 skip_acc=0 skip_build=0
compressors="none fp16 bf16 powersgd:4 topk:0.01"
BENCH_NAME=compression
source bench/lib.sh
usage() { sed -n '6,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case "$1" in
    --np) (($# >= 2)) || usage; np="$2"; shift 2 ;;
    --model) (($# >= 2)) || usage; model="$2"; shift 2 ;;
    --epochs) (($# >= 2)) || usage; epochs="$2"; shift 2 ;;
    --compressors) (($# >= 2)) || usage; compressors="$2"; shift 2 ;;
    --timing-steps) (($# >= 2)) || usage; timing_steps="$2"; shift 2 ;;
    --timing-runs) (($# >= 2)) || usage; timing_runs="$2"; shift 2 ;;
    --skip-accuracy) skip_acc=1; shift ;;
    --skip-build) skip_build=1; shift ;;
    -h|--help) usage ;;
    *) echo "compression: unknown argument '$1'" >&2; usage ;;
  esac
done
for v in "$np" "$epochs" "$timing_steps" "$timing_runs"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || die "expected a positive integer, got '$v'"
done
[[ "$model" == cnn || "$model" == mlp ]] || die "unknown model '$model'"
if ((!skip_build)); then scripts/install_deps.sh && scripts/build.sh; fi
[[ -x build/ringflow ]] || die "build/ringflow not found (run scripts/build.sh)"
read -r -a list <<<"$compressors"
((${#list[@]})) || die "--compressors is empty"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mpi=(mpirun --allow-run-as-root -np "$np")
(($(nproc) < np)) && mpi+=(--oversubscribe)

# run OUT ARGS...: one training run, its JSON summary line into OUT.
run() {
  local out="$1"; shift
  "${mpi[@]}" build/ringflow train --model "$model" --quiet "$@" >"$tmp/stdout" 2>"$tmp/stderr" ||
    die "run failed: ${mpi[*]} build/ringflow train --model $model $*"$'\n'"$(tail -n 5 "$tmp/stderr")"
  grep '^{' "$tmp/stdout" | tail -n 1 >"$out"
  [[ -s "$out" ]] || die "no summary line from: $*"
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

echo "compression: $model, $np ranks, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for c in "${list[@]}"; do
  key="${c//[:.]/_}"
  if ((!skip_acc)); then
    run "$tmp/acc_$key.json" --epochs "$epochs" --compress "$c"
    echo "  $c: test accuracy $(field "$tmp/acc_$key.json" test_accuracy)" >&2
  fi
done
# Timing: rounds of every compressor back to back, so load drifts hit them alike.
for ((r = 1; r <= timing_runs; r++)); do
  for c in "${list[@]}"; do
    key="${c//[:.]/_}"
    run "$tmp/time_${key}_$r.json" --max-steps "$timing_steps" --compress "$c"
  done
done

echo
echo "| compress | test accuracy | bytes sent / step / rank | fewer bytes | step time (ms) |"
echo "|---|---|---|---|---|"
for c in "${list[@]}"; do
  key="${c//[:.]/_}"
  python3 - "$tmp" "$key" "$c" "$timing_runs" "$skip_acc" <<'EOF'
import json, statistics, sys
tmp, key, name, runs, skip_acc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
times = [json.load(open(f"{tmp}/time_{key}_{r}.json")) for r in range(1, runs + 1)]
step_ms = statistics.median(t["train_seconds"] / t["steps"] * 1e3 for t in times)
src = times[0] if skip_acc else json.load(open(f"{tmp}/acc_{key}.json"))
sent, full = src["bytes_sent_per_step"], src["uncompressed_bytes_per_step"]
ratio = full / sent if sent else float("inf")
acc = None if skip_acc else src["test_accuracy"]
print(f"| {name} | {'-' if acc is None else f'{acc:.4f}'} | {sent:,.0f} | {ratio:.1f}x | {step_ms:.2f} |")
print(json.dumps({"bench": "compression", "compress": name, "test_accuracy": acc, "bytes_sent_per_step": sent,
                  "bytes_ratio": ratio, "step_ms_median": step_ms}), file=open(f"{tmp}/json", "a"))
EOF
done
echo
cat "$tmp/json"
