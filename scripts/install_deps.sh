#!/usr/bin/env bash
# Installs with apt-get what ringflow's configure, build, tests (scripts/test.sh: ctest, mpiexec,
# the bash and python3 test scripts) and default training run (scripts/train.sh) need on a bare
# Debian 12, and only what is missing (idempotent; nothing is touched when all is present).
#   scripts/install_deps.sh          build + test + train dependencies
#   scripts/install_deps.sh --bench  also PyTorch (Debian's python3-torch) for the benchmarks
# Optional packages (oneDNN: CMake falls back to OpenBLAS without it) that apt cannot install
# give a note, not a failure. The CUDA toolkit is not installed here: the CUDA backend is built
# where nvcc is found (/usr/local/cuda). scripts/clean_room.sh proves this list on a bare root.
set -euo pipefail

# g++/make: the compilers (gcc comes with g++); cmake; the libraries of CMakeLists.txt;
# openmpi-bin: mpiexec for the MPI tests; dataset-fashion-mnist: the default training data (and
# the tests that train on it); bible-kjv (and its bible-kjv-text): the King James text of the gpt
# model (docs/GPT.md; `bible gen1:1-rev22:21`, staged by scripts/stage_data.sh); python3: the test
# scripts' checks (json, gzip, struct); iproute2: ip, tc and bridge for the emulated hosts of
# tests/multihost (scripts/multihost.sh; run as root).
pkgs=(g++ make cmake zlib1g-dev libopenblas-dev libopenmpi-dev openmpi-bin libgtest-dev libcli11-dev
      nlohmann-json3-dev dataset-fashion-mnist bible-kjv bible-kjv-text python3 iproute2)
optional=(libdnnl-dev)   # oneDNN's sgemm for f32 (faster on small batches); OpenBLAS otherwise

while (($#)); do
  case "$1" in
    --bench) pkgs+=(python3-torch python3-numpy); shift ;;
    -h|--help) sed -n '5,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install_deps: error: unknown argument '$1' (usage: scripts/install_deps.sh [--bench])" >&2; exit 2 ;;
  esac
done

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  echo "install_deps: error: needs Debian's dpkg and apt-get; elsewhere install: ${pkgs[*]} ${optional[*]}" >&2
  exit 1
fi

# grep without -q: -q stops reading at the first match, and the writer's SIGPIPE fails the pipe
# under pipefail.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep "install ok installed" >/dev/null; }
has_candidate() { apt-cache policy "$1" 2>/dev/null | grep 'Candidate: [^(]' >/dev/null; }  # apt's lists offer it
missing=() missing_opt=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${optional[@]}"; do installed "$p" || missing_opt+=("$p"); done
if ((${#missing[@]} == 0)); then
  # Only optional ones missing: worth an apt-get only where apt's lists offer them (an optional
  # package this release lacks must not cost an apt-get update on every run).
  offered=()
  for p in "${missing_opt[@]}"; do has_candidate "$p" && offered+=("$p"); done
  ((${#offered[@]})) || exit 0
  [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null || exit 0
  missing_opt=("${offered[@]}")
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "install_deps: error: missing ${missing[*]}; run as root or install sudo" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
# env, not a variable assignment before sudo: sudo resets the environment.
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

all=("${missing[@]}" "${missing_opt[@]}")
echo "install_deps: installing ${all[*]}" >&2
"${SUDO[@]}" apt-get update -qq
if ((${#missing[@]})); then
  apt_install "${missing[@]}" || { echo "install_deps: error: apt-get could not install: ${missing[*]}" >&2; exit 1; }
fi
for p in "${missing_opt[@]}"; do
  if ! has_candidate "$p" || ! apt_install "$p" 2>/dev/null; then
    echo "install_deps: note: optional $p is not installable here; the build goes on without it" >&2
  fi
done
