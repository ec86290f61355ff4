#!/usr/bin/env bash
# Installs what ringflow needs with apt-get, only what is missing (idempotent).
#   scripts/install_deps.sh          build + test + train dependencies
#   scripts/install_deps.sh --bench  also PyTorch (Debian's python3-torch) for the benchmarks
set -euo pipefail
pkgs=(build-essential cmake pkg-config zlib1g-dev libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin
      libgtest-dev libcli11-dev nlohmann-json3-dev dataset-fashion-mnist python3)
[[ "${1:-}" == "--bench" ]] && pkgs+=(python3-torch python3-numpy)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
