#!/usr/bin/env bash
# Training throughput, ringflow vs PyTorch, interleaved runs, 1 thread each: prints samples/s and ratio.
#
# usage: bench/vs_pytorch.sh [--runs R] [--models "mlp cnn"] [--steps-mlp N] [--steps-cnn N]
#                            [--warmup W] [--skip-build]
#   --runs R        runs per model, each one ringflow run and one PyTorch run (default 3)
#   --models LIST   models to benchmark, space separated (default "mlp cnn")
#   --steps-mlp N   timed training steps for the MLP (default 2000)
#   --steps-cnn N   timed training steps for the CNN (default 150)
#   --warmup W      untimed PyTorch warm-up steps before the timed ones (default 10)
#   --skip-build    do not run scripts/install_deps.sh --bench and scripts/build.sh first
# Environment: PYTHON (default /usr/bin/python3, Debian's python3-torch), DATA_DIR (default
# /usr/share/datasets/fashion-mnist).
#
# Both programs: batch 64, momentum SGD (lr 0.05, momentum 0.9), cross-entropy, Fashion-MNIST,
# one thread (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, --threads 1). The order of the two
# alternates from run to run so that machine noise hits both alike. Output: a table (model, run,
# ringflow samples/s, pytorch samples/s, ratio = ringflow / pytorch), per model the medians, and
# one JSON line per model:
#   {"bench":"vs_pytorch","model":...,"ringflow_sps_median":...,"pytorch_sps_median":...,"ratio_median":...,"runs":R}
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
models="mlp cnn"
steps_mlp=2000
steps_cnn=150
warmup=10
skip_build=0
PYTHON="${PYTHON:-/usr/bin/python3}"
DATA_DIR="${DATA_DIR:-/usr/share/datasets/fashion-mnist}"

BENCH_NAME=vs_pytorch
source bench/lib.sh
usage() { sed -n '4,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
  case "$1" in
    --runs) (($# >= 2)) || usage; runs="$2"; shift 2 ;;
    --models) (($# >= 2)) || usage; models="$2"; shift 2 ;;
    --steps-mlp) (($# >= 2)) || usage; steps_mlp="$2"; shift 2 ;;
    --steps-cnn) (($# >= 2)) || usage; steps_cnn="$2"; shift 2 ;;
    --warmup) (($# >= 2)) || usage; warmup="$2"; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    -h|--help) usage ;;
    *) echo "vs_pytorch: unknown argument '$1'" >&2; usage ;;
  esac
done
check_run_args

if ((!skip_build)); then
  scripts/install_deps.sh --bench || die "scripts/install_deps.sh --bench failed"
  scripts/build.sh || die "scripts/build.sh failed"
fi
[[ -x build/ringflow ]] || die "build/ringflow not found (run scripts/build.sh)"
[[ -x "$PYTHON" ]] || die "$PYTHON not found (scripts/install_deps.sh --bench installs python3-torch)"
"$PYTHON" -c 'import torch' 2>/dev/null || die "$PYTHON cannot import torch (install python3-torch)"

ncpu="$(nproc)"  # before the exports below: nproc honours OMP_NUM_THREADS
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "ringflow vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)'): batch 64, momentum SGD lr 0.05," \
     "1 thread each, $runs run(s), $ncpu CPU(s) visible"
printf '%-6s %4s %10s %16s %16s %8s\n' model run steps ringflow_sps pytorch_sps ratio

summaries=()
for m in "${model_list[@]}"; do
  if [[ "$m" == mlp ]]; then steps="$steps_mlp"; else steps="$steps_cnn"; fi
  rf_cmd=(build/ringflow train --model "$m" --data fashion-mnist --data-dir "$DATA_DIR" --batch 64
          --max-steps "$steps" --epochs 1000 --optimizer momentum --lr 0.05 --lr-schedule constant --threads 1 --device cpu --quiet)
  pt_cmd=("$PYTHON" bench/torch_train.py --model "$m" --batch 64 --steps "$steps" --warmup "$warmup"
          --threads 1 --lr 0.05 --data-dir "$DATA_DIR")
  rf_all=() pt_all=() ratio_all=()
  for ((r = 1; r <= runs; r++)); do
    # Alternate who goes first, so neither always runs on a warmer (or busier) machine.
    if ((r % 2)); then
      run_one ringflow "$tmp/rf.json" "${rf_cmd[@]}"
      run_one pytorch "$tmp/pt.json" "${pt_cmd[@]}"
    else
      run_one pytorch "$tmp/pt.json" "${pt_cmd[@]}"
      run_one ringflow "$tmp/rf.json" "${rf_cmd[@]}"
    fi
    rf_steps="$(json_field "$tmp/rf.json" steps || echo "?")"
    [[ "$rf_steps" == "$steps" ]] || die "ringflow ran $rf_steps steps, expected $steps"
    rf_sps="$(json_field "$tmp/rf.json" samples_per_second)"
    pt_sps="$(json_field "$tmp/pt.json" samples_per_second)"
    ratio="$(python3 -c 'import sys; print("%.3f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$rf_sps" "$pt_sps")"
    printf '%-6s %4d %10d %16.1f %16.1f %8s\n' "$m" "$r" "$steps" "$rf_sps" "$pt_sps" "$ratio"
    rf_all+=("$rf_sps") pt_all+=("$pt_sps") ratio_all+=("$ratio")
  done
  summaries+=("$(python3 - "$m" "$runs" "${rf_all[*]}" "${pt_all[*]}" "${ratio_all[*]}" <<'EOF'
import json, statistics, sys
model, runs = sys.argv[1], int(sys.argv[2])
rf, pt, ratio = ([float(v) for v in a.split()] for a in sys.argv[3:6])
print(json.dumps({"bench": "vs_pytorch", "model": model,
                  "ringflow_sps_median": round(statistics.median(rf), 2),
                  "pytorch_sps_median": round(statistics.median(pt), 2),
                  "ratio_median": round(statistics.median(ratio), 3), "runs": runs},
                 separators=(",", ":")))
EOF
)")
done

echo
printf '%-6s %16s %16s %8s   (medians over %d run(s); ratio = ringflow / pytorch)\n' \
  model ringflow_sps pytorch_sps ratio "$runs"
for s in "${summaries[@]}"; do
  python3 -c 'import json, sys; s = json.loads(sys.argv[1]); print("%-6s %16.1f %16.1f %8.3f" % (
    s["model"], s["ringflow_sps_median"], s["pytorch_sps_median"], s["ratio_median"]))' "$s"
done
echo
for s in "${summaries[@]}"; do echo "$s"; done
