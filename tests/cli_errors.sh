#!/usr/bin/env bash
# Bad input to `ringflow train` gives exactly one "ringflow: error: ..." line on stderr, nothing
# on stdout, a non-zero exit and no hang. Usage: tests/cli_errors.sh path/to/ringflow
set -uo pipefail
bin="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0; passes=0

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

# A tiny but valid Fashion-MNIST-shaped data set, then corrupted copies of it.
python3 - "$tmp" <<'PY'
import gzip, struct, sys, os
d = sys.argv[1]
def write(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", x) for x in dims) + payload)
for name, n in (("good", 100), ("badmagic", 100), ("short", 100)):
    os.makedirs(f"{d}/{name}")
    for split in ("train", "t10k"):
        img_magic = 0x00000804 if name == "badmagic" and split == "train" else 0x00000803
        pixels = bytes((i * 7) % 256 for i in range(n * 784))
        if name == "short" and split == "train":
            pixels = pixels[: len(pixels) // 2]
        write(f"{d}/{name}/{split}-images-idx3-ubyte.gz", img_magic, (n, 28, 28), pixels)
        write(f"{d}/{name}/{split}-labels-idx1-ubyte.gz", 0x00000801, (n,), bytes(i % 10 for i in range(n)))
PY

common=(train --quiet --epochs 1 --max-steps 2 --model mlp)
expect_error "unknown flag" "--frobnicate" "${common[@]}" --frobnicate 3
expect_error "unknown model" "resnet" train --model resnet
expect_error "unknown optimizer" "rmsprop" train --optimizer rmsprop
expect_error "missing data directory" "/nonexistent/fmnist" "${common[@]}" --data-dir /nonexistent/fmnist
expect_error "wrong IDX magic" "magic" "${common[@]}" --data-dir "$tmp/badmagic"
expect_error "truncated IDX" "truncated" "${common[@]}" --data-dir "$tmp/short"
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
expect_error "no exchange with a replica check" "check-every" "${common[@]}" --data-dir "$tmp/good" --no-gradient-exchange --check-every 5
expect_error "unknown collective" "gloo" "${common[@]}" --data-dir "$tmp/good" --collective gloo
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
echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
