#!/usr/bin/env bash
# Stages what a bare GPU machine lacks into ./data (git-ignored), so that the device tool can
# `carry` it (carry: ["data"]; see scripts/gpu_check.sh):
#   data/fashion-mnist/  the four Fashion-MNIST IDX .gz files (about 30 MB), copied from Debian's
#                        dataset-fashion-mnist (/usr/share/datasets/fashion-mnist; installed with
#                        apt-get when missing)
#   data/kjv/kjv.txt     the King James Bible as `bible gen1:1-rev22:21` prints it (4.3 MB; Debian's
#                        bible-kjv, installed when missing): the gpt model's corpus (docs/GPT.md)
#   data/debs/           with --deps: the .deb files of the build dependencies a CUDA image may
#                        lack (OpenBLAS, GoogleTest, CLI11, nlohmann-json, zlib; about 14 MB),
#                        fetched with `apt-get download`; scripts/gpu_check.sh unpacks them into a
#                        private prefix (never into /) and points CMake at it.
#
# usage: scripts/stage_data.sh [--deps] [--src DIR]
#   --deps     also download the build dependencies' .deb files into data/debs
#   --src DIR  where the IDX files are (default /usr/share/datasets/fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."

src=/usr/share/datasets/fashion-mnist
deps=0
die() { echo "stage_data: error: $*" >&2; exit 1; }
usage() { sed -n '14,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while (($#)); do
  case "$1" in
    --deps) deps=1; shift ;;
    --src) (($# >= 2)) || usage; src="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "stage_data: unknown argument '$1'" >&2; usage ;;
  esac
done

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
files=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

missing=0
for f in "${files[@]}"; do [[ -f "$src/$f" ]] || missing=1; done
if ((missing)) && [[ "$src" == /usr/share/datasets/fashion-mnist ]]; then
  echo "stage_data: installing dataset-fashion-mnist" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends dataset-fashion-mnist >/dev/null
fi
mkdir -p data/fashion-mnist
for f in "${files[@]}"; do
  [[ -f "$src/$f" ]] || die "$src/$f not found"
  cp -f "$src/$f" "data/fashion-mnist/$f"
done
echo "stage_data: data/fashion-mnist: $(du -sh data/fashion-mnist | cut -f1)" >&2

if ! command -v bible >/dev/null; then
  echo "stage_data: installing bible-kjv" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends bible-kjv bible-kjv-text >/dev/null
fi
mkdir -p data/kjv
bible gen1:1-rev22:21 >data/kjv/kjv.txt.part || die "bible gen1:1-rev22:21 failed"
kjv_bytes=$(wc -c <data/kjv/kjv.txt.part)
# The size docs/GPT.md specifies: another edition of the text would silently change the split.
((kjv_bytes == 4298239)) || die "bible gen1:1-rev22:21 printed $kjv_bytes bytes, expected 4298239 (docs/GPT.md)"
mv -f data/kjv/kjv.txt.part data/kjv/kjv.txt
echo "stage_data: data/kjv/kjv.txt: $kjv_bytes bytes" >&2

if ((deps)); then
  # Runtime libraries too: the -dev packages' .so links point at them.
  debs=(libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 libgtest-dev
        libcli11-dev nlohmann-json3-dev zlib1g zlib1g-dev)
  rm -rf data/debs
  mkdir -p data/debs
  # apt-get download writes into the current directory (as root it warns that _apt cannot write
  # there, which is harmless).
  if ! (cd data/debs && apt-get download "${debs[@]}") >data/debs.log 2>&1; then
    cat data/debs.log >&2
    die "apt-get download failed (try: apt-get update)"
  fi
  rm -f data/debs.log
  n=$(find data/debs -name '*.deb' | wc -l)
  ((n == ${#debs[@]})) || die "expected ${#debs[@]} .deb files in data/debs, got $n"
  echo "stage_data: data/debs: $n packages, $(du -sh data/debs | cut -f1)" >&2
fi
echo "stage_data: total $(du -sh data | cut -f1) in data/ (the device tool carries at most 64 MiB with the tree)" >&2
