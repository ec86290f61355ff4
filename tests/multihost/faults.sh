#!/usr/bin/env bash
# What Open MPI does when a host fails mid-job: starts `probe loop` (a barrier every 100 ms) on
# h1:2,h2:2, cuts h2 after a few seconds, and reports how long mpirun took to end and what it
# printed. A measurement to run by hand (minutes with Open MPI's default keepalive), not a test.
# Usage: tests/multihost/faults.sh [--action kill-host|link-down|power-off] [--after S]
#                                  [--limit S] [-- MORE MPIRUN ARGS]
#   kill-host: SIGKILL every process of h2 (its sockets close: peers see resets at once)
#   link-down: h2's link goes down, its processes keep running (a pulled cable: silence)
#   power-off: link-down, then kill-host (silence, and nothing left when the link comes back)
# e.g. tests/multihost/faults.sh --action link-down -- --mca oob_tcp_keepalive_time 5 \
#        --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mh=$here/../../scripts/multihost.sh
action=kill-host after=5 limit=900
while (($#)); do
  case $1 in
    --action) action=$2; shift 2 ;;
    --after) after=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "faults.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case $action in kill-host | link-down | power-off) ;; *) echo "faults.sh: bad --action $action" >&2; exit 2 ;; esac
"$mh" status >/dev/null || { echo "faults.sh: the harness is not up (scripts/multihost.sh up 2)" >&2; exit 2; }

tmp=$(mktemp -d)
trap '"$mh" link-up h2 2>/dev/null || true; rm -rf "$tmp"' EXIT
mpicc -O2 -o "$tmp/probe" "$here/probe.c"
timeout "$limit" "$mh" mpirun --host h1:2,h2:2 "$@" "$tmp/probe" loop >"$tmp/out" 2>&1 &
pid=$!
sleep "$after"
grep -q '^tick' "$tmp/out" || { echo "faults.sh: the job did not start: $(head -c 2000 "$tmp/out")"; exit 1; }
t0=$(date +%s.%N)
case $action in
  kill-host) "$mh" kill-host h2 ;;
  link-down) "$mh" link-down h2 ;;
  power-off) "$mh" link-down h2; "$mh" kill-host h2 ;;
esac
rc=0; wait "$pid" || rc=$?
t1=$(date +%s.%N)
printf '%s%s: mpirun exit %s %.1f s after the fault (last rank-0 %s)\n' "$action" "${*:+ ($*)}" "$rc" \
  "$(echo "$t1 - $t0" | bc)" "$(grep '^tick' "$tmp/out" | tail -1)"
((rc != 124)) || echo "  (124: still running after --limit $limit s, killed by timeout)"
grep -v '^tick' "$tmp/out" | grep -v '^ *$' | sed 's/^/  | /' | head -30
