#!/usr/bin/env bash
# The whole test suite: install, build, run every test with ctest. Arguments go to ctest.
#   scripts/test.sh [CTEST ARGS]          build/ (Release; CUDA wherever nvcc is found)
#   scripts/test.sh --asan [CTEST ARGS]   build-asan/: CPU backend under AddressSanitizer and
#                                         LeakSanitizer, MPI ranks included
#   scripts/test.sh --ubsan [CTEST ARGS]  build-ubsan/: CPU backend under UndefinedBehaviorSanitizer
# A sanitizer report fails the test that triggered it (halt_on_error), in every MPI rank too.
# Leaks that Open MPI makes are suppressed in tests/sanitizers/lsan.supp (third-party code only).
# UBSan needs no suppressions: it checks only the code compiled with it, ours, not the libraries.
set -euo pipefail
cd "$(dirname "$0")/.."
san=""
case "${1:-}" in
  --asan) san=asan; shift ;;
  --ubsan) san=ubsan; shift ;;
esac
scripts/install_deps.sh
if [[ -z $san ]]; then
  scripts/build.sh
  cd build
  ctest --output-on-failure -j "${RF_JOBS:-2}" "$@"
  exit
fi

if [[ $san == asan ]]; then
  flags="-fsanitize=address"
  # fast_unwind_on_malloc=0: allocation stacks unwind through libc and Open MPI, which have no
  # frame pointers, so that a leak made inside Open MPI shows the Open MPI frames the
  # suppressions name (the fast unwinder stops at the first such frame).
  export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:fast_unwind_on_malloc=0:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export LSAN_OPTIONS="suppressions=$PWD/tests/sanitizers/lsan.supp:print_suppressions=0${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
else
  flags="-fsanitize=undefined -fno-sanitize-recover=all"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
fi
# RF_SANITIZER tells a test which sanitizer runs (cli_errors.sh: ASan cannot start under
# `ulimit -v`, it reserves terabytes of shadow address space). Local MPI ranks inherit mpiexec's
# environment, so the *SAN_OPTIONS above reach every rank.
export RF_SANITIZER="$san"
# -O1 keeps the sanitized suite fast enough; RelWithDebInfo's own flags are replaced (no -O2).
RF_BUILD_DIR="build-$san" scripts/build.sh -DRINGFLOW_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -fno-omit-frame-pointer" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g -fno-omit-frame-pointer" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="$flags" -DCMAKE_SHARED_LINKER_FLAGS="$flags"
cd "build-$san"
ctest --output-on-failure -j "${RF_JOBS:-2}" "$@"
