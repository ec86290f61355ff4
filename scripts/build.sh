#!/usr/bin/env bash
# Configures and builds ringflow into build/ (build/ringflow, build/ringflow_tests, build/bench/).
# Extra arguments go to cmake's configure step (e.g. -DRINGFLOW_CUDA=OFF). RF_BUILD_DIR names
# another build directory (scripts/test.sh --asan uses build-asan/).
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${RF_BUILD_DIR:-build}"
# nvcc lives outside PATH in the CUDA toolkit's default location.
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$dir" -j "${RF_JOBS:-2}"
