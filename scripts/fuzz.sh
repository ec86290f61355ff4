#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes with libFuzzer (ASan + UBSan): the IDX reader, the
# safetensors reader with --init-from's checks, and the command line (tests/fuzz/).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   each target for SECONDS (default 600) or until
#                                           RF_FUZZ_RUNS executions (default 1000000), whichever
#                                           comes first; TARGET: idx, safetensors, cli (default all)
# Installs clang and libFuzzer if missing, builds into build-fuzz/ (clang, -DRINGFLOW_FUZZ=ON,
# no CUDA), prints one line per target (executions, time, result) and exits non-zero on any crash,
# leak, timeout (-timeout, a hang), memory blow-up (-rss_limit_mb) or sanitizer report. Crash
# inputs go to build-fuzz/artifacts/<target>/, new corpus inputs to build-fuzz/corpus/<target>/
# (tests/fuzz/corpus/<target>/ holds the seeds and is only read); logs to build-fuzz/logs/.
# Reproduce a crash: build-fuzz/tests/fuzz/fuzz_<target> build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [idx|safetensors|cli ...]" >&2; exit 2; }
shift $(($# > 0 ? 1 : 0))
targets=("$@")
((${#targets[@]})) || targets=(idx safetensors cli)
for t in "${targets[@]}"; do
  [[ "$t" =~ ^(idx|safetensors|cli)$ ]] || { echo "fuzz: unknown target '$t' (idx, safetensors, cli)" >&2; exit 2; }
done
runs="${RF_FUZZ_RUNS:-1000000}"
timeout_s="${RF_FUZZ_TIMEOUT:-10}"   # one input running longer than this is a hang
rss_mb="${RF_FUZZ_RSS_MB:-2048}"     # more resident memory than this (or one malloc this big) is a bug

scripts/install_deps.sh
# clang, libFuzzer and ASan/UBSan runtimes (libclang-rt), LLVM's OpenMP for clang (libomp-dev).
pkgs=(clang libclang-rt-14-dev libomp-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "fuzz: installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

out=build-fuzz
cmake -S . -B "$out" -DRINGFLOW_FUZZ=ON -DRINGFLOW_CUDA=OFF -DRINGFLOW_MPI=OFF -DRINGFLOW_TESTS=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build "$out" -j "${RF_JOBS:-2}" --target "${targets[@]/#/fuzz_}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=0
summary=()
for t in "${targets[@]}"; do
  bin="$out/tests/fuzz/fuzz_$t"
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "$out/logs"
  log="$out/logs/$t.log"
  dict=(); [[ -f "tests/fuzz/$t.dict" ]] && dict=(-dict="tests/fuzz/$t.dict")
  echo "fuzz: $t for ${seconds}s or $runs runs (log: $log)" >&2
  start=$(date +%s)
  set +e
  # The first corpus directory receives new inputs: build-fuzz's, never the repository's seeds.
  "$bin" -runs="$runs" -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" \
    -artifact_prefix="$out/artifacts/$t/" -print_final_stats=1 "${dict[@]}" \
    "$out/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$(($(date +%s) - start))
  execs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
  [[ -n "$execs" ]] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
  artefact=$(grep -oE "(Test unit|artifact) written to [^ ]+" "$log" | tail -1 | awk '{print $NF}' || true)
  if [[ $rc -eq 0 ]] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|runtime error:' "$log"; then
    result="clean"
    [[ "${execs:-0}" -lt "$runs" ]] && result="clean (time limit reached before $runs runs)"
  else
    failed=1
    if grep -q 'ERROR: libFuzzer: timeout' "$log"; then result="TIMEOUT (an input ran over ${timeout_s}s)"
    elif grep -qE 'ERROR: libFuzzer: (out-of-memory|malloc)' "$log"; then result="OUT OF MEMORY (over ${rss_mb} MB)"
    elif grep -q 'ERROR: LeakSanitizer' "$log"; then result="LEAK"
    elif grep -q 'runtime error:' "$log"; then result="UNDEFINED BEHAVIOUR ($(grep -m1 -oE 'runtime error: .*' "$log" | head -c 120))"
    elif grep -q 'ERROR: AddressSanitizer' "$log"; then result="ASAN ($(grep -m1 -oE 'ERROR: AddressSanitizer: [a-z-]+' "$log"))"
    elif grep -qE 'ERROR: libFuzzer: deadly signal' "$log"; then result="CRASH (a deadly signal)"
    else result="FAILED (exit $rc, no crash reported: see the log)"; fi
    result+="${artefact:+: $artefact}; log $log"
  fi
  line="fuzz_$t: ${execs:-0} executions in ${elapsed} s: $result"
  summary+=("$line")
done
printf '%s\n' "${summary[@]}"
exit $failed
