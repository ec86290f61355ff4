#!/usr/bin/env bash
# A collective that waits longer than RINGFLOW_COLLECTIVE_TIMEOUT aborts the job with one line
# naming the collective and the rank not heard from, instead of hanging; so does the fused
# update's wait for a peer's flag ("flag": the shared-memory PeerWindow).
# Usage: tests/mpi/timeout.sh MPIEXEC path/to/ringflow_mpi_timeout
set -uo pipefail
mpiexec="$1"; helper="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0
for case in "ring p2p" "ring shm" "mpi auto" "flag shm"; do
  read -r backend transport <<<"$case"
  start=$(date +%s)
  RINGFLOW_COLLECTIVE_TIMEOUT=2 RINGFLOW_RING_TRANSPORT=$transport timeout 90 \
    "$mpiexec" --allow-run-as-root --oversubscribe -np 3 "$helper" "$backend" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  took=$(( $(date +%s) - start ))
  host='[^ ]+'
  pattern="^ringflow: error: allreduce #2 timed out after 2 s waiting for rank\(s\) 2 on host $host \(from rank [01] on host $host\)$"
  [[ $backend == flag ]] &&
    pattern="^ringflow: error: fused update \(waiting for the peers' gradients\) timed out after 2 s waiting for rank\(s\) 2 on host $host \(from rank [01] on host $host\)$"
  if [[ $rc -ne 0 && $rc -ne 124 ]] && grep -qE "$pattern" "$tmp/err"; then
    echo "ok   $backend/$transport (${took}s): $(grep -E "$pattern" "$tmp/err" | head -1)"
    passes=$((passes + 1))
  else
    echo "FAIL $backend/$transport: rc=$rc after ${took}s, stderr: $(head -c 1500 "$tmp/err")"
    fails=$((fails + 1))
  fi
done
echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
