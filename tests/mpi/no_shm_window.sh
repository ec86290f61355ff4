#!/usr/bin/env bash
# Where MPI cannot make a node's shared-memory window (here: Open MPI with its `sm` one-sided
# component excluded, as on a transport whose osc component does not serve
# MPI_Win_allocate_shared), the ring backend says so in one warning line and runs every
# collective point-to-point, with correct results; asked for the shm transport by name, it fails
# with one clear line instead.
# Usage: tests/mpi/no_shm_window.sh MPIEXEC path/to/allreduce_bench
set -uo pipefail
mpiexec="$1"; bench="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
run() {  # run NAME EXPECTED_RC GREP_PATTERN [ENV...]: mpiexec 3 ranks of the bench without osc sm
  local name=$1 want=$2 pattern=$3; shift 3
  env "$@" timeout 120 "$mpiexec" --allow-run-as-root --oversubscribe --mca osc ^sm -np 3 \
    "$bench" -b 4 -e 128K -f 32 --iters 2 --warmup 1 --backend ring >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [[ $rc -eq $want ]] && grep -qE "$pattern" "$tmp/out" "$tmp/err"; then
    echo "ok   $name: $(grep -hE "$pattern" "$tmp/out" "$tmp/err" | head -1 | cut -c1-160)"
  else
    echo "FAIL $name: rc=$rc (want $want), no line matching '$pattern'; stdout: $(head -c 600 "$tmp/out") stderr: $(head -c 900 "$tmp/err")"
    fails=$((fails + 1))
  fi
}
# auto: the warning, then ring(p2p) rows; the bench exits 2 if any element is wrong.
run "auto falls back" 0 '^ringflow: warning: no MPI shared-memory window .*: the ring runs point-to-point$'
if [[ $fails -eq 0 ]] && ! grep -qE '^ +ring\(p2p\) +131072 ' "$tmp/out"; then
  echo "FAIL auto falls back: no ring(p2p) row at 128 KiB: $(cat "$tmp/out")"; fails=$((fails + 1))
fi
# shm by name: one error line, non-zero exit.
run "shm by name fails" 1 "the ring's shm transport was asked for \\(RINGFLOW_RING_TRANSPORT=shm\\) but rank 0 could not make" \
  RINGFLOW_RING_TRANSPORT=shm
[[ $fails -eq 0 ]] && echo "2 passed" || echo "$fails failed"
[[ $fails -eq 0 ]]
