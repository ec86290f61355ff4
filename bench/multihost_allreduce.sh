#!/usr/bin/env bash
# Allreduce across emulated hosts (scripts/multihost.sh, as root): ringflow's ring in each mode
# against Open MPI's MPI_Allreduce, over links shaped to a rate, every size from --min to
# --max. Each run is one allreduce_bench (backends interleaved per size, validated first; median
# of its iterations); runs alternate layouts, and the table takes the median busbw of --runs
# runs per layout, backend and size, with the ratios the issue asks for (hierarchical /
# MPI_Allreduce, hierarchical / flat ring). The raw rows go to --out (JSON lines).
# Usage: bench/multihost_allreduce.sh [--layouts "h1:2,h2:2 h1:1,h2:1"] [--rate 10gbit]
#          [--runs 5] [--min 64K] [--max 64M] [--iters 10] [--bench build/bench/allreduce_bench]
#          [--out FILE]
#        bench/multihost_allreduce.sh --summarize FILE [--rate R]   (the table from saved rows)
set -euo pipefail
BENCH_NAME=multihost_allreduce
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"
mh=$here/../scripts/multihost.sh
layouts="h1:2,h2:2 h1:1,h2:1" rate=10gbit runs=5 min=64K max=64M iters=10
bench=$here/../build/bench/allreduce_bench out=""
inside=0 summarize=""
while (($#)); do
  case $1 in
    --layouts) layouts=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --min) min=$2; shift 2 ;;
    --max) max=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --bench) bench=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --inside) inside=1; shift ;;
    --summarize) summarize=$2; shift 2 ;;
    *) die "unknown option $1 (see the comment at the top of $0)" ;;
  esac
done
summarize() {  # summarize FILE RATE: the table from saved rows
  python3 - "$1" "$2" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
memcpy = [r["busbw"] for r in rows if r["backend"] == "memcpy"]  # the single-core copy reference
rows = [r for r in rows if r["backend"] != "memcpy"]
bw = defaultdict(list)
for r in rows:
    bw[(r["layout"], r["backend"], r["bytes"])].append(r["busbw"])
print("# busbw GB/s, median of %d runs; links shaped to %s; hier = ringflow's ring across nodes"
      % (max(r["run"] for r in rows), sys.argv[2]))
for layout in dict.fromkeys(r["layout"] for r in rows):
    names = list(dict.fromkeys(r["backend"] for r in rows if r["layout"] == layout))
    ring = [n for n in names if n.startswith("ring(") and n != "ring(p2p)"]
    ring = ring[0] if ring else "ring(p2p)"
    # One rank per host: ring and ring:p2p are the same ring (both rows land in one column).
    flat = ring != "ring(p2p)"
    print("\n## %s (ring = %s)" % (layout, ring))
    if flat:
        print("| size | %s | ring(p2p) | mpi | %s / mpi | %s / ring(p2p) |" % (ring, ring, ring))
        print("|---:|---:|---:|---:|---:|---:|")
    else:
        print("| size | %s | mpi | %s / mpi |" % (ring, ring))
        print("|---:|---:|---:|---:|")
    for size in sorted({r["bytes"] for r in rows if r["layout"] == layout}):
        med = {n: statistics.median(bw[(layout, n, size)]) for n in names}
        def ratio(a, b):
            return "%.2f" % (med[a] / med[b]) if med.get(b) else "-"
        label = "%d KiB" % (size >> 10) if size < 1 << 20 else "%d MiB" % (size >> 20)
        if flat:
            print("| %s | %.3f | %.3f | %.3f | %s | %s |" % (
                label, med[ring], med["ring(p2p)"], med["mpi"], ratio(ring, "mpi"), ratio(ring, "ring(p2p)")))
        else:
            print("| %s | %.3f | %.3f | %s |" % (label, med[ring], med["mpi"], ratio(ring, "mpi")))
if memcpy:
    print("\nsingle-core memcpy: %.2f GB/s (median)" % statistics.median(memcpy))
print("raw rows: %s" % sys.argv[1])
PY
}
if [[ -n $summarize ]]; then summarize "$summarize" "$rate"; exit; fi
is_posint "$runs" || die "--runs must be a positive integer, got '$runs'"
[[ -x $bench ]] || die "no allreduce_bench at $bench (build first, or --bench PATH)"
bench=$(readlink -f "$bench")
hosts=0
for l in $layouts; do
  for spec in ${l//,/ }; do h=${spec%%:*}; h=${h#h}; [[ $h =~ ^[0-9]+$ ]] || die "bad layout '$l'"; ((h > hosts)) && hosts=$h; done
done
if ((!inside)); then
  why=$("$mh" check) || die "the harness cannot run here: $why"
  [[ -n $out ]] || out=$(mktemp --suffix=.jsonl)
  # shellcheck disable=SC2086
  exec "$mh" with "$hosts" --rate "$rate" -- bash "$0" --inside --layouts "$layouts" --rate "$rate" --runs "$runs" \
    --min "$min" --max "$max" --iters "$iters" --bench "$bench" --out "$(readlink -f "$out")"
fi
: >"$out"
for ((r = 1; r <= runs; r++)); do
  for l in $layouts; do
    tmp=$(mktemp)
    if ! timeout 1200 "$mh" mpirun --host "$l" "$bench" -b "$min" -e "$max" -f 4 --iters "$iters" --warmup 3 \
        --backend ring,ring:p2p,mpi --json >"$tmp" 2>"$tmp.err"; then
      die "run $r on $l failed: $(tail -5 "$tmp.err")"
    fi
    sed "s/^{/{\"layout\":\"$l\",\"run\":$r,/" "$tmp" >>"$out"
    rm -f "$tmp" "$tmp.err"
  done
  echo "$BENCH_NAME: run $r of $runs done" >&2
done
summarize "$out" "$rate"
