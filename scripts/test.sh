#!/usr/bin/env bash
# The whole test suite: install, build, run every test with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
cd build
ctest --output-on-failure -j "${RF_JOBS:-2}" "$@"
