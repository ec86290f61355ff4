#!/usr/bin/env bash
# Smoke test of the multi-host harness (scripts/multihost.sh): two emulated hosts; mpirun starts
# `hostname` and a tiny MPI program on both (from the root namespace and from inside h1), each
# rank reports its own host, MPI sees two nodes (MPI_COMM_TYPE_SHARED), and a killed host ends
# the job instead of hanging. Exit 77 (ctest: skipped) where network namespaces cannot work.
# Usage: tests/multihost/smoke.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mh=$here/../../scripts/multihost.sh

if [[ ${1:-} != --inside ]]; then
  rc=0; why=$("$mh" check) || rc=$?
  if ((rc)); then echo "$why"; exit "$rc"; fi
  if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then echo "skip: no mpirun/mpicc"; exit 77; fi
  exec "$mh" with 2 -- bash "${BASH_SOURCE[0]}" --inside
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; fails=$((fails + 1)); }

mpicc -O2 -o "$tmp/probe" "$here/probe.c"

# 1. hostname on each host, mpirun in the root namespace, then mpirun inside h1
for from in "" h1; do
  # stdout only: Open MPI 4.1 may warn "plm:rsh: Warning: setpgid(...) failed in parent" on
  # stderr when the agent's child has already exec'd (a harmless race of its own)
  out=$(timeout 60 "$mh" mpirun ${from:+--from "$from"} --host h1:1,h2:1 hostname 2>"$tmp/err" | sort | tr '\n' ' ') || true
  if [[ $out == "h1 h2 " ]]; then ok "hostname from ${from:-the root namespace}: $out"
  else fail "hostname from ${from:-the root namespace}: want 'h1 h2', got '$out', stderr: $(head -c 1500 "$tmp/err")"; fi
done

# 2. ranks 0,1 on h1 and 2,3 on h2, and MPI sees two nodes of two ranks
out=$(timeout 60 "$mh" mpirun --host h1:2,h2:2 "$tmp/probe" hello 2>&1) || true
want=$'rank 0/4 host h1 node_ranks 2 nodes 2\nrank 1/4 host h1 node_ranks 2 nodes 2\nrank 2/4 host h2 node_ranks 2 nodes 2\nrank 3/4 host h2 node_ranks 2 nodes 2\nnodes 2'
if [[ $(grep -E '^(rank|nodes) ' <<<"$out" | sort) == "$(sort <<<"$want")" ]]; then ok "hello: 4 ranks on 2 nodes"
else fail "hello: want
$want
got
$out"; fi

# 3. killing every process of h2 ends the job (mpirun exits non-zero), no hang
timeout 120 "$mh" mpirun --host h1:1,h2:1 "$tmp/probe" loop >"$tmp/loop" 2>&1 &
pid=$!
for _ in $(seq 100); do grep -q '^tick' "$tmp/loop" && break; sleep 0.2; done
"$mh" kill-host h2
rc=0; wait "$pid" || rc=$?
if ((rc != 0 && rc != 124)) && grep -q 'lost communication with a remote daemon' "$tmp/loop"; then
  ok "kill-host h2 ended the job (mpirun exit $rc: lost communication with a remote daemon)"
else fail "kill-host h2: mpirun exit $rc (124: still running after 120 s), output: $(head -c 1500 "$tmp/loop")"; fi

echo "$((4 - fails)) of 4 passed"
((fails == 0))
