#!/usr/bin/env bash
# Data-parallel scaling, ringflow (mpirun, ring/mpi collectives) vs PyTorch DDP (gloo): samples/s and scaling per rank count.
#
# usage: bench/scaling.sh [--runs R] [--models "mlp cnn"] [--steps-mlp N] [--steps-cnn N]
#                         [--ranks "1 2"] [--batch B] [--warmup W] [--no-mpi] [--ceiling] [--cores]
#                         [--timeout S] [--skip-build]
#   --runs R        runs per model; a run measures every rank count once (default 3)
#   --models LIST   models to benchmark, space separated (default "mlp cnn")
#   --steps-mlp N   timed training steps for the MLP (default 1500)
#   --steps-cnn N   timed training steps for the CNN (default 120)
#   --ranks LIST    rank counts (default "1 2", plus 4, 8, ... up to nproc where nproc > 2)
#   --batch B       GLOBAL batch, split over the ranks (default 64; must divide by every rank count)
#   --warmup W      untimed PyTorch warm-up steps before the timed ones (default 10)
#   --no-mpi        skip ringflow's --collective mpi runs (ring only)
#   --ceiling       also run ringflow with --no-gradient-exchange at N > 1 (replicas diverge): the
#                   step without communication, which the real runs can at best approach
#   --cores         also run, at N > 1, N independent one-rank jobs at the same time (batch B/N,
#                   each pinned to its own core): their summed samples/s is what the cores give
#                   together, and N x the slowest one's is the most any synchronous data-parallel
#                   job can reach, since every step waits for the slowest core
#   --timeout S     fail if one program run takes longer than S seconds (default 600)
#   --skip-build    do not run scripts/install_deps.sh --bench and scripts/build.sh first
# Environment: PYTHON (default /usr/bin/python3, Debian's python3-torch), DATA_DIR (default
# /usr/share/datasets/fashion-mnist), MPIRUN_ARGS (extra mpirun arguments, e.g. "--bind-to none").
#
# Every process runs one compute thread (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1, --threads 1,
# torch.set_num_threads(1)); momentum SGD (lr 0.05, momentum 0.9), cross-entropy, Fashion-MNIST.
# ringflow: mpirun -np N build/ringflow train ... --collective ring (and mpi, for N > 1); its
# samples_per_second. PyTorch: bench/ddp_train.py --world-size N (plain single-process training
# at N = 1, DDP over gloo on loopback for N > 1). Within a run, all rank counts and all programs
# run back to back with the order rotated from run to run. Output: per-run lines, a table of
# medians, and one JSON line per (model, ranks):
#   {"bench":"scaling","model":...,"ranks":N,"ringflow_sps_median":...,"pytorch_sps_median":...,
#    "ringflow_scaling_median":...,"pytorch_scaling_median":...,"ratio_median":...,...}
# scaling = samples/s at N ranks / samples/s at 1 rank in the same run (median over runs);
# efficiency = scaling / N; ratio = ringflow / pytorch samples/s at the same N (median over runs).
set -euo pipefail
cd "$(dirname "$0")/.."

ncpu="$(nproc)"  # before the exports below: nproc honours OMP_NUM_THREADS
runs=3
models="mlp cnn"
steps_mlp=1500
steps_cnn=120
ranks="1 2"
for ((n = 4; n <= ncpu; n *= 2)); do ranks+=" $n"; done
batch=64
warmup=10
use_mpi=1
use_ceiling=0
use_cores=0
time_limit=600
skip_build=0
PYTHON="${PYTHON:-/usr/bin/python3}"
DATA_DIR="${DATA_DIR:-/usr/share/datasets/fashion-mnist}"
read -r -a mpirun_extra <<<"${MPIRUN_ARGS:-}"

BENCH_NAME=scaling
source bench/lib.sh
usage() { sed -n '4,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
  case "$1" in
    --runs) (($# >= 2)) || usage; runs="$2"; shift 2 ;;
    --models) (($# >= 2)) || usage; models="$2"; shift 2 ;;
    --steps-mlp) (($# >= 2)) || usage; steps_mlp="$2"; shift 2 ;;
    --steps-cnn) (($# >= 2)) || usage; steps_cnn="$2"; shift 2 ;;
    --ranks) (($# >= 2)) || usage; ranks="$2"; shift 2 ;;
    --batch) (($# >= 2)) || usage; batch="$2"; shift 2 ;;
    --warmup) (($# >= 2)) || usage; warmup="$2"; shift 2 ;;
    --no-mpi) use_mpi=0; shift ;;
    --ceiling) use_ceiling=1; shift ;;
    --cores) use_cores=1; shift ;;
    --timeout) (($# >= 2)) || usage; time_limit="$2"; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    -h|--help) usage ;;
    *) echo "scaling: unknown argument '$1'" >&2; usage ;;
  esac
done
check_run_args
is_posint "$time_limit" || die "--timeout must be a positive integer, got '$time_limit'"
is_posint "$batch" || die "--batch must be a positive integer, got '$batch'"
read -r -a rank_list <<<"$ranks"
((${#rank_list[@]})) || die "--ranks is empty"
for n in "${rank_list[@]}"; do
  is_posint "$n" || die "--ranks: '$n' is not a positive integer"
  ((batch % n == 0)) || die "--batch $batch is not divisible by $n ranks"
done
[[ " $ranks " == *" 1 "* ]] || echo "scaling: note: 1 is not in --ranks, so no scaling is computed" >&2

if ((!skip_build)); then
  scripts/install_deps.sh --bench || die "scripts/install_deps.sh --bench failed"
  scripts/build.sh || die "scripts/build.sh failed"
fi
[[ -x build/ringflow ]] || die "build/ringflow not found (run scripts/build.sh)"
command -v mpirun >/dev/null || die "mpirun not found on PATH (scripts/install_deps.sh installs openmpi-bin)"
[[ -x "$PYTHON" ]] || die "$PYTHON not found (scripts/install_deps.sh --bench installs python3-torch)"
"$PYTHON" -c 'import torch, torch.distributed as d; assert d.is_available() and d.is_gloo_available()' 2>/dev/null ||
  die "$PYTHON cannot import torch with torch.distributed/gloo (install python3-torch)"

export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
results="$tmp/results.tsv"  # model run ranks impl samples/s
: >"$results"

BENCH_TIME_LIMIT="$time_limit"

# measure MODEL RUN N IMPL: one measurement, checked, appended to $results.
measure() {
  local m="$1" r="$2" n="$3" impl="$4" steps out="$tmp/out.json" cmd
  if [[ "$m" == mlp ]]; then steps="$steps_mlp"; else steps="$steps_cnn"; fi
  if [[ "$impl" == pytorch ]]; then
    cmd=("$PYTHON" bench/ddp_train.py --model "$m" --world-size "$n" --batch "$batch" --steps "$steps"
         --warmup "$warmup" --threads 1 --lr 0.05 --momentum 0.9 --data-dir "$DATA_DIR")
  else
    local coll="${impl#ringflow-}" mpi=(mpirun --allow-run-as-root -np "$n") extra=()
    ((n > ncpu)) && mpi+=(--oversubscribe)
    [[ "$coll" == nocomm ]] && { coll=ring; extra=(--no-gradient-exchange); }
    cmd=("${mpi[@]}" "${mpirun_extra[@]}" build/ringflow train --model "$m" --data fashion-mnist
         --data-dir "$DATA_DIR" --batch "$batch" --max-steps "$steps" --epochs 1000 --optimizer momentum
         --lr 0.05 --lr-schedule constant --momentum 0.9 --threads 1 --device cpu --quiet --collective "$coll" "${extra[@]}")
  fi
  if [[ "$impl" == cores ]]; then
    measure_cores "$m" "$r" "$n" "$steps"
    return
  fi
  run_one "$impl (model $m, $n rank(s))" "$out" "${cmd[@]}"
  local got_steps got_world sps
  if [[ "$impl" != pytorch ]]; then
    got_steps="$(json_field "$out" steps || echo "?")"
    [[ "$got_steps" == "$steps" ]] || die "ringflow ran $got_steps steps, expected $steps: ${cmd[*]}"
  fi
  got_world="$(json_field "$out" world_size || echo "?")"
  [[ "$got_world" == "$n" ]] || die "$impl reported world_size $got_world, expected $n: ${cmd[*]}"
  sps="$(json_field "$out" samples_per_second)"
  printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$r" "$n" "$impl" "$sps" >>"$results"
  printf '%-6s %4s %6s %-14s %12.1f\n' "$m" "$r" "$n" "$impl" "$sps"
}

# measure_cores MODEL RUN N STEPS: N one-rank ringflow jobs at once, job i pinned to core i, each
# on batch/N; appends "cores-sum" (their summed samples/s) and "cores-sync" (N x the slowest's).
measure_cores() {
  local m="$1" r="$2" n="$3" steps="$4" i per=$((batch / n)) pids=() sps=()
  for ((i = 0; i < n; i++)); do
    (run_one "independent job $i (model $m, batch $per, core $((i % ncpu)))" "$tmp/core$i.json" \
       taskset -c "$((i % ncpu))" build/ringflow train --model "$m" --data fashion-mnist --data-dir "$DATA_DIR" \
       --batch "$per" --max-steps "$steps" --epochs 1000 --optimizer momentum --lr 0.05 --lr-schedule constant --momentum 0.9 \
       --threads 1 --device cpu --quiet) &
    pids+=($!)
  done
  for ((i = 0; i < n; i++)); do
    wait "${pids[$i]}" || die "independent job $i (model $m, $n at once) failed"
    sps+=("$(json_field "$tmp/core$i.json" samples_per_second)")
  done
  read -r sum sync < <(python3 -c 'import sys; v = [float(x) for x in sys.argv[1:]]; print(sum(v), len(v) * min(v))' "${sps[@]}")
  printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$r" "$n" cores-sum "$sum" >>"$results"
  printf '%s\t%s\t%s\t%s\t%s\n' "$m" "$r" "$n" cores-sync "$sync" >>"$results"
  printf '%-6s %4s %6s %-14s %12.1f  (per core:%s)\n' "$m" "$r" "$n" cores-sum "$sum" "$(printf ' %.0f' "${sps[@]}")"
  printf '%-6s %4s %6s %-14s %12.1f\n' "$m" "$r" "$n" cores-sync "$sync"
}

echo "scaling: ringflow vs PyTorch $("$PYTHON" -c 'import torch; print(torch.__version__)') DDP (gloo)," \
     "global batch $batch, 1 compute thread per rank, ranks: $ranks, $runs run(s), $ncpu CPU(s) visible," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %4s %6s %-14s %12s\n' model run ranks program samples/s

for m in "${model_list[@]}"; do
  for ((r = 1; r <= runs; r++)); do
    # Every (ranks, program) pair once per run, the order rotated from run to run so that neither
    # a program nor a rank count always runs first (on a colder, or busier, machine).
    jobs=()
    for n in "${rank_list[@]}"; do
      jobs+=("$n ringflow-ring" "$n pytorch")
      ((use_mpi && n > 1)) && jobs+=("$n ringflow-mpi")
      ((use_ceiling && n > 1)) && jobs+=("$n ringflow-nocomm")
      ((use_cores && n > 1)) && jobs+=("$n cores")
    done
    k=$(((r - 1) % ${#jobs[@]}))
    for ((j = 0; j < ${#jobs[@]}; j++)); do
      read -r n impl <<<"${jobs[$(((j + k) % ${#jobs[@]}))]}"
      measure "$m" "$r" "$n" "$impl"
    done
  done
done

echo "scaling: load average at the end $(cut -d' ' -f1-3 /proc/loadavg) (the benchmark itself adds up to max(ranks))"
echo
python3 - "$results" "$runs" "$batch" "$steps_mlp" "$steps_cnn" "$use_mpi" "$use_ceiling" "$use_cores" <<'EOF'
import collections, json, statistics, sys

path, runs, batch, steps_mlp, steps_cnn, use_mpi, use_ceiling, use_cores = sys.argv[1], *map(int, sys.argv[2:9])
sps = {}  # (model, run, ranks, impl) -> samples/s
models, ranks = [], []
for line in open(path):
    m, r, n, impl, v = line.split("\t")
    sps[m, int(r), int(n), impl] = float(v)
    if m not in models:
        models.append(m)
    if int(n) not in ranks:
        ranks.append(int(n))
ranks.sort()

def med(vals):
    return statistics.median(vals) if vals else None

def rnd(v, d):
    return None if v is None else round(v, d)

def per_run(m, n, impl, base_n=None, base_impl=None):
    """Per-run values of impl at n ranks, or per-run ratios to base_impl at base_n ranks."""
    out = []
    for r in range(1, runs + 1):
        v = sps.get((m, r, n, impl))
        if v is None:
            continue
        if base_impl is None:
            out.append(v)
        else:
            b = sps.get((m, r, base_n, base_impl))
            if b:
                out.append(v / b)
    return out

def fmt(v, spec):
    return format(v, spec) if v is not None else format("-", spec.rstrip("f").split(".")[0] + "s")

rows = []
for m in models:
    for n in ranks:
        # At 1 rank there is no collective: the ring run is the 1-rank baseline for both backends.
        mpi_impl = "ringflow-mpi" if n > 1 else "ringflow-ring"
        has1 = 1 in ranks
        row = {
            "bench": "scaling", "model": m, "ranks": n, "batch": batch,
            "steps": steps_mlp if m == "mlp" else steps_cnn, "runs": runs,
            "ringflow_sps_median": rnd(med(per_run(m, n, "ringflow-ring")), 1),
            "pytorch_sps_median": rnd(med(per_run(m, n, "pytorch")), 1),
            "ringflow_scaling_median": rnd(med(per_run(m, n, "ringflow-ring", 1, "ringflow-ring")), 3) if has1 else None,
            "pytorch_scaling_median": rnd(med(per_run(m, n, "pytorch", 1, "pytorch")), 3) if has1 else None,
            "ratio_median": rnd(med(per_run(m, n, "ringflow-ring", n, "pytorch")), 3),
        }
        for k in ("ringflow", "pytorch"):
            s = row[k + "_scaling_median"]
            row[k + "_efficiency"] = rnd(s / n, 3) if s is not None else None
        if use_mpi:
            row["ringflow_mpi_sps_median"] = rnd(med(per_run(m, n, mpi_impl)), 1)
            row["ringflow_mpi_scaling_median"] = (
                rnd(med(per_run(m, n, mpi_impl, 1, "ringflow-ring")), 3) if has1 else None)
        if use_ceiling:
            nc_impl = "ringflow-nocomm" if n > 1 else "ringflow-ring"
            row["ringflow_nocomm_sps_median"] = rnd(med(per_run(m, n, nc_impl)), 1)
            row["ringflow_nocomm_scaling_median"] = (
                rnd(med(per_run(m, n, nc_impl, 1, "ringflow-ring")), 3) if has1 else None)
        if use_cores and n > 1:
            for k in ("sum", "sync"):
                row[f"cores_{k}_sps_median"] = rnd(med(per_run(m, n, "cores-" + k)), 1)
                row[f"cores_{k}_scaling_median"] = (
                    rnd(med(per_run(m, n, "cores-" + k, 1, "ringflow-ring")), 3) if has1 else None)
        rows.append(row)

hdr = "%-6s %5s %13s %13s %9s %9s %9s %9s %8s" % (
    "model", "ranks", "ringflow_sps", "pytorch_sps", "rf_scale", "pt_scale", "rf_eff", "pt_eff", "rf/pt")
if use_mpi:
    hdr += " %13s %9s" % ("rf_mpi_sps", "mpi_scale")
if use_ceiling:
    hdr += " %13s %9s" % ("rf_nocomm_sps", "nc_scale")
if use_cores:
    hdr += " %9s %9s" % ("cores_sc", "sync_sc")
print(hdr + "   (medians over %d run(s))" % runs)
for row in rows:
    line = "%-6s %5d %13s %13s %9s %9s %9s %9s %8s" % (
        row["model"], row["ranks"], fmt(row["ringflow_sps_median"], "13.1f"),
        fmt(row["pytorch_sps_median"], "13.1f"), fmt(row["ringflow_scaling_median"], "9.3f"),
        fmt(row["pytorch_scaling_median"], "9.3f"), fmt(row["ringflow_efficiency"], "9.3f"),
        fmt(row["pytorch_efficiency"], "9.3f"), fmt(row["ratio_median"], "8.3f"))
    if use_mpi:
        line += " %13s %9s" % (fmt(row["ringflow_mpi_sps_median"], "13.1f"),
                               fmt(row["ringflow_mpi_scaling_median"], "9.3f"))
    if use_ceiling:
        line += " %13s %9s" % (fmt(row["ringflow_nocomm_sps_median"], "13.1f"),
                               fmt(row["ringflow_nocomm_scaling_median"], "9.3f"))
    if use_cores:
        line += " %9s %9s" % (fmt(row.get("cores_sum_scaling_median"), "9.3f"),
                              fmt(row.get("cores_sync_scaling_median"), "9.3f"))
    print(line)
print("scale = samples/s at N ranks / samples/s at 1 rank (per run, then median); eff = scale / N;"
      " rf/pt = ringflow / PyTorch samples/s at the same N; rf_mpi = ringflow --collective mpi;"
      " rf_nocomm = ringflow --no-gradient-exchange (the ceiling: no communication, replicas diverge);"
      " cores_sc / sync_sc = N independent one-rank jobs on batch/N at once, one a core: their summed"
      " samples/s and N x the slowest one's, over 1 rank (sync_sc bounds any synchronous job)")
print()
for row in rows:
    print(json.dumps(row, separators=(",", ":")))
EOF
