#!/usr/bin/env bash
# The collective, Reducer and compression tests across emulated hosts (scripts/multihost.sh):
# 2 hosts x 2 ranks (shared memory within a host, TCP between: the hierarchical ring) and
# 3 hosts x 1 rank (the point-to-point ring over TCP alone). Skips (77) where network namespaces
# cannot work. Then the collective timeout across hosts: the last rank (on h2) stalls before
# collective #2, and the others must end the job naming it and its host, as the progress board
# (asked point-to-point) tells them.
# Usage: tests/multihost/collectives.sh ringflow_mpi_tests ringflow_tests ringflow_mpi_compress
#                                       ringflow_mpi_timeout
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mh=$here/../../scripts/multihost.sh
if [[ ${1:-} != --inside ]]; then
  rc=0; why=$("$mh" check) || rc=$?
  if ((rc)); then echo "$why"; exit "$rc"; fi
  exec "$mh" with 3 -- bash "${BASH_SOURCE[0]}" --inside "$@"
fi
shift
collectives=$1 unit=$2 compress=$3 stall=$4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
run() {  # run LAYOUT NAME PROGRAM [ARGS...]
  local layout=$1 name=$2; shift 2
  local start=$SECONDS
  if timeout 600 "$mh" mpirun --host "$layout" "$@" >"$tmp/out" 2>&1; then
    echo "ok   $name on $layout ($((SECONDS - start)) s): $(grep -aE '^\S*\[  PASSED  \]' "$tmp/out" | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
    passes=$((passes + 1))
  else
    echo "FAIL $name on $layout after $((SECONDS - start)) s:"
    grep -aE 'Failure|FAILED|error|Error' "$tmp/out" | head -20 | sed 's/^/  | /'
    fails=$((fails + 1))
  fi
}
for layout in h1:2,h2:2 h1:1,h2:1,h3:1; do
  run "$layout" collectives "$collectives"
  run "$layout" reducer "$unit" --gtest_filter='Reducer.*:Reducer/*:Replicas.*'
  run "$layout" compression "$compress"
done
for backend in ring mpi; do
  start=$SECONDS
  RINGFLOW_COLLECTIVE_TIMEOUT=2 timeout 120 "$mh" mpirun --host h1:2,h2:2 "$stall" "$backend" >"$tmp/out" 2>&1
  rc=$?
  pattern='^ringflow: error: allreduce #2 timed out after 2 s waiting for rank\(s\) 3 on host h2 \(from rank [012] on host h[12]\)$'
  if ((rc != 0 && rc != 124)) && line=$(grep -aE "$pattern" "$tmp/out" | head -1); then
    echo "ok   timeout ($backend) on h1:2,h2:2 ($((SECONDS - start)) s): $line"; passes=$((passes + 1))
  else
    echo "FAIL timeout ($backend) on h1:2,h2:2: rc=$rc, no line like '$pattern':"
    grep -av '^ *$' "$tmp/out" | head -15 | sed 's/^/  | /'
    fails=$((fails + 1))
  fi
done
echo "$passes passed, $fails failed"
((fails == 0))
