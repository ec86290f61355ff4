#!/usr/bin/env bash
# N emulated hosts on one machine, so that MPI jobs (and tests) run "across machines" without a
# cluster: each host hK is a network namespace rf-hK plus a UTS namespace whose hostname is hK,
# joined by a veth pair to a bridge (rf-br) in the root namespace, with addresses of its own
# (10.77.0.1 the bridge, 10.77.0.(10+K) host hK; RF_MH_NET=a.b.c picks another /24), optional
# link shaping (tc: rate on both directions of each host's link, delay on its egress), and an
# rsh agent through which Open MPI's mpirun starts its daemons (orted) inside the hosts, as it
# would over ssh on real machines. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2.
#
# Usage (as root):
#   scripts/multihost.sh check                 exit 0 if namespaces work here, else 77 + reason
#   scripts/multihost.sh up N [--rate R] [--delay D]
#                                              make hosts h1..hN (R: e.g. 10gbit, 1gbit;
#                                              D: e.g. 50us, 200us; delay needs sch_netem)
#   scripts/multihost.sh down                  remove everything up made (idempotent)
#   scripts/multihost.sh status                hosts, addresses, links, shaping, processes
#   scripts/multihost.sh shape (hK|all) [--rate R] [--delay D]   change (none: remove) shaping
#   scripts/multihost.sh mpirun [--from hK] [--print] [MPIRUN ARGS...]
#                                              run (or print) mpirun with the harness's
#                                              agent and TCP settings, e.g.
#                                              mpirun --host h1:2,h2:2 hostname
#                                              (from the root namespace; --from hK: inside hK;
#                                              RINGFLOW_* variables are passed on with -x; no
#                                              --oversubscribe and no binding by default: give
#                                              slots, h1:2; idle ranks yield the CPU only where
#                                              all hosts' ranks outnumber the real cores; a
#                                              --mca NAME you pass replaces ours)
#   scripts/multihost.sh exec hK CMD [ARGS...] run a command inside host hK
#   scripts/multihost.sh kill-host hK [SIG]    kill every process of host hK (default KILL)
#   scripts/multihost.sh link-down hK | link-up hK   cut / restore host hK's link (silently:
#                                              no reset reaches the peers, like a pulled cable)
#   scripts/multihost.sh with N [up options] -- CMD [ARGS...]
#                                              hold the session lock, bring N hosts up (unless
#                                              already up), run CMD, take down what it brought up
#   scripts/multihost.sh agent [OPTS] HOST CMD...   the rsh agent itself (Open MPI calls it)
#
# Environment: RF_MH_NET (default 10.77.0), RF_MH_STATE (default /run/ringflow-mh).
# Mutating commands (up, down, shape, link-*, kill-host) serialise on /run/ringflow-mh.lock;
# `with` also holds /run/ringflow-mh.session.lock for its whole run, so tests using the harness
# do not tear it down under each other.
set -euo pipefail

NET=${RF_MH_NET:-10.77.0}
STATE=${RF_MH_STATE:-/run/ringflow-mh}
LOCK=/run/ringflow-mh.lock
SESSION_LOCK=/run/ringflow-mh.session.lock
BRIDGE=rf-br
NS_PREFIX=rf-h           # network namespaces rf-h1.. and root-side veth ends rf-h1..
MAX_HOSTS=64
SELF=$(readlink -f "${BASH_SOURCE[0]}")

die() { echo "multihost: error: $*" >&2; exit 1; }
note() { echo "multihost: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$SELF" | sed '$d' | sed 's/^# \{0,1\}//'; }

lock() {  # serialise mutating commands (fd 9 stays open for the rest of this process)
  exec 9>"$LOCK"
  flock -w 120 9 || die "another scripts/multihost.sh has held $LOCK for 2 minutes"
}

host_index() {  # h3 | rf-h3 | 3 | 10.77.0.13 -> 3
  local h=$1
  h=${h#*@}
  case $h in
    "$NET".*) local last=${h##*.}; [[ $last =~ ^[0-9]+$ ]] && ((last > 10)) && echo $((last - 10)) && return ;;
  esac
  h=${h#rf-}; h=${h#h}
  [[ $h =~ ^[0-9]+$ ]] && ((h >= 1 && h <= MAX_HOSTS)) && echo $((10#$h)) && return
  return 1
}
host_ip() { echo "$NET.$((10 + $1))"; }
netns_path() { echo "/run/netns/$NS_PREFIX$1"; }
uts_path() { echo "$STATE/uts-h$1"; }
is_up() { [[ -f $STATE/config ]]; }
config_get() { sed -n "s/^$1=//p" "$STATE/config" 2>/dev/null; }
nhosts() { config_get N; }
need_host() {  # validate hK against the running harness, print its index
  local k
  k=$(host_index "$1") || die "bad host '$1' (want h1, h2, ...)"
  is_up || die "the harness is not up (scripts/multihost.sh up N)"
  ((k <= $(nhosts))) || die "no host h$k (the harness has h1..h$(nhosts))"
  echo "$k"
}

# -------------------------------------------------------------------------------------- check
check() {  # prints the reason and returns 77 where network namespaces cannot work here
  local why=""
  if [[ $(id -u) -ne 0 ]]; then why="not root (network namespaces need root)"
  elif ! command -v ip >/dev/null; then why="no 'ip' (iproute2)"
  elif ! command -v nsenter >/dev/null || ! command -v unshare >/dev/null; then why="no nsenter/unshare (util-linux)"
  elif ! command -v flock >/dev/null; then why="no flock (util-linux)"
  elif ! ip netns add rf-check-$$ 2>/dev/null; then why="'ip netns add' fails (no CAP_SYS_ADMIN/CAP_NET_ADMIN, or a read-only /run)"
  else
    ip netns del rf-check-$$ 2>/dev/null || true
    if ! ip link add rf-chk$$ type veth peer name rf-chq$$ 2>/dev/null; then why="cannot create veth pairs (CAP_NET_ADMIN or kernel veth support)"
    else
      ip link del rf-chk$$ 2>/dev/null || true
      if ! ip link add rf-chb$$ type bridge 2>/dev/null; then why="cannot create a bridge (kernel bridge support)"
      else ip link del rf-chb$$ 2>/dev/null || true
      fi
    fi
  fi
  if [[ -n $why ]]; then echo "multihost: cannot run here: $why"; return 77; fi
  return 0
}

subnet_free() {  # our /24 must not be in use by anything but us
  local used
  used=$(ip -o -4 addr show 2>/dev/null | awk -v n="$NET." -v b="$BRIDGE" '$2 != b && index($4, n) == 1 {print $2 " " $4}')
  [[ -z $used ]] || die "$NET.0/24 is already in use here ($used): pick another with RF_MH_NET=a.b.c"
  used=$(ip -4 route show 2>/dev/null | awk -v n="$NET." -v b="$BRIDGE" 'index($1, n) == 1 && $0 !~ ("dev " b " ") {print}')
  [[ -z $used ]] || die "a route to $NET.0/24 exists ($used): pick another subnet with RF_MH_NET=a.b.c"
}

# ------------------------------------------------------------------------------------ shaping
rate_bytes() {  # 10gbit -> bytes per second
  local r=${1,,} n u
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)([kmg]?)(bit|bps)$ ]] || die "bad rate '$1' (e.g. 10gbit, 500mbit)"
  n=${BASH_REMATCH[1]}; u=${BASH_REMATCH[3]}
  awk -v n="$n" -v u="$u" -v b="${BASH_REMATCH[4]}" 'BEGIN {
    m = (u == "k") ? 1e3 : (u == "m") ? 1e6 : (u == "g") ? 1e9 : 1;
    printf "%d\n", (b == "bps") ? n * m : n * m / 8 }'
}
check_delay() { [[ ${1,,} =~ ^[0-9]+(\.[0-9]+)?(us|ms|s)$ ]] || die "bad delay '$1' (e.g. 50us, 1ms)"; }
netem_works() {
  local ok=1
  ip link add rf-nmt$$ type veth peer name rf-nmu$$ 2>/dev/null || return 1
  tc qdisc add dev rf-nmt$$ root netem delay 1us 2>/dev/null || ok=0
  ip link del rf-nmt$$ 2>/dev/null || true
  ((ok))
}
tbf_args() {  # rate R as tbf wants it: a burst of 1 ms of R, at least 256 KiB (a few GSO
  # packets: with a bucket of one packet, every late timer wake-up on a busy machine loses rate)
  local bps burst
  bps=$(rate_bytes "$1")
  burst=$((bps / 1000)); ((burst >= 262144)) || burst=262144
  echo "rate $1 burst $burst latency 20ms"
}
shape_host() {  # k rate delay ("" = none): host egress (in the namespace) and ingress (root side)
  local k=$1 rate=$2 delay=$3 ns=$NS_PREFIX$1
  ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
  tc qdisc del dev "$ns" root 2>/dev/null || true
  if [[ -n $delay ]]; then
    # netem's own rate keeps delay and rate in one queue (delay then serialisation)
    ip netns exec "$ns" tc qdisc add dev eth0 root netem delay "$delay" ${rate:+rate "$rate"} limit 100000 ||
      die "tc netem failed on h$k"
  elif [[ -n $rate ]]; then
    # shellcheck disable=SC2046
    ip netns exec "$ns" tc qdisc add dev eth0 root tbf $(tbf_args "$rate") || die "tc tbf failed on h$k"
  fi
  if [[ -n $rate ]]; then
    # shellcheck disable=SC2046
    tc qdisc add dev "$ns" root tbf $(tbf_args "$rate") || die "tc tbf failed on h$k's ingress"
  fi
}
parse_shaping() {  # sets RATE, DELAY from --rate/--delay; the rest stays in ARGS
  RATE=""; DELAY=""; ARGS=()
  while (($#)); do
    case $1 in
      --rate) [[ $# -ge 2 ]] || die "--rate needs a value"; RATE=$2; shift 2 ;;
      --rate=*) RATE=${1#*=}; shift ;;
      --delay) [[ $# -ge 2 ]] || die "--delay needs a value"; DELAY=$2; shift 2 ;;
      --delay=*) DELAY=${1#*=}; shift ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  [[ $RATE == 0 || $RATE == none ]] && RATE=""
  [[ $DELAY == 0 || $DELAY == none || $DELAY == 0us ]] && DELAY=""
  [[ -z $RATE ]] || rate_bytes "$RATE" >/dev/null
  [[ -z $DELAY ]] || check_delay "$DELAY"
  if [[ -n $DELAY ]] && ! netem_works; then
    die "--delay needs the netem qdisc, which this kernel lacks (sch_netem: 'modprobe sch_netem', or a kernel with CONFIG_NET_SCH_NETEM); --rate alone works with tbf"
  fi
  return 0
}

# ------------------------------------------------------------------------------------ up/down
write_agent() {  # a standalone copy of the agent entry point, so a path with spaces is no issue
  cat >"$STATE/agent" <<EOF
#!/bin/sh
# Open MPI's rsh agent for the ringflow multi-host harness (written by scripts/multihost.sh up).
RF_MH_NET=$NET RF_MH_STATE=$STATE exec /usr/bin/env bash "$SELF" agent "\$@"
EOF
  chmod 755 "$STATE/agent"
}

up() {
  parse_shaping "$@"; set -- "${ARGS[@]+"${ARGS[@]}"}"
  [[ $# -eq 1 && $1 =~ ^[0-9]+$ ]] || die "usage: scripts/multihost.sh up N [--rate R] [--delay D]"
  local n=$((10#$1)) k ns
  ((n >= 1 && n <= MAX_HOSTS)) || die "N must be 1..$MAX_HOSTS"
  local why; why=$(check) || die "${why#multihost: }"
  lock
  if is_up; then
    [[ $(nhosts) == "$n" ]] || die "already up with $(nhosts) hosts: scripts/multihost.sh down first"
    note "already up with $n hosts; shaping set to rate=${RATE:-none} delay=${DELAY:-none}"
    for ((k = 1; k <= n; k++)); do shape_host "$k" "$RATE" "$DELAY"; done
    sed -i -e "s/^RATE=.*/RATE=$RATE/" -e "s/^DELAY=.*/DELAY=$DELAY/" "$STATE/config"
    return 0
  fi
  teardown quiet  # leftovers of a crashed run
  subnet_free
  trap 'rc=$?; if ((rc)); then note "up failed: removing what it made"; teardown quiet; fi' EXIT
  mkdir -p "$STATE"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  : >"$STATE/hosts"
  for ((k = 1; k <= n; k++)); do
    ns=$NS_PREFIX$k
    ip netns add "$ns"
    ip link add "$ns" type veth peer name "rf-tmp$k"
    ip link set "rf-tmp$k" netns "$ns"
    ip netns exec "$ns" ip link set "rf-tmp$k" name eth0
    ip netns exec "$ns" ip addr add "$(host_ip "$k")/24" dev eth0
    ip netns exec "$ns" ip link set lo up
    ip netns exec "$ns" ip link set eth0 up
    ip link set "$ns" master "$BRIDGE"
    ip link set "$ns" up
    # the UTS namespace lives on as a bind mount of its nsfs file (no holder process needed)
    touch "$(uts_path "$k")"
    unshare --uts="$(uts_path "$k")" hostname "h$k"
    echo "h$k $(host_ip "$k") $ns" >>"$STATE/hosts"
    shape_host "$k" "$RATE" "$DELAY"
  done
  awk '{print $1 " slots=64"}' "$STATE/hosts" >"$STATE/hostfile"
  write_agent
  printf 'N=%s\nNET=%s\nRATE=%s\nDELAY=%s\n' "$n" "$NET" "$RATE" "$DELAY" >"$STATE/config"
  # every host reaches every other one before we say we are up
  for ((k = 1; k <= n; k++)); do
    wait_reachable "$k"
  done
  trap - EXIT
  note "up: $n hosts h1..h$n on $NET.0/24 (bridge $BRIDGE $NET.1), rate=${RATE:-none} delay=${DELAY:-none}"
  if [[ $(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo 0) == 1 ]] && command -v iptables >/dev/null &&
    iptables -S FORWARD 2>/dev/null | grep -q -- '-P FORWARD DROP'; then
    note "warning: bridged traffic passes iptables (bridge-nf-call-iptables=1) and FORWARD drops by default (docker?):"
    note "  iptables -I FORWARD -i $BRIDGE -o $BRIDGE -j ACCEPT   (or sysctl net.bridge.bridge-nf-call-iptables=0)"
  fi
}

wait_reachable() {  # both ends of host k's link report carrier (UP) before we say we are up
  local k=$1 i
  for ((i = 0; i < 50; i++)); do
    ip -n "$NS_PREFIX$k" -o link show eth0 2>/dev/null | grep -q 'state UP' &&
      ip -o link show "$NS_PREFIX$k" 2>/dev/null | grep -q 'state UP' && return 0
    sleep 0.1
  done
  die "h$k's link did not come up"
}

host_pids() {  # every process in host k's network or UTS namespace (-ef: same nsfs inode)
  local net uts p
  net=$(netns_path "$1"); uts=$(uts_path "$1")
  [[ -e $net ]] || net=/nonexistent
  [[ -e $uts ]] || uts=/nonexistent
  for p in /proc/[0-9]*; do
    [[ $p/ns/net -ef $net || $p/ns/uts -ef $uts ]] && echo "${p#/proc/}"
  done
  return 0
}
kill_host_pids() {  # k signal: repeat until none is left (a dying orted may still fork)
  local k=$1 sig=${2:-KILL} i pids
  for ((i = 0; i < 50; i++)); do
    pids=$(host_pids "$k" | grep -vx "$$" || true)
    [[ -n $pids ]] || return 0
    # shellcheck disable=SC2086
    kill -s "$sig" $pids 2>/dev/null || true
    [[ $sig == KILL || $sig == 9 ]] || return 0
    sleep 0.1
  done
  note "warning: processes left in h$k: $(host_pids "$k" | tr '\n' ' ')"
}

teardown() {  # remove everything that looks like ours, whatever state it is in
  local quiet=${1:-} ns k f
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${NS_PREFIX}[0-9]+$" || true); do
    k=${ns#"$NS_PREFIX"}
    kill_host_pids "$k" KILL
    ip netns del "$ns" 2>/dev/null || note "warning: ip netns del $ns failed"
  done
  for f in "$STATE"/uts-h*; do
    [[ -e $f ]] || continue
    k=${f##*uts-h}
    kill_host_pids "$k" KILL
    umount "$f" 2>/dev/null || true
  done
  for ns in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E "^(${NS_PREFIX}[0-9]+|rf-tmp[0-9]+)$" || true); do
    ip link del "$ns" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$STATE"
  [[ -n $quiet ]] || note "down: removed the hosts, links, bridge and $STATE"
}

down() { lock; teardown; }

# ------------------------------------------------------------------------------------ status
status() {
  local k ns q pids
  if ! is_up; then
    echo "multihost: down"
    [[ -z $(ip netns list 2>/dev/null | grep -E "^${NS_PREFIX}[0-9]+" || true) ]] ||
      echo "  leftovers: $(ip netns list | grep -E "^${NS_PREFIX}[0-9]+" | tr '\n' ' ')(scripts/multihost.sh down)"
    return 3
  fi
  echo "multihost: up, $(nhosts) hosts, $NET.0/24 via bridge $BRIDGE ($NET.1), rate=$(config_get RATE) delay=$(config_get DELAY)"
  echo "  agent: $STATE/agent   hostfile: $STATE/hostfile"
  for ((k = 1; k <= $(nhosts); k++)); do
    ns=$NS_PREFIX$k
    q=$(ip netns exec "$ns" tc qdisc show dev eth0 2>/dev/null | head -1 | awk '{print $2}')
    pids=$(host_pids "$k" | wc -l)
    printf '  h%-3s %-14s uts=%-5s link=%-5s egress=%-8s ingress=%-8s processes=%s\n' "$k" "$(host_ip "$k")" \
      "$(nsenter --uts="$(uts_path "$k")" hostname 2>/dev/null || echo '?')" \
      "$(ip -o link show "$ns" 2>/dev/null | grep -q 'state UP' && echo up || echo down)" \
      "${q:-?}" "$(tc qdisc show dev "$ns" 2>/dev/null | head -1 | awk '{print $2}')" "$pids"
  done
}

# ------------------------------------------------------------------------- running in the hosts
agent() {  # Open MPI: <agent> [agent options] <host> <remote command...>; run it like ssh would
  while (($#)) && [[ $1 == -* ]]; do
    case $1 in -l | -p | -o | -i | -F | -E) shift ;; esac   # ssh options that take a value
    shift
  done
  (($# >= 2)) || die "agent: usage: agent [options] HOST COMMAND..."
  local k
  k=$(host_index "$1") || die "agent: unknown host '$1' (want h1..hN or their $NET.x addresses)"
  [[ -e $(netns_path "$k") && -e $(uts_path "$k") ]] || die "agent: host h$k is not up"
  shift
  # ssh joins its arguments with spaces and hands them to the remote shell, from $HOME, with a
  # login's environment (not mpirun's: variables reach the ranks only through mpirun -x)
  local -a env=(PATH="${PATH:-/usr/local/bin:/usr/bin:/bin}" HOME="${HOME:-/root}" USER="${USER:-root}"
    LOGNAME="${LOGNAME:-root}" SHELL=/bin/sh)
  [[ -z ${LD_LIBRARY_PATH:-} ]] || env+=(LD_LIBRARY_PATH="$LD_LIBRARY_PATH")
  [[ -z ${RF_MH_AGENT_DEBUG:-} ]] || echo "multihost agent: h$k: $*" >&2
  cd "${HOME:-/}" 2>/dev/null || cd /
  exec env -i "${env[@]}" nsenter --net="$(netns_path "$k")" --uts="$(uts_path "$k")" -- /bin/sh -c "$*"
}

mpirun_cmd() {  # fills CMD with the mpirun command line; a --mca NAME the caller gives wins
  local -a fwd=() def=() user=("$@")
  local v i name value
  # the agent gives the hosts a login's environment, as ssh would; RINGFLOW_* settings reach the
  # ranks as they must on real hosts, through -x (OMPI_MCA_* ones Open MPI forwards itself), and
  # so do the sanitizers' options (scripts/test.sh --asan/--ubsan: suppressions, halt_on_error)
  for v in $(compgen -e | grep -E '^(RINGFLOW_|(ASAN|LSAN|UBSAN)_OPTIONS$)' || true); do fwd+=(-x "$v"); done
  # plm_rsh_no_tree_spawn: the root namespace's mpirun starts every orted itself
  # bind_to none: every host thinks it owns all the cores, so bound ranks of different hosts
  # would pile onto the same cores. No --oversubscribe: with it Open MPI 4.1 marks the nodes
  # oversubscribed and idle ranks sched_yield(), which on a busy machine turns a 0.1 ms
  # message into several ms; give slots instead (--host h1:2,h2:2)
  # mpi_yield_when_idle 1 only where the ranks of all hosts together outnumber the real cores:
  # the hosts share them, and busy-polling ranks then wait whole time slices for each other
  local ranks=0 np=0 spec h
  for ((i = 0; i + 1 < ${#user[@]}; i++)); do
    case ${user[i]} in
      --host | -host | -H)
        for spec in ${user[i + 1]//,/ }; do
          h=${spec#*:}; [[ $spec == *:* && $h =~ ^[0-9]+$ ]] && ranks=$((ranks + h)) || ranks=$((ranks + 1))
        done ;;
      -np | -n | --np | -c) [[ ${user[i + 1]} =~ ^[0-9]+$ ]] && np=${user[i + 1]} ;;
    esac
  done
  ((np == 0)) || ranks=$np
  local yield=""
  ((ranks <= $(nproc))) || yield=mpi_yield_when_idle=1
  # oob_tcp_keepalive_*: a host whose link goes down is declared lost after ~8 s of silence
  # instead of Open MPI's ~490 s (300 s idle + 9 probes x 20 s), so mpirun ends the job
  # (README: what we recommend on real clusters too)
  for v in plm_rsh_agent="$STATE/agent" plm_rsh_no_tree_spawn=1 btl=tcp,vader,self \
    btl_tcp_if_include="$NET.0/24" oob_tcp_if_include="$NET.0/24" hwloc_base_binding_policy=none \
    oob_tcp_keepalive_time=5 oob_tcp_keepalive_intvl=1 oob_tcp_keepalive_probes=3 $yield; do
    name=${v%%=*}; value=${v#*=}
    for ((i = 0; i + 1 < ${#user[@]}; i++)); do
      [[ ${user[i]} == --mca || ${user[i]} == -mca ]] && [[ ${user[i + 1]} == "$name" ]] && continue 2
      [[ $name == hwloc_base_binding_policy && ${user[i]} == --bind-to ]] && continue 2
    done
    def+=(--mca "$name" "$value")
  done
  CMD=(mpirun --allow-run-as-root "${def[@]}" "${fwd[@]+"${fwd[@]}"}" "$@")
}

run_mpirun() {
  local from="" print=0
  while (($#)); do
    case $1 in
      --from) [[ $# -ge 2 ]] || die "--from needs a host"; from=$2; shift 2 ;;
      --from=*) from=${1#*=}; shift ;;
      --print) print=1; shift ;;
      *) break ;;
    esac
  done
  is_up || die "the harness is not up (scripts/multihost.sh up N)"
  mpirun_cmd "$@"
  if [[ -n $from ]]; then
    local k; k=$(need_host "$from")
    CMD=(nsenter --net="$(netns_path "$k")" --uts="$(uts_path "$k")" -- "${CMD[@]}")
  fi
  if ((print)); then printf '%q ' "${CMD[@]}"; echo; return 0; fi
  exec "${CMD[@]}"
}

run_exec() {
  (($# >= 2)) || die "usage: scripts/multihost.sh exec hK CMD [ARGS...]"
  local k; k=$(need_host "$1"); shift
  exec nsenter --net="$(netns_path "$k")" --uts="$(uts_path "$k")" -- "$@"
}

kill_host() {
  (($# >= 1)) || die "usage: scripts/multihost.sh kill-host hK [SIGNAL]"
  local k; k=$(need_host "$1")
  lock
  local n; n=$(host_pids "$k" | wc -l)
  kill_host_pids "$k" "${2:-KILL}"
  note "kill-host h$k: sent SIG${2:-KILL} to $n processes"
}

link() {  # up|down hK: the root-side end; the host's eth0 then has no carrier
  (($# == 2)) || die "usage: scripts/multihost.sh link-$1 hK"
  local k; k=$(need_host "$2")
  lock
  ip link set "$NS_PREFIX$k" "$1"
  note "link-$1 h$k"
}

with() {
  local -a upargs=()
  while (($#)) && [[ $1 != -- ]]; do upargs+=("$1"); shift; done
  (($# >= 2)) || die "usage: scripts/multihost.sh with N [--rate R] [--delay D] -- CMD [ARGS...]"
  shift
  exec 8>"$SESSION_LOCK"
  flock -w 600 8 || die "another session has used the harness for 10 minutes ($SESSION_LOCK)"
  local mine=0 rc=0
  if ! is_up; then
    ("$SELF" up "${upargs[@]}") || exit $?
    mine=1
  else
    parse_shaping "${upargs[@]}"
    (("${ARGS[0]:-0}" <= $(nhosts))) || die "the harness is up with $(nhosts) hosts, fewer than ${ARGS[0]}"
    note "with: using the hosts already up (leaving them up afterwards)"
  fi
  # shellcheck disable=SC2064
  ((mine)) && trap "\"$SELF\" down" EXIT
  "$@" || rc=$?
  return $rc
}

main() {
  (($#)) || { usage; exit 2; }
  local cmd=$1; shift
  case $cmd in
    check) check ;;
    up) up "$@" ;;
    down) down ;;
    status) status ;;
    shape)
      (($# >= 1)) || die "usage: scripts/multihost.sh shape (hK|all) [--rate R] [--delay D]"
      local which=$1 k; shift
      parse_shaping "$@"; ((${#ARGS[@]} == 0)) || die "shape: unexpected '${ARGS[*]}'"
      is_up || die "the harness is not up"
      lock
      if [[ $which == all ]]; then
        for ((k = 1; k <= $(nhosts); k++)); do shape_host "$k" "$RATE" "$DELAY"; done
        sed -i -e "s/^RATE=.*/RATE=$RATE/" -e "s/^DELAY=.*/DELAY=$DELAY/" "$STATE/config"
      else
        k=$(need_host "$which"); shape_host "$k" "$RATE" "$DELAY"
      fi
      note "shape $which: rate=${RATE:-none} delay=${DELAY:-none}" ;;
    mpirun) run_mpirun "$@" ;;
    exec) run_exec "$@" ;;
    kill-host) kill_host "$@" ;;
    link-down) link down "$@" ;;
    link-up) link up "$@" ;;
    with) with "$@" ;;
    agent) agent "$@" ;;
    -h | --help | help) usage ;;
    *) die "unknown command '$cmd' (scripts/multihost.sh --help)" ;;
  esac
}

main "$@"; exit  # on one line: bash has read it all before running, so editing this file
# while a `with` session runs cannot make the running copy read garbage afterwards
