#!/usr/bin/env bash
# Run an MPI program across emulated hosts, for ctest: skips (77) where network namespaces
# cannot work, brings up as many hosts as --host names (unless the harness is already up),
# runs scripts/multihost.sh mpirun with the arguments, and takes the hosts down afterwards.
# Usage: tests/multihost/mpirun.sh --host h1:2,h2:2 [MPIRUN ARGS...] PROGRAM [ARGS...]
#        (RF_MH_UP_ARGS="--rate 1gbit" shapes the links)
set -euo pipefail
mh=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/multihost.sh
rc=0; why=$("$mh" check) || rc=$?
if ((rc)); then echo "$why"; exit "$rc"; fi
command -v mpirun >/dev/null || { echo "skip: no mpirun"; exit 77; }
n=0 prev=""
for a in "$@"; do   # the highest hK in --host / -H
  if [[ $prev == --host || $prev == -H || $prev == -host ]]; then
    for h in $(tr ',' ' ' <<<"$a"); do h=${h%%:*}; h=${h#h}; [[ $h =~ ^[0-9]+$ ]] && ((h > n)) && n=$h; done
  fi
  prev=$a
done
((n > 0)) || { echo "tests/multihost/mpirun.sh: give --host h1:K,h2:K,..." >&2; exit 2; }
# shellcheck disable=SC2086
exec "$mh" with "$n" ${RF_MH_UP_ARGS:-} -- "$mh" mpirun "$@"
