#!/usr/bin/env bash
# gpt training throughput (characters/s), ringflow vs PyTorch 1.13 on the same model (docs/GPT.md:
# L4 H4 d128 T128, batch 32 windows, f32, Adam + clip 1 + invsqrt warm-up), side by side at 1 and 2
# threads, runs interleaved (who goes first alternates), medians printed.
#
# usage: bench/gpt_vs_torch.sh [--runs R] [--threads "1 2"] [--steps N] [--skip-build]
#   --runs R       runs per thread count, each one ringflow run and one PyTorch run (default 3)
#   --threads L    thread counts (default "1 2")
#   --steps N      ringflow's training steps per run (its samples/s includes the first step's plan
#                  compilation, under 1% at the default 60); PyTorch times 5 windows of N/6 steps
#                  after 3 warm-up steps (bench/gpt/gpt_ref.py bench) (default 60)
#   --skip-build   do not run scripts/install_deps.sh --bench and scripts/build.sh first
# Environment: PYTHON (default /usr/bin/python3, Debian's python3-torch), RINGFLOW (default
# build/ringflow).
#
# PyTorch runs with OMP_NUM_THREADS=K and OPENBLAS_NUM_THREADS=1: Debian's torch calls a
# threaded OpenBLAS from inside its own OpenMP threads, and with both at 2 it ran at 6.7k chars/s
# against 11.2k with OpenBLAS single-threaded (measured 2026-12-08); its better setting is the
# anchor. Output: a table and one JSON line per thread count:
#   {"bench":"gpt_vs_torch","threads":K,"ringflow_cps_median":...,"pytorch_cps_median":...,"ratio_median":...,"runs":R}
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
threads="1 2"
steps=60
skip_build=0
PYTHON="${PYTHON:-/usr/bin/python3}"
RINGFLOW="${RINGFLOW:-build/ringflow}"
BENCH_NAME=gpt_vs_torch
source bench/lib.sh
usage() { sed -n '6,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case "$1" in
    --runs) (($# >= 2)) || usage; runs="$2"; shift 2 ;;
    --threads) (($# >= 2)) || usage; threads="$2"; shift 2 ;;
    --steps) (($# >= 2)) || usage; steps="$2"; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    -h|--help) usage ;;
    *) echo "gpt_vs_torch: unknown argument '$1'" >&2; usage ;;
  esac
done
is_posint "$runs" || die "--runs must be a positive integer, got '$runs'"
((steps >= 12)) 2>/dev/null || die "--steps must be an integer >= 12, got '$steps'"
for k in $threads; do is_posint "$k" || die "--threads must list positive integers, got '$threads'"; done
if ((!skip_build)); then
  scripts/install_deps.sh --bench || die "scripts/install_deps.sh --bench failed"
  scripts/build.sh || die "scripts/build.sh failed"
fi
[[ -x "$RINGFLOW" ]] || die "$RINGFLOW not found (run scripts/build.sh)"
"$PYTHON" -c 'import torch' 2>/dev/null || die "$PYTHON cannot import torch (install python3-torch)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "gpt (L4 H4 d128 T128, batch 32, f32, Adam): ringflow vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)'), $runs run(s), $(nproc) CPU(s)"
printf '%7s %4s %16s %16s %8s\n' threads run ringflow_cps pytorch_cps ratio
summaries=()
for k in $threads; do
  rf_cmd=("$RINGFLOW" train --model gpt --batch 32 --max-steps "$steps" --epochs 1 --optimizer adam --beta2 0.99
          --lr 1e-3 --lr-schedule invsqrt --warmup-steps 200 --clip-grad-norm 1 --threads "$k" --device cpu
          --eval-batch 2048 --quiet)
  pt_cmd=(env OMP_NUM_THREADS="$k" OPENBLAS_NUM_THREADS=1 "$PYTHON" -B bench/gpt/gpt_ref.py bench --batch 32
          --threads "$k" --steps $((steps / 6)) --windows 5 --warmup 3)
  rf_all=() pt_all=() ratio_all=()
  for ((r = 1; r <= runs; r++)); do
    if ((r % 2)); then
      run_one ringflow "$tmp/rf.json" "${rf_cmd[@]}"; BENCH_KEY=chars_per_second run_one pytorch "$tmp/pt.json" "${pt_cmd[@]}"
    else
      BENCH_KEY=chars_per_second run_one pytorch "$tmp/pt.json" "${pt_cmd[@]}"; run_one ringflow "$tmp/rf.json" "${rf_cmd[@]}"
    fi
    rf_cps="$(python3 -c 'import sys; print(float(sys.argv[1]) * 128)' "$(json_field "$tmp/rf.json" samples_per_second)")"
    pt_cps="$(json_field "$tmp/pt.json" chars_per_second)"
    ratio="$(python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$rf_cps" "$pt_cps")"
    printf '%7d %4d %16.0f %16.0f %8s\n' "$k" "$r" "$rf_cps" "$pt_cps" "$ratio"
    rf_all+=("$rf_cps") pt_all+=("$pt_cps") ratio_all+=("$ratio")
  done
  summaries+=("$(python3 - "$k" "$runs" "${rf_all[*]}" "${pt_all[*]}" "${ratio_all[*]}" <<'PY'
import json, statistics, sys
k, runs = int(sys.argv[1]), int(sys.argv[2])
rf, pt, ratio = ([float(v) for v in a.split()] for a in sys.argv[3:6])
print(json.dumps({"bench": "gpt_vs_torch", "threads": k, "ringflow_cps_median": round(statistics.median(rf)),
                  "pytorch_cps_median": round(statistics.median(pt)), "ratio_median": round(statistics.median(ratio), 3),
                  "runs": runs}, separators=(",", ":")))
PY
)")
done
echo
for s in "${summaries[@]}"; do echo "$s"; done
