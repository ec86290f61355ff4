#!/usr/bin/env bash
# Bad input to `ringflow train` gives exactly one "ringflow: error: ..." line on stderr, nothing
# on stdout, a non-zero exit and no hang. Usage: tests/cli_errors.sh path/to/ringflow [mpi]
# (with "mpi", for a build with MPI and Open MPI's mpirun, the same under mpirun -np 2)
set -uo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0

mpi="${2:-}"  # "mpi" when ringflow was built with MPI: the mpirun cases run
# expect_error NAME PATTERN ARGS...: the one stderr line must match PATTERN (grep -E).
expect_error() {
  local name="$1" pattern="$2"; shift 2
  timeout 60 "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  local lines; lines=$(wc -l <"$tmp/err")
  if [[ $rc -eq 0 || $rc -eq 124 || $lines -ne 1 || -s "$tmp/out" ]] || ! grep -qE "^ringflow: error: .*$pattern" "$tmp/err"; then
    echo "FAIL $name: rc=$rc, stderr lines=$lines, stderr: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
  else
    echo "ok   $name: $(cat "$tmp/err")"
    passes=$((passes + 1))
  fi
}

# limit_memory: 4 GB of address space for what follows (call it in a subshell). Under
# AddressSanitizer (RF_SANITIZER=asan, scripts/test.sh --asan), which reserves terabytes of shadow
# address space and cannot start under `ulimit -v`, its allocator enforces the limit instead: an
# allocation over 3.9 GB, or a resident set past 4 GB, ends the process with ASan's report (and
# the case fails, as the std::bad_alloc from `ulimit -v` would make it fail).
limit_memory() {
  if [[ ${RF_SANITIZER:-} == asan ]]; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:-}:allocator_may_return_null=1:max_allocation_size_mb=3900:hard_rss_limit_mb=4000"
  else
    ulimit -v 4000000
  fi
}

# A tiny but valid Fashion-MNIST-shaped data set, then corrupted copies of it.
python3 - "$tmp" <<'PY'
import gzip, struct, sys, os
d = sys.argv[1]
def write(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", x) for x in dims) + payload)
for name, n in (("good", 100), ("badmagic", 100), ("short", 100), ("small", 100), ("huge", 100)):
    os.makedirs(f"{d}/{name}")
    side = 14 if name == "small" else 28
    for split in ("train", "t10k"):
        img_magic = 0x00000804 if name == "badmagic" and split == "train" else 0x00000803
        pixels = bytes((i * 7) % 256 for i in range(n * side * side))
        if name == "short" and split == "train":
            pixels = pixels[: len(pixels) // 2]
        claimed = 5_000_000 if name == "huge" else n  # the header promises 15.7 GB of float pixels
        write(f"{d}/{name}/{split}-images-idx3-ubyte.gz", img_magic, (claimed, side, side), pixels)
        write(f"{d}/{name}/{split}-labels-idx1-ubyte.gz", 0x00000801, (claimed,), bytes(i % 10 for i in range(n)))
PY

common=(train --quiet --epochs 1 --max-steps 2 --model mlp)
expect_error "unknown flag" "--frobnicate" "${common[@]}" --frobnicate 3
expect_error "unknown model" "resnet" train --model resnet
expect_error "unknown optimizer" "rmsprop" train --optimizer rmsprop
expect_error "missing data directory" "/nonexistent/fmnist" "${common[@]}" --data-dir /nonexistent/fmnist
expect_error "wrong IDX magic" "magic" "${common[@]}" --data-dir "$tmp/badmagic"
expect_error "truncated IDX" "truncated" "${common[@]}" --data-dir "$tmp/short"
# A header that promises far more than the file holds: found truncated without first allocating
# what the header promises. 4 GB of address space holds the process (about 1.1 GB before the
# loader: the CUDA, NCCL and oneDNN libraries) and the loader's first 256 MiB, not 15.7 GB; one
# thread of each kind, so that a many-core machine's thread stacks do not count against it.
# (A subshell holds the limit; its status carries the verdict out.)
if (limit_memory; export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1; f0=$fails
    expect_error "IDX header promising 5M images" "truncated" "${common[@]}" --device cpu --threads 1 \
      --data-dir "$tmp/huge"; [[ $fails -eq $f0 ]]); then
  passes=$((passes + 1)); else fails=$((fails + 1)); fi
# A FIFO in place of a data file: refused, not waited on for ever.
mkdir -p "$tmp/fifodata" && cp "$tmp"/good/* "$tmp/fifodata/" && rm "$tmp/fifodata/train-images-idx3-ubyte.gz" &&
  mkfifo "$tmp/fifodata/train-images-idx3-ubyte.gz"
expect_error "FIFO as an IDX file" "not a regular file" "${common[@]}" --data-dir "$tmp/fifodata"
expect_error "--max-steps -1 (the no-limit default) from a user" "--max-steps: must be positive" "${common[@]}" \
  --data-dir "$tmp/good" --max-steps -1
expect_error "bare cuda: device" "bad device 'cuda:'" "${common[@]}" --data-dir "$tmp/good" --device cuda:
expect_error "device index past int" "bad device" "${common[@]}" --data-dir "$tmp/good" --device cuda:2147483648
expect_error "batch larger than data set" "larger than" "${common[@]}" --data-dir "$tmp/good" --batch 101
expect_error "zero batch" "--batch" "${common[@]}" --data-dir "$tmp/good" --batch 0
expect_error "negative batch" "--batch" "${common[@]}" --data-dir "$tmp/good" --batch -4
expect_error "zero lr" "--lr" "${common[@]}" --data-dir "$tmp/good" --lr 0
expect_error "negative lr" "--lr" "${common[@]}" --data-dir "$tmp/good" --lr -0.1
expect_error "non-numeric lr" "lr" "${common[@]}" --data-dir "$tmp/good" --lr fast
expect_error "missing checkpoint" "/nonexistent/ckpt.safetensors" "${common[@]}" --data-dir "$tmp/good" --init-from /nonexistent/ckpt.safetensors
expect_error "bad device" "device" "${common[@]}" --data-dir "$tmp/good" --device tpu
expect_error "unknown compressor" "fp8" "${common[@]}" --data-dir "$tmp/good" --compress fp8
expect_error "powersgd without rank" "powersgd" "${common[@]}" --data-dir "$tmp/good" --compress powersgd
expect_error "topk ratio out of range" "topk" "${common[@]}" --data-dir "$tmp/good" --compress topk:2
expect_error "compress needs f32" "dtype f32" "${common[@]}" --data-dir "$tmp/good" --compress fp16 --dtype f64
expect_error "bad --fuse-update" "fuse-update" "${common[@]}" --data-dir "$tmp/good" --fuse-update maybe
expect_error "bad --fuse-epilogues" "fuse-epilogues" "${common[@]}" --data-dir "$tmp/good" --fuse-epilogues maybe
expect_error "bad --cuda-graph" "cuda-graph" "${common[@]}" --data-dir "$tmp/good" --cuda-graph maybe
expect_error "bare --cuda-graph (on) on the CPU" "--cuda-graph on needs a CUDA device" "${common[@]}" --data-dir "$tmp/good" --device cpu --cuda-graph
expect_error "no exchange with a replica check" "check-every" "${common[@]}" --data-dir "$tmp/good" --no-gradient-exchange --check-every 5
expect_error "unknown collective" "gloo" "${common[@]}" --data-dir "$tmp/good" --collective gloo
expect_error "images not 28x28" "14x14" "${common[@]}" --data-dir "$tmp/small"
expect_error "negative seed" "--seed" "${common[@]}" --data-dir "$tmp/good" --seed -1
expect_error "seed beyond 64 bits" "--seed" "${common[@]}" --data-dir "$tmp/good" --seed 99999999999999999999
expect_error "batch beyond 64 bits" "--batch: is out of range" "${common[@]}" --data-dir "$tmp/good" --batch 99999999999999999999
expect_error "fractional epochs" "--epochs: must be an integer" "${common[@]}" --data-dir "$tmp/good" --epochs 1.5
expect_error "negative momentum" "--momentum" "${common[@]}" --data-dir "$tmp/good" --momentum -5
expect_error "infinite weight decay" "--weight-decay" "${common[@]}" --data-dir "$tmp/good" --weight-decay inf
expect_error "negative warmup" "--warmup-steps" "${common[@]}" --data-dir "$tmp/good" --warmup-steps -10
expect_error "huge synthetic set" "--synthetic-train" "${common[@]}" --data synthetic --synthetic-train 1000000000
expect_error "compress momentum with momentum" "--optimizer sgd" "${common[@]}" --data-dir "$tmp/good" --compress topk:0.1 --compress-momentum 0.9
expect_error "fuse on with one replica" "2 or more ranks" "${common[@]}" --data-dir "$tmp/good" --fuse-update on
expect_error "metrics and timeline one file" "same file" "${common[@]}" --data-dir "$tmp/good" --metrics "$tmp/x.json" --timeline "$tmp/x.json"
expect_error "metrics in a missing directory" "no directory" "${common[@]}" --data-dir "$tmp/good" --metrics "$tmp/nodir/m.jsonl"
expect_error "save in a missing directory" "no directory" "${common[@]}" --data-dir "$tmp/good" --save "$tmp/nodir/c.safetensors"
mkdir -p "$tmp/adir"
expect_error "timeline is a directory" "is a directory" "${common[@]}" --data-dir "$tmp/good" --timeline "$tmp/adir"
# A checkpoint or trace is renamed into place: over a FIFO (or a device) it must refuse, not
# replace it. Metrics stream into their file: a full device fails at the first line.
mkfifo "$tmp/fifo"
expect_error "save over a FIFO" "not a regular file" "${common[@]}" --data-dir "$tmp/good" --save "$tmp/fifo"
expect_error "timeline over a FIFO" "not a regular file" "${common[@]}" --data-dir "$tmp/good" --timeline "$tmp/fifo"
[[ -p "$tmp/fifo" ]] || { echo "FAIL the FIFO was replaced"; fails=$((fails + 1)); }
if [[ -c /dev/full ]]; then
  expect_error "metrics on a full device" "No space left" "${common[@]}" --data-dir "$tmp/good" --batch 10 \
    --metrics-every 1 --metrics /dev/full
fi
expect_error "threads past the cap" "--threads must be in" "${common[@]}" --data-dir "$tmp/good" --threads 100000
# Passes the output probes (which create and remove a file), then fails: nothing may stay.
expect_error "missing --init-from after the probes" "--init-from" "${common[@]}" --data-dir "$tmp/good" \
  --timeline "$tmp/t.json" --metrics "$tmp/m.jsonl" --init-from "$tmp/none.safetensors"
if ls "$tmp" | grep -qE '\.(tmp|probe)|^t\.json|^m\.jsonl'; then
  echo "FAIL output checks left a file: $(ls "$tmp")"; fails=$((fails + 1))
else
  echo "ok   output checks left no file behind"; passes=$((passes + 1))
fi
if timeout 60 "$bin" train --quiet --model mlp --max-steps 2 --data-dir "$tmp/good" --batch 10 \
     --epochs 9223372036854775807 >"$tmp/out" 2>"$tmp/err" &&
   grep -q '"steps":2' "$tmp/out"; then
  echo "ok   --epochs at its maximum with --max-steps"; passes=$((passes + 1))
else
  echo "FAIL --epochs at its maximum: $(head -c 300 "$tmp/err")"; fails=$((fails + 1))
fi

# Under mpirun: a bad value found by every rank, or an output path only rank 0 writes, ends the
# job promptly with one "ringflow: error" line (mpirun adds its own banner), not one per rank or
# a hang.
expect_mpi_error() {
  local name="$1" pattern="$2"; shift 2
  timeout 90 mpirun --allow-run-as-root -np 2 "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? n
  n=$(grep -c "^ringflow: error" "$tmp/err")
  if [[ $rc -eq 0 || $rc -eq 124 || $n -ne 1 ]] || grep -q '"test_accuracy"' "$tmp/out" ||
     ! grep -qE "^ringflow: error: .*$pattern" "$tmp/err"; then
    echo "FAIL mpirun $name: rc=$rc, error lines=$n, stderr: $(head -c 400 "$tmp/err")"
    fails=$((fails + 1))
  else
    echo "ok   mpirun $name: $(grep '^ringflow: error' "$tmp/err")"
    passes=$((passes + 1))
  fi
}
if [[ "$mpi" == mpi ]] && mpirun --version 2>/dev/null | grep -q "Open MPI" && [[ "$(nproc)" -ge 2 ]]; then
  mpi_common=(train --quiet --epochs 1 --max-steps 2 --model mlp --threads 1 --data-dir "$tmp/good")
  expect_mpi_error "batch does not split" "split evenly" "${mpi_common[@]}" --batch 9
  expect_mpi_error "metrics in a missing directory" "no directory" "${mpi_common[@]}" --batch 10 --metrics "$tmp/nodir/m.jsonl"
  expect_mpi_error "bad flag value" "--lr" "${mpi_common[@]}" --batch 10 --lr -1
  expect_mpi_error "missing --init-from" "--init-from" "${mpi_common[@]}" --batch 10 --init-from "$tmp/none.safetensors"
  expect_mpi_error "fused update without shared memory" "no peer window" "${mpi_common[@]}" --batch 10 \
    --collective mpi --fuse-update on
  expect_mpi_error "fused update without an exchange" "no-gradient-exchange" "${mpi_common[@]}" --batch 10 \
    --fuse-update on --no-gradient-exchange
  # A set-up error on rank 1 alone (MPMD: its data directory is missing): rank 0 must not wait in
  # the first collective; the agreed line names rank 1, and the job ends without MPI_Abort.
  one_rank=(train --quiet --epochs 1 --max-steps 2 --model mlp --threads 1 --batch 10)
  timeout 90 mpirun --allow-run-as-root -np 1 "$bin" "${one_rank[@]}" --data-dir "$tmp/good" : \
    -np 1 "$bin" "${one_rank[@]}" --data-dir /nonexistent/fmnist >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 && $(grep -c "^ringflow: error" "$tmp/err") -eq 1 ]] &&
     grep -qE "^ringflow: error: rank 1: .*/nonexistent/fmnist" "$tmp/err" && ! grep -q "MPI_ABORT" "$tmp/err"; then
    echo "ok   mpirun set-up error on one rank: $(grep '^ringflow: error' "$tmp/err")"; passes=$((passes + 1))
  else
    echo "FAIL mpirun set-up error on one rank: rc=$rc, stderr: $(head -c 400 "$tmp/err")"; fails=$((fails + 1))
  fi
  # A bad flag on rank 1 alone (MPMD): flags are parsed before MPI starts, so the first rank of
  # each app context reports its own; the job still ends (mpirun sees rank 1 exit).
  timeout 90 mpirun --allow-run-as-root -np 1 "$bin" "${one_rank[@]}" --data-dir "$tmp/good" : \
    -np 1 "$bin" "${one_rank[@]}" --data-dir "$tmp/good" --seed -3 >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 && $(grep -c "^ringflow: error" "$tmp/err") -eq 1 ]] &&
     grep -qE "^ringflow: error: .*--seed" "$tmp/err"; then
    echo "ok   mpirun flag error on one rank: $(grep '^ringflow: error' "$tmp/err")"; passes=$((passes + 1))
  else
    echo "FAIL mpirun flag error on one rank: rc=$rc, stderr: $(head -c 400 "$tmp/err")"; fails=$((fails + 1))
  fi
  # An error during training (every rank's loss overflows): the job ends promptly from the throw
  # site, each line names its rank, and nothing is unwound into a wait for the peers.
  timeout 90 mpirun --allow-run-as-root -np 2 "$bin" train --quiet --epochs 1 --max-steps 20 --model mlp --threads 1 \
    --data-dir "$tmp/good" --batch 10 --lr 1e30 >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [[ $rc -ne 0 && $rc -ne 124 ]] && grep -qE "^ringflow: error: rank [01]: loss became" "$tmp/err" &&
     ! grep -q "terminate called" "$tmp/err"; then
    echo "ok   mpirun error during training: $(grep -m1 '^ringflow: error' "$tmp/err")"; passes=$((passes + 1))
  else
    echo "FAIL mpirun error during training: rc=$rc, stderr: $(head -c 400 "$tmp/err")"; fails=$((fails + 1))
  fi
fi

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  expect_error "cuda without a GPU" "no CUDA device" "${common[@]}" --data-dir "$tmp/good" --device cuda
fi

# The good data set trains, and a save leaves exactly the checkpoint behind.
if timeout 120 "$bin" "${common[@]}" --device cpu --data-dir "$tmp/good" --batch 10 --save "$tmp/ck.safetensors" >"$tmp/out" 2>"$tmp/err" \
   && grep -q '"test_accuracy"' "$tmp/out" && [[ -s "$tmp/ck.safetensors" ]] && ! ls "$tmp" | grep -q '\.tmp'; then
  echo "ok   good data set trains and saves"; passes=$((passes + 1))
else
  echo "FAIL good data set: $(cat "$tmp/err")"; fails=$((fails + 1))
fi

# Checkpoints in: a NaN in a Variable is refused, naming it; a FIFO is refused, not waited on.
python3 - "$tmp/ck.safetensors" "$tmp/nan.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
start = 8 + n + json.loads(raw[8:8 + n])["fc2.weight"]["data_offsets"][0] + 4 * 5  # its 6th float
open(sys.argv[2], "wb").write(raw[:start] + struct.pack("<f", float("nan")) + raw[start + 4:])
PY
expect_error "NaN in a checkpoint" "'fc2.weight' holds nan at index 5" "${common[@]}" --data-dir "$tmp/good" --batch 10 \
  --init-from "$tmp/nan.safetensors"
# Another model's checkpoint is refused from its header: an extra 4 GB tensor (a sparse file) is
# never read (4 GB of address space, as above, would not hold it and the process).
python3 - "$tmp/ck.safetensors" "$tmp/big.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
header["junk"] = {"dtype": "F32", "shape": [1000000000], "data_offsets": [len(data), len(data) + 4000000000]}
hb = json.dumps(header).encode()
with open(sys.argv[2], "wb") as f:
    f.write(struct.pack("<Q", len(hb)) + hb + data)
    f.truncate(8 + len(hb) + len(data) + 4000000000)
PY
if (limit_memory; export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1; f0=$fails
    expect_error "checkpoint with a 4 GB extra tensor" "'junk', which is not a Variable" "${common[@]}" --device cpu \
      --threads 1 --data-dir "$tmp/good" --batch 10 --init-from "$tmp/big.safetensors"; [[ $fails -eq $f0 ]]); then
  passes=$((passes + 1)); else fails=$((fails + 1)); fi
rm -f "$tmp/big.safetensors"
if [[ -n "${mpi_common+x}" ]]; then  # the mpirun cases ran: a bad checkpoint is a set-up error every rank agrees on
  expect_mpi_error "NaN in --init-from" "holds nan" "${mpi_common[@]}" --batch 10 --init-from "$tmp/nan.safetensors"
fi
mkfifo "$tmp/ckfifo"
expect_error "FIFO as --init-from" "not a regular file" "${common[@]}" --data-dir "$tmp/good" --init-from "$tmp/ckfifo"
# Out: a run whose last update diverges (its loss, read before that update, was finite) ends
# with an error and saves nothing.
# The gpt model's and the optimizer's flags, and `ringflow sample`.
expect_error "negative clip" "clip-grad-norm must be >= 0" "${common[@]}" --clip-grad-norm -1
expect_error "beta2 of 1" "beta2 must be in" "${common[@]}" --beta2 1
expect_error "negative max-minutes" "max-minutes must be >= 0" "${common[@]}" --max-minutes -1
if command -v bible >/dev/null; then  # the text from Debian's bible program (no data/kjv in the cwd)
  pushd "$tmp" >/dev/null
  expect_error "heads that do not divide the width" "does not divide --width" train --quiet --model gpt --heads 3 \
    --max-steps 1
  popd >/dev/null
fi
expect_error "gpt option on mlp" "is not an option of model 'mlp'" "${common[@]}" --heads 2
expect_error "kjv text missing" "cannot read the text corpus" train --quiet --model gpt --max-steps 1 \
  --data-dir "$tmp/no_such_dir"
expect_error "sample without a checkpoint" "init-from" sample --prompt x
expect_error "sample from a missing file" "init-from" sample --init-from "$tmp/none.safetensors"
expect_error "diverged at the last step" "training diverged by step 1" train --quiet --model mlp --max-steps 1 \
  --data-dir "$tmp/good" --batch 10 --lr 1e30 --save "$tmp/diverged.safetensors"
if [[ -e "$tmp/diverged.safetensors" ]]; then
  echo "FAIL a diverged run saved its checkpoint"; fails=$((fails + 1))
fi
echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
