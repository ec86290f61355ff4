#!/usr/bin/env bash
# The measurements bench/model.py is fitted and checked against (as root, 2+ cores; slow: about
# 15 minutes per rate). Holds the multi-host harness's session lock for the whole run, brings up
# 3 emulated hosts (scripts/multihost.sh; any hosts already up are taken down first and the same
# number brought back up, at their old rate, at the end), and per link rate writes into OUT/RATE/:
#   p2p.jsonl          bench/p2p_bench between rank 0 on h1 and a local (h1) and a remote (h2) peer
#   ar_<layout>.jsonl  allreduce_bench -b 4K -e 64M -f 4 (ring, ring:p2p, mpi) at 2x1, 2x2, 3x1
#   train_<cfg>_r<k>.json(.tlc.json.gz)  ringflow train summaries (+ their timelines, compacted by
#                      `bench/model.py compact`), CNN, f32,
#                      per-rank batch B, the layouts with and without gradient exchange,
#                      interleaved over --reps rounds
# and once into OUT/: ar_1x2.jsonl, ar_1x4.jsonl, p2p_local.jsonl (one host: shared memory),
# train_1x1_r<k>.json (one rank: the CNN's op order for the projection) and
# compress_{none,fp16}_1x2_r<k>.json (two ranks on one host, --fuse-update off: what fp16 costs).
# Usage: bench/model_data/measure.sh [--out DIR] [--rates "1gbit 10gbit"] [--reps 3] [--steps 60]
#          [--batch 16] [--build build-dev] [--parts "onehost rates onerank compress"]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
mh=$root/scripts/multihost.sh
out=$here rates="1gbit 10gbit" reps=3 steps=60 batch=16 build=build-dev parts="onehost rates onerank compress"
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --rates) rates=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --parts) parts=$2; shift 2 ;;
    *) echo "measure.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin=$root/$build
[[ -x $bin/ringflow && -x $bin/bench/p2p_bench && -x $bin/bench/allreduce_bench ]] ||
  { echo "measure.sh: build $bin/ringflow, bench/p2p_bench and bench/allreduce_bench first" >&2; exit 2; }

if [[ ${RF_MEASURE_LOCKED:-} != 1 ]]; then
  exec 8>/run/ringflow-mh.session.lock
  flock -w 3600 8 || { echo "measure.sh: the harness stayed busy for an hour" >&2; exit 1; }
fi
prev_n=0 prev_rate=
if [[ -f /run/ringflow-mh/config ]]; then
  prev_n=$(sed -n 's/^N=//p' /run/ringflow-mh/config); prev_rate=$(sed -n 's/^RATE=//p' /run/ringflow-mh/config)
fi
restore() {
  "$mh" down >/dev/null 2>&1 || true
  if ((prev_n > 0)); then "$mh" up "$prev_n" ${prev_rate:+--rate "$prev_rate"} >/dev/null 2>&1 || true; fi
}
trap restore EXIT
[[ $prev_n == 3 ]] || { "$mh" down >/dev/null 2>&1 || true; "$mh" up 3; }
mkdir -p "$out"
log() { echo "[$(date +%T)] $*" >&2; }
echo "{\"cores\": $(nproc)}" >"$out/machine.json"
compact() {  # the timeline of summary $1, compacted (the model reads it as it reads the trace)
  python3 "$root/bench/model.py" compact "$1.tl.json" && rm -f "$1.tl.json"
}

mpr() { timeout 900 "$mh" mpirun --host "$@"; }
ar() {  # layout hosts file
  mpr "$2" "$bin/bench/allreduce_bench" -b 4K -e 64M -f 4 --backend "${4:-ring,ring:p2p,mpi}" --iters 10 --warmup 2 \
    --json >"$3" 2>"$3.err"
}

want() { [[ " $parts " == *" $1 "* ]]; }
# one host: shared memory only (the rate does not matter)
if want onehost; then
  log "allreduce on one host"
  ar 1x2 h1:2 "$out/ar_1x2.jsonl" ring,mpi
  ar 1x4 h1:4 "$out/ar_1x4.jsonl" ring,mpi
  mpr h1:2 "$bin/bench/p2p_bench" -e 64M --min-time 0.2 >"$out/p2p_local.jsonl" 2>"$out/p2p_local.err"
fi

declare -A hosts=([2x1]=h1:1,h2:1 [2x2]=h1:2,h2:2 [3x1]=h1:1,h2:1,h3:1)
declare -A ranks=([2x1]=2 [2x2]=4 [3x1]=3)
want rates || rates=
for rate in $rates; do
  "$mh" shape all --rate "$rate"
  d=$out/$rate; mkdir -p "$d"
  log "$rate: p2p"
  mpr h1:2,h2:1 "$bin/bench/p2p_bench" -e 64M --min-time 0.2 >"$d/p2p.jsonl" 2>"$d/p2p.err"
  for lay in 2x1 2x2 3x1; do
    log "$rate: allreduce $lay"
    ar "$lay" "${hosts[$lay]}" "$d/ar_$lay.jsonl"
  done
  # training configurations: name layout env extra-args
  cfgs=(
    "2x1_ring 2x1 - --collective ring"
    "2x1_nx 2x1 - --collective ring --no-gradient-exchange"
    "2x1_fp16 2x1 - --collective ring --compress fp16"
    "2x2_hier 2x2 - --collective ring"
    "2x2_p2p 2x2 RINGFLOW_RING_TRANSPORT=p2p --collective ring"
    "2x2_nx 2x2 - --collective ring --no-gradient-exchange"
    "2x2_fp16 2x2 - --collective ring --compress fp16"
    "3x1_ring 3x1 - --collective ring"
    "3x1_nx 3x1 - --collective ring --no-gradient-exchange"
  )
  for ((r = 1; r <= reps; r++)); do
    # rotate the order from round to round, so slow periods of the machine hit every config
    n=${#cfgs[@]}
    for ((i = 0; i < n; i++)); do
      read -r name lay envv args <<<"${cfgs[$(((i + r - 1) % n))]}"
      f=$d/train_${name}_r$r.json
      log "$rate: train $name round $r"
      # shellcheck disable=SC2086
      env $([[ $envv != - ]] && echo "$envv") timeout 900 "$mh" mpirun --host "${hosts[$lay]}" "$bin/ringflow" train \
        --model cnn --device cpu --threads 1 --batch $((batch * ${ranks[$lay]})) --max-steps "$steps" --epochs 1 \
        --lr-schedule constant --quiet --timeline "$f.tl.json" $args >"$f" 2>"$f.err" ||
        log "  failed: $(tail -2 "$f.err")"
      if [[ -f $f.tl.json ]]; then compact "$f"; fi
    done
  done
done
# the 1-rank profile (same per-rank batch), for the simulation's backward timing
if want onerank; then
  log "one rank"
  for ((r = 1; r <= reps; r++)); do
    f=$out/train_1x1_r$r.json
    "$mh" mpirun --host h1:1 "$bin/ringflow" train --model cnn --device cpu --threads 1 --batch "$batch" \
      --max-steps "$steps" --epochs 1 --lr-schedule constant --quiet --timeline "$f.tl.json" >"$f" 2>"$f.err"
    compact "$f"
  done
fi
# what fp16 costs: two ranks on one host (no network), bucket spans with and without it
if want compress; then
  for ((r = 1; r <= reps; r++)); do
    for c in none fp16; do
      f=$out/compress_${c}_1x2_r$r.json
      log "compress $c on one host, round $r"
      mpr h1:2 "$bin/ringflow" train --model cnn --device cpu --threads 1 --batch $((2 * batch)) \
        --max-steps "$steps" --epochs 1 --lr-schedule constant --quiet --collective ring --fuse-update off \
        --compress "$c" --timeline "$f.tl.json" >"$f" 2>"$f.err" || log "  failed: $(tail -2 "$f.err")"
      if [[ -f $f.tl.json ]]; then compact "$f"; fi
    done
  done
fi
log "done"
