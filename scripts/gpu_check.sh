#!/usr/bin/env bash
# The one command that proves the CUDA backend on a GPU machine: build, CUDA-vs-CPU differential
# tests, CPU-vs-GPU loss curves, compute-sanitizer, and a throughput benchmark against PyTorch.
#
# usage: scripts/gpu_check.sh [--dry-run] [--skip-build] [--data-dir DIR] [--budget S]
#                             [--only "STAGES"] [--skip "STAGES"] [--build-dir DIR] [--deps-dir DIR]
#                             [--train-args "ARGS"]
#   --dry-run        no GPU needed: every stage runs what it can on the CPU (the "GPU" side of the
#                    loss comparison is the CPU with 1 thread, the benchmark is tiny and on the
#                    CPU, the sanitizer is skipped) -- for testing this script anywhere
#   --skip-build     use the existing BUILD/ringflow (and BUILD/ringflow_tests) if there
#   --data-dir DIR   Fashion-MNIST IDX files (default: the first of ./data/fashion-mnist,
#                    /usr/share/datasets/fashion-mnist that exists; none: synthetic data)
#   --budget S       seconds for everything (default 540, under the device tool's 600 s per command)
#   --only/--skip    stages by name: build tests diff sanitize bench profile
#   --build-dir DIR  (default build);  --deps-dir DIR  carried .deb files (default data/debs)
#   --train-args A   more `ringflow train` flags for every run of diff, sanitize, bench and profile
#                    (e.g. "--fuse-epilogues off" to prove the rest while a fused path is suspect)
# Stages (each time-boxed; a failing stage does not stop the later ones; the report is printed
# and written at the end whatever happens, and after every stage):
#   build     cmake Release, sm_90, MPI optional, targets ringflow + ringflow_tests (+ ringflow_nccl_tests), -j$(nproc)
#   tests     build/ringflow_tests --gtest_filter='*Cuda*:FusedUpdate.*:TrainInput.*' and, where NCCL was
#             found, build/ringflow_nccl_tests (world size 1): pass/fail counts; with a GPU, any
#             skipped test fails the stage (except skips saying "a CUDA device is present")
#   diff      200 steps, same seed, on cuda:0 and on the CPU (TF32 off), per-step losses: the MLP
#             (f32) and the CNN in f64 must agree within 1e-3 relative at every step (measured
#             figures: bench/RESULTS.md). The CNN in f32 is reported too: last-bit rounding
#             flips ReLU/max-pool decisions and its trajectories drift apart (9e-6 at step 10, 1e-3
#             at step 15, 0.13 at step 77), so it must agree within 1e-3 over the first 10 steps,
#             within 5% in the mean loss of the last 50, within 1e-2 in the final parameter norm,
#             and its median distance from the f64 run's curve must be at most twice that of the
#             CPU's own f32 run (the control: f32 on the CPU drifts as far, 1.6e-2 against 1.9e-2)
#   sanitize  compute-sanitizer memcheck (then racecheck, synccheck while time allows), 20 steps
#             MLP and CNN on synthetic data: clean or the error count
#   bench     bench/gpu_vs_torch.sh: ringflow (its default replays the step as a CUDA graph; also
#             --cuda-graph off and --fuse-epilogues off, when `ringflow train --help` lists them)
#             vs PyTorch eager and torch.compile, batch 64 and 512, medians of 3 runs
#   profile   where a CNN step at batch 512 spends its device time: 30 steps with --timeline (a
#             blocking profile on the GPU), steps 11-30 summed per op type; the top ones in the
#             report (PASS when the run and the trace are there: it measures, it does not judge);
#             then bench/epilogue_micro (cuBLASLt's bias/ReLU epilogue vs gemm + our bias kernel
#             per dense layer, eager and in a CUDA graph, with the kernels each path launches)
# Output: a table on stdout; report.txt, report.json and logs.tar.gz in $OUT when it is set,
# else in BUILD/gpu_check/ (where the logs of every stage stay). Exit status: 0 when no stage
# failed; 1 when one did; 3 without a CUDA device (one "no CUDA device: ..." line; no --dry-run);
# 2 for a bad command line.
#
# On the lent GPU machine (no internet, no apt; a copy of the working tree plus the carried paths):
#   once, here:  scripts/stage_data.sh --deps    # data/fashion-mnist (30 MB) + data/debs (14 MB)
#   then the device tool:
#     run(command="bash scripts/gpu_check.sh", carry=["data"], timeout_s=600)
#   A second call on the still-warm machine can reuse the build (build/ stays there while warm):
#     run(command="bash scripts/gpu_check.sh --skip-build --only 'diff bench'", carry=["data"], timeout_s=600)
#   Without data/debs the build needs OpenBLAS, GoogleTest, CLI11 and nlohmann-json installed there;
#   without data/fashion-mnist the loss comparison and the benchmark use synthetic data.
# Expected time on an H100/H200: about 6-9 minutes in all (build ~1.5-3, tests <1, diff ~1,
# sanitize ~2-3, bench ~2-3, profile <1); the budget keeps it under 9 minutes, plus the machine's start.
#
# This file is the interface; the driver and all of the analysis are the Python package
# scripts/gpu_check/ (standard library only, Python 3.8 syntax: a lent machine has no package
# manager; driver.py runs each stage as `python3 -m gpu_check --stage NAME` under `timeout`, and
# the stages' results are judged by small functions with unit tests in scripts/gpu_check/tests/,
# run by ctest as gpu_check_py).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v python3 >/dev/null || { echo "gpu_check: python3 not found (scripts/gpu_check/ needs it)" >&2; exit 2; }
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m gpu_check "$@"
