#!/usr/bin/env bash
# Proves the README's two commands on a fresh machine, the way CI cannot: builds a bare Debian 12
# (bookworm) root with debootstrap (variant minbase: what a debian:12 container holds), copies in a
# clean clone of this repository's HEAD (no build/, no data/, no uncommitted change), and in a
# chroot runs, exactly as the README writes them,
#     bash scripts/test.sh
#     bash scripts/train.sh --max-steps 50
# in two variants, each in a root of its own: "cuda", with this machine's CUDA toolkit (the
# directory /usr/local/cuda resolves to, bind-mounted read-only at the same path, and
# /usr/local/cuda linking to it as here; no driver, no GPU), where the build must have
# RINGFLOW_CUDA=ON; and "nocuda", without it (no nvcc), where CMake's RINGFLOW_CUDA defaults OFF.
# Both must pass. A root's processes run in a network namespace of their own (slirp4netns: NAT for
# apt), so tests that build emulated hosts (tests/multihost) run there as on a machine of their
# own and never touch this machine's interfaces. Needs root, debootstrap and slirp4netns
# (installed when missing), the network to the Debian mirror, and 30-60 minutes on 2 cores; it is
# not part of .ci/run.
#
# usage: scripts/clean_room.sh [--only cuda|nocuda] [--work DIR] [--reuse] [--keep] [--mirror URL]
#                              [--timeout S]
#   --only V      run one variant (default: cuda, then nocuda)
#   --work DIR    work directory (default /var/tmp/ringflow-clean-room), holding base.tar (the
#                 debootstrapped root), apt-archives/ (the .debs apt downloads, shared by the
#                 variants and kept for reruns; apt still installs each one), V/*.log (each
#                 stage's log) and root-V/ (the variant's root: removed after a pass, kept after
#                 a failure, replaced by the next run)
#   --reuse       use DIR/base.tar from an earlier run instead of debootstrapping again
#   --keep        keep root-V/ after a pass too (its build/; look inside with: chroot DIR/root-V)
#   --mirror URL  the Debian mirror (default: the one this machine's apt uses for bookworm)
#   --timeout S   the limit for each stage, in seconds (default 7200)
# Output: one line per stage, e.g.
#   clean_room: [cuda] bash scripts/test.sh ... ok (1834 s): 140 tests, 0 failed (2 skipped); ...
# On the first failure: that stage's line, the tail of its log, and a non-zero exit. Mounts (proc,
# sys, dev, dev/pts, dev/shm, the apt archives, the CUDA toolkit) are undone on every exit (trap);
# processes left inside a root are killed first; what a run killed outright (SIGKILL) left, the
# next run undoes before it starts.
set -euo pipefail

only=""
work=/var/tmp/ringflow-clean-room
reuse=0
keep=0
mirror=""
stage_timeout=7200
suite=bookworm

usage() { sed -n '18,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "clean_room: error: $*" >&2; exit 1; }
while (($#)); do
  case "$1" in
    --only) (($# >= 2)) || usage; only="$2"; shift 2 ;;
    --work) (($# >= 2)) || usage; work="$2"; shift 2 ;;
    --reuse) reuse=1; shift ;;
    --keep) keep=1; shift ;;
    --mirror) (($# >= 2)) || usage; mirror="${2%/}"; shift 2 ;;
    --timeout) (($# >= 2)) || usage; stage_timeout="$2"; shift 2 ;;
    -h|--help) sed -n '18,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "clean_room: error: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$only" in
  "") variants=(cuda nocuda) ;;
  cuda|nocuda) variants=("$only") ;;
  *) die "--only: '$only' is not cuda or nocuda" ;;
esac
[[ "$stage_timeout" =~ ^[1-9][0-9]*$ ]] || die "--timeout: '$stage_timeout' is not a positive number of seconds"
[[ "$work" == /* ]] || die "--work: '$work' is not an absolute path"
[[ "$work" =~ ^[A-Za-z0-9/._+-]+$ ]] || die "--work: '$work' has characters this script does not handle (spaces?)"
work="${work%/}"
[[ -n "$work" && "$work" != / ]] || die "--work: '/' is not a work directory"
((EUID == 0)) || die "needs root (debootstrap, chroot, mount)"
command -v git >/dev/null || die "needs git (to clone the repository)"

repo="$(git -C "$(dirname "$0")" rev-parse --show-toplevel)" || die "$(dirname "$0") is not in a git repository"
[[ "$work/" != "$repo/"* ]] || die "--work: $work is inside the repository; pick a directory outside it"
head="$(git -C "$repo" rev-parse HEAD)"

# This machine's apt entries as "URI SUITE" lines: one-line sources.list files and deb822 .sources.
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "$f" ]] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk 'function flush(  n, m, a, b, u, s) {
           if (types ~ /(^| )deb( |$)/ && enabled != "no") {
             n = split(uris, u, " "); m = split(suites, s, " ")
             for (a = 1; a <= n; a++) for (b = 1; b <= m; b++) print u[a], s[b]
           }
           types = uris = suites = enabled = ""
         }
         /^[ \t]*$/ { flush(); next }
         /^[ \t]*#/ { next }
         { k = tolower($1); sub(/:$/, "", k); $1 = ""; sub(/^ +/, "")
           if (k == "types") types = $0; else if (k == "uris") uris = $0
           else if (k == "suites") suites = $0; else if (k == "enabled") enabled = tolower($0) }
         END { flush() }' "$f"
  done
}
sources="$(host_sources | awk '{ sub(/\/$/, "", $1); print }')"
if [[ -z "$mirror" ]]; then
  mirror="$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$sources")"
  [[ -n "$mirror" ]] || die "this machine's apt has no '$suite' entry to take the mirror from; pass --mirror URL"
fi
security="$(awk -v s="$suite-security" '$2 == s { print $1; exit }' <<<"$sources")"
has_updates="$(awk -v s="$suite-updates" '$2 == s { print "yes"; exit }' <<<"$sources")"

# The CUDA toolkit as this machine has it: /usr/local/cuda, a link to (or itself) the directory
# that is bind-mounted.
cuda_link=/usr/local/cuda
cuda_dir=""
if [[ " ${variants[*]} " == *" cuda "* ]]; then
  [[ -x "$cuda_link/bin/nvcc" ]] ||
    die "no CUDA toolkit here ($cuda_link/bin/nvcc not found): run with --only nocuda"
  cuda_dir="$(readlink -f "$cuda_link")"
fi

mkdir -p "$work" "$work/apt-archives"
exec 9>"$work/.lock"
flock -n 9 || die "another clean_room.sh is running in $work"

for tool in debootstrap slirp4netns; do
  if ! command -v "$tool" >/dev/null; then
    echo "clean_room: installing $tool" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$tool" >/dev/null
  fi
done
command -v unshare >/dev/null && command -v nsenter >/dev/null || die "needs unshare and nsenter (util-linux)"

# --- the network namespace ----------------------------------------------------------------------
# Everything in a root runs in a network namespace of its own, so that tests which make bridges,
# veths and namespaces (tests/multihost) work there as on a machine of their own and cannot touch
# this machine's (another user's harness, its interfaces, its routes). slirp4netns gives it a
# NAT'd way out for apt (10.0.2.100 on tap0, gateway 10.0.2.2, DNS at 10.0.2.3).
net_holder="" net_slirp=""
net_up() {  # net_up LOGDIR: a process holding a new network namespace, and slirp4netns in it
  local i self
  self="$(readlink /proc/self/ns/net)"
  unshare --net -- sleep infinity 9>&- &
  net_holder=$!
  for ((i = 0; i < 100; i++)); do
    [[ "$(readlink "/proc/$net_holder/ns/net" 2>/dev/null)" != "$self" ]] && break
    sleep 0.1
  done
  # Never attach slirp4netns before this holds: in our own namespace it would route this machine.
  kill -0 "$net_holder" 2>/dev/null && [[ "$(readlink "/proc/$net_holder/ns/net")" != "$self" ]] ||
    die "unshare --net did not give a network namespace of its own"
  rm -f "$1/slirp.ready"
  slirp4netns --configure --mtu=65520 --disable-host-loopback --ready-fd=3 "$net_holder" tap0 \
    3>"$1/slirp.ready" >"$1/slirp.log" 2>&1 9>&- &
  net_slirp=$!
  for ((i = 0; i < 100; i++)); do
    [[ -s "$1/slirp.ready" ]] && return 0
    kill -0 "$net_slirp" 2>/dev/null || break
    sleep 0.1
  done
  die "slirp4netns did not come up (see $1/slirp.log)"
}
net_down() {
  local p
  for p in "$net_slirp" "$net_holder"; do
    if [[ -n "$p" ]]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
  net_slirp="" net_holder=""
}
in_net() { nsenter --net="/proc/$net_holder/ns/net" "$@"; }

# --- mounts and their cleanup -------------------------------------------------------------------
active_roots=()
# mount points at or under $1, deepest first (mountinfo's field 5; our paths have no spaces)
mounts_under() { awk -v r="$1" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r; }
release_root() {  # release_root ROOT: kill what still runs inside it (we started it), unmount all
  local r="$1" p m
  if [[ -d "$r" ]]; then
    for p in /proc/[0-9]*; do   # a process chrooted here has its root link at ROOT
      if [[ "$p/root" -ef "$r" ]]; then kill -9 "${p#/proc/}" 2>/dev/null || true; fi
    done
  fi
  for m in $(mounts_under "$r"); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || echo "clean_room: warning: cannot unmount $m" >&2
  done
  [[ -z "$(mounts_under "$r")" ]]
}
remove_root() {  # never rm a root that still has something mounted in it (the host's /dev, CUDA)
  local r="$1"
  [[ -e "$r" ]] || return 0
  release_root "$r" || die "$r still has mounts; not removing it"
  rm -rf --one-file-system "$r"
}
stage_pid=""
kill_tree() {  # kill_tree PID: the stage we started and its descendants, children first
  local f s ppid pid todo=("$1") all=()
  declare -A kids=()
  for f in /proc/[0-9]*/stat; do   # builtins only: no fork per process
    read -r s <"$f" 2>/dev/null || continue
    s="${s##*) }"                  # past "pid (comm) ": state ppid ...
    read -r _ ppid _ <<<"$s"
    pid="${f#/proc/}"
    kids[$ppid]+=" ${pid%/stat}"
  done
  while ((${#todo[@]})); do
    pid="${todo[0]}"; todo=("${todo[@]:1}"); all=("$pid" "${all[@]}")
    for f in ${kids[$pid]:-}; do todo+=("$f"); done
  done
  kill -TERM "${all[@]}" 2>/dev/null || true
}
cleanup() {
  local r
  [[ -n "$stage_pid" ]] && kill_tree "$stage_pid"
  for r in "${active_roots[@]}"; do release_root "$r" || true; done
  net_down
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A run killed outright (SIGKILL) cannot clean up: undo what it left before anything else.
for r in "$work/base" "$work"/root-*; do
  if [[ -d "$r" ]]; then release_root "$r" || die "cannot unmount what an earlier run left under $r"; fi
done

mount_root() {  # mount_root ROOT VARIANT (the caller has put ROOT in active_roots for the trap)
  local r="$1" v="$2"
  # The root as a private mount of its own: nothing mounted under it propagates to the host.
  mount --bind "$r" "$r"
  mount --make-rprivate "$r"
  mount -t proc proc "$r/proc"
  in_net mount -t sysfs -o ro sysfs "$r/sys"   # mounted from the namespace: its own interfaces
  mount --bind /dev "$r/dev"             # the device nodes (not /dev's submounts: those follow)
  mount --make-private "$r/dev"
  mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
  mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"   # its own /dev/shm (Open MPI's sm)
  mount --bind "$work/apt-archives" "$r/var/cache/apt/archives"
  if [[ "$v" == cuda ]]; then
    mkdir -p "$r$cuda_dir"
    mount --bind "$cuda_dir" "$r$cuda_dir"
    mount -o remount,bind,ro "$r$cuda_dir"
    if [[ "$cuda_dir" != "$cuda_link" ]]; then ln -sfn "$cuda_dir" "$r$cuda_link"; fi
  fi
}

in_root() {  # in_root ROOT COMMAND: a login-like environment, nothing of ours carried in
  local r="$1"; shift
  timeout --kill-after=30 "$stage_timeout" nsenter --net="/proc/$net_holder/ns/net" env -i HOME=/root \
    USER=root LOGNAME=root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    chroot "$r" /bin/bash -c "$1"
}

# --- stages -------------------------------------------------------------------------------------
STAGE_SECS=0
run_stage() {  # run_stage NAME LOG COMMAND...: silent; on failure the line, the log's tail, exit 1
  local name="$1" log="$2" rc=0 t0=$SECONDS
  shift 2
  # In the background, so that set -e holds inside a function stage (a function called as
  # `f || rc=$?` runs with errexit off); the trap kills it if we are stopped.
  "$@" >"$log" 2>&1 </dev/null 9>&- &   # 9: our lock, not to be held by what outlives us
  stage_pid=$!
  wait "$stage_pid" || rc=$?
  stage_pid=""
  STAGE_SECS=$((SECONDS - t0))
  if ((rc)); then
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after $stage_timeout s (--timeout)"
    fail "$name ... FAILED ($STAGE_SECS s, $why)" "$log"
  fi
}
fail() {  # fail LINE LOG
  echo "clean_room: $1"
  [[ -n "${root:-}" && -d "${root:-}" ]] && echo "clean_room: root kept for a look: chroot $root /bin/bash (the next run replaces it)"
  echo "clean_room: last 40 lines of $2:"
  tail -n 40 "$2" | sed 's/^/    /'
  exit 1
}
say() { echo "clean_room: $*"; }

t_start=$SECONDS
say "HEAD $(git -C "$repo" log -1 --format='%h %s' | cut -c1-80) ($repo); mirror $mirror; work $work"

base="$work/base.tar"
if ((reuse)) && [[ -f "$base" ]]; then
  say "debootstrap $suite minbase ... reused $base ($(date -r "$base" '+%F %T'))"
else
  debootstrap_base() {
    local d="$work/base"
    remove_root "$d"
    rm -f "$base" "$base.tmp"
    debootstrap --variant=minbase --arch=amd64 "$suite" "$d" "$mirror"
    tar --numeric-owner -C "$d" -cf "$base.tmp" .
    mv "$base.tmp" "$base"
    rm -rf --one-file-system "$d"
  }
  active_roots+=("$work/base")   # debootstrap mounts proc and sys in it while it works
  run_stage "debootstrap $suite minbase from $mirror" "$work/debootstrap.log" debootstrap_base
  say "debootstrap $suite minbase from $mirror ... ok ($STAGE_SECS s): $(du -m "$base" | cut -f1) MB"
fi

for v in "${variants[@]}"; do
  root="$work/root-$v"
  logs="$work/$v"
  rm -rf "$logs"
  mkdir -p "$logs"
  net_up "$logs"

  make_root() {
    remove_root "$root"
    mkdir -p "$root"
    tar --numeric-owner -C "$root" -xf "$base"
    # apt as on a fresh install: the release, its updates and security suites where this machine has them
    {
      echo "deb $mirror $suite main"
      [[ -n "$has_updates" ]] && echo "deb $mirror $suite-updates main"
      [[ -n "$security" ]] && echo "deb $security $suite-security main"
      true
    } >"$root/etc/apt/sources.list"
    echo "nameserver 10.0.2.3" >"$root/etc/resolv.conf"   # slirp4netns's DNS
    # as Debian's installer writes it (the chroot shares this machine's hostname)
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n\n::1\tlocalhost ip6-localhost ip6-loopback\n' \
      "$(hostname)" >"$root/etc/hosts"
    git clone --quiet --no-local "$repo" "$root/root/ringflow"
    git -C "$root/root/ringflow" checkout --quiet --detach "$head"
    mount_root "$root" "$v"
    if [[ "$v" == cuda ]]; then
      in_root "$root" 'test -x /usr/local/cuda/bin/nvcc && /usr/local/cuda/bin/nvcc --version | tail -n 2'
      if touch "$root$cuda_dir/.clean_room_rw_probe" 2>/dev/null; then
        rm -f "$root$cuda_dir/.clean_room_rw_probe"; echo "the CUDA toolkit is writable in the root"; return 1
      fi
    else
      in_root "$root" '! command -v nvcc && ! test -e /usr/local/cuda' || { echo "nvcc is visible in the root"; return 1; }
    fi
    in_root "$root" 'cat /etc/debian_version; ls /root/ringflow'
  }
  what="base + clone of ${head:0:7} + own network namespace (slirp4netns)"
  [[ "$v" == cuda ]] && what="$what + $cuda_dir (read-only)"
  active_roots+=("$root")
  run_stage "[$v] root" "$logs/root.log" make_root
  say "[$v] root: $what ... ok ($STAGE_SECS s)"

  name="[$v] bash scripts/test.sh"
  run_stage "$name" "$logs/test.log" in_root "$root" 'cd /root/ringflow && bash scripts/test.sh'
  summary="$(grep -oE '[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$logs/test.log" | tail -n 1 || true)"
  [[ -n "$summary" ]] || fail "$name ... FAILED ($STAGE_SECS s): no ctest summary in the log" "$logs/test.log"
  total="${summary##* }"
  failed="$(sed -E 's/.* ([0-9]+) tests failed.*/\1/' <<<"$summary")"
  skipped="$(grep -cE '^[[:space:]]*[0-9]+ - .*\(Skipped\)' "$logs/test.log" || true)"
  cache="$root/root/ringflow/build/CMakeCache.txt"
  opt() { sed -n "s/^$1:BOOL=//p" "$cache" | head -n 1; }
  flags="RINGFLOW_CUDA=$(opt RINGFLOW_CUDA) MPI=$(opt RINGFLOW_MPI) DNNL=$(opt RINGFLOW_DNNL)"
  [[ "$v" == cuda ]] && flags="$flags NCCL=$(grep -q 'RINGFLOW_NCCL=1' "$root/root/ringflow/build/compile_commands.json" && echo ON || echo OFF)"
  want=OFF; [[ "$v" == cuda ]] && want=ON
  [[ "$(opt RINGFLOW_CUDA)" == "$want" ]] ||
    fail "$name ... FAILED ($STAGE_SECS s): the build has RINGFLOW_CUDA=$(opt RINGFLOW_CUDA), want $want ($flags)" "$logs/test.log"
  say "$name ... ok ($STAGE_SECS s): $total tests, $failed failed ($skipped skipped); $flags"

  name="[$v] bash scripts/train.sh --max-steps 50"
  run_stage "$name" "$logs/train.log" in_root "$root" 'cd /root/ringflow && bash scripts/train.sh --max-steps 50'
  line="$(grep -E '^\{.*"test_accuracy"' "$logs/train.log" | tail -n 1 || true)"
  [[ -n "$line" ]] || fail "$name ... FAILED ($STAGE_SECS s): no JSON summary line" "$logs/train.log"
  result="$(python3 -c '
import json, sys
s = json.loads(sys.argv[1])
ok = s.get("steps") == 50 and s.get("model") == "cnn"
print(("" if ok else "BAD ") + "model %s, device %s, steps %s, final_loss %.4f, test_accuracy %.4f, %.0f samples/s"
      % (s.get("model"), s.get("device"), s.get("steps"), s["final_loss"], s["test_accuracy"], s["samples_per_second"]))
' "$line")" || fail "$name ... FAILED ($STAGE_SECS s): cannot read the summary line" "$logs/train.log"
  [[ "$result" != BAD* ]] || fail "$name ... FAILED ($STAGE_SECS s): want 50 steps of the cnn: ${result#BAD }" "$logs/train.log"
  say "$name ... ok ($STAGE_SECS s): $result"

  release_root "$root" || die "cannot unmount everything under $root"
  net_down
  if ((keep)); then
    say "[$v] kept $root"
  else
    remove_root "$root"
  fi
done
say "passed: ${variants[*]} at ${head:0:7} in $((SECONDS - t_start)) s"
