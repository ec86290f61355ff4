#!/usr/bin/env bash
# A failed host ends a training job across emulated hosts (scripts/multihost.sh) within the
# collective timeout, and the output names the ranks and the host that were lost: `ringflow
# train` on h1:2,h2:2 with RINGFLOW_COLLECTIVE_TIMEOUT=10, and once it trains, h2 fails:
#   kill-ranks  its ranks die (SIGKILL), its orted lives: mpirun reports the rank and host
#   kill-host   every process of h2 dies, orted too: mpirun loses the daemon at once
#   link-down   h2's link goes down silently (a pulled cable): the ranks on h1 time out or
#               mpirun's OOB keepalive (the harness sets ~8 s) declares h2 lost
# Whoever notices first, the surviving ranks on h1 print one line naming what they waited for
# (a timeout, or their last words when the launcher ends them): "rank(s) 2 on host h2".
# Skips (77) where network namespaces cannot work.
# Usage: tests/multihost/host_failure.sh path/to/ringflow
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mh=$here/../../scripts/multihost.sh
data=/usr/share/datasets/fashion-mnist
timeout_s=10
if [[ ${1:-} != --inside ]]; then
  rc=0; why=$("$mh" check) || rc=$?
  if ((rc)); then echo "$why"; exit "$rc"; fi
  [[ -f $data/train-images-idx3-ubyte.gz ]] || { echo "skip: Fashion-MNIST is not installed at $data"; exit 77; }
  exec "$mh" with 2 -- bash "${BASH_SOURCE[0]}" --inside "$@"
fi
bin=$(readlink -f "$2")
tmp=$(mktemp -d)
trap '"$mh" link-up h2 >/dev/null 2>&1; rm -rf "$tmp"' EXIT
fails=0 passes=0
for action in kill-ranks kill-host link-down; do
  "$mh" status >/dev/null 2>&1 || "$mh" up 2 >/dev/null 2>&1  # kill-host leaves h2 without processes only
  log=$tmp/$action.log
  RINGFLOW_COLLECTIVE_TIMEOUT=$timeout_s timeout 300 "$mh" mpirun --host h1:2,h2:2 "$bin" train --model mlp \
    --device cpu --threads 1 --epochs 50 >"$log" 2>&1 &
  pid=$!
  started=0
  for _ in $(seq 1 600); do  # until a training step has run (the progress line), or 60 s
    grep -aq 'step ' "$log" && { started=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if ((!started)); then
    echo "FAIL $action: the job did not start training: $(head -c 1500 "$log")"; fails=$((fails + 1))
    kill "$pid" 2>/dev/null; wait "$pid"; continue
  fi
  sleep 2
  t0=$(date +%s.%N)
  case $action in
    kill-ranks) pids=$(ip netns pids rf-h2 | xargs -r ps -o pid=,comm= -p | awk '$2 == "ringflow" {print $1}')
                kill -9 $pids ;;
    kill-host) "$mh" kill-host h2 >/dev/null 2>&1 ;;
    link-down) "$mh" link-down h2 >/dev/null 2>&1 ;;
  esac
  wait "$pid"; rc=$?
  took=$(echo "$(date +%s.%N) - $t0" | bc)
  "$mh" link-up h2 >/dev/null 2>&1
  named=$(grep -aE '^ringflow: error: rank [01] on host h1: .*rank\(s\) [23](,[23])? on host h2' "$log" | head -1)
  if ((rc == 0 || rc == 124)); then
    echo "FAIL $action: the job did not end by itself (rc=$rc)"; fails=$((fails + 1))
  elif (($(echo "$took > $timeout_s" | bc))); then
    echo "FAIL $action: the job took $took s to end, past RINGFLOW_COLLECTIVE_TIMEOUT=$timeout_s"; fails=$((fails + 1))
  elif [[ -z $named ]]; then
    echo "FAIL $action: no line names the ranks on h2; output: $(grep -av 'step ' "$log" | head -c 2500)"; fails=$((fails + 1))
  else
    printf 'ok   %s: ended in %.1f s (rc %d): %s\n' "$action" "$took" "$rc" "$named"; passes=$((passes + 1))
  fi
  "$mh" down >/dev/null 2>&1; "$mh" up 2 >/dev/null 2>&1  # a fresh h2 for the next case
done
echo "$passes passed, $fails failed"
((fails == 0))
