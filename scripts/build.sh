#!/usr/bin/env bash
# Configures and builds ringflow into build/ (build/ringflow, build/ringflow_tests, build/bench/).
# Extra arguments go to cmake's configure step (e.g. -DRINGFLOW_CUDA=OFF).
set -euo pipefail
cd "$(dirname "$0")/.."
# nvcc lives outside PATH in the CUDA toolkit's default location.
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j "${RF_JOBS:-2}"
