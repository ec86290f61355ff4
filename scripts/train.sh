#!/usr/bin/env bash
# The main job: install, build, train the CNN on Fashion-MNIST. Arguments pass through to
# `ringflow train` (e.g. --model mlp --epochs 1 --device cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
exec build/ringflow train --model cnn --epochs 3 "$@"
