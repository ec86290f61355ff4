#!/usr/bin/env bash
# Data-parallel equivalence: with global batch B, 2 and 4 ranks end with the same Variables as
# 1 rank after 20 SGD-with-momentum steps (max relative difference <= 1e-5 per Variable), for
# the MLP and the CNN, with the ring collective (its default fused update at these sizes, and
# with --fuse-update off its shared-memory allreduce) and the mpi collective. The MLP runs in
# f32; the CNN in f64, because in f32 the last-bit differences between one batch-64 sum and two
# batch-32 sums flip max-pool/ReLU decisions after ~10 steps, and each flip moves a weight by
# ~lr*|dy*x| (measured: 1e-7 after 5 steps, 1.5e-5 after 10, 2e-4 after 20). In f64 no decision
# flips, so what is compared is the data-parallel algorithm (sharding, averaging, buckets), not
# rounding. Each run's summary must say whether the fused update ran (ring: yes; the others: no).
# Usage: tests/dp_equivalence.sh path/to/ringflow path/to/mpiexec
set -uo pipefail
bin="$1"; mpiexec="$2"
data=/usr/share/datasets/fashion-mnist
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ ! -f $data/train-images-idx3-ubyte.gz ]]; then
  echo "SKIP: Fashion-MNIST is not installed at $data (scripts/install_deps.sh installs it)"; exit 0
fi
fails=0; passes=0
run() {  # run NP VARIANT MODEL OUT; VARIANT: ring (fused update at <= 4 ranks), ring-allreduce, mpi
  local dtype=f32; [[ $3 == cnn ]] && dtype=f64
  local coll=("--collective" "${2%-allreduce}")
  [[ $2 == *-allreduce ]] && coll+=(--fuse-update off)
  "$mpiexec" --allow-run-as-root --oversubscribe -np "$1" "$bin" train --model "$3" "${coll[@]}" --dtype $dtype \
    --device cpu --threads 1 --batch 64 --max-steps 20 --epochs 1 --optimizer momentum --lr 0.05 \
    --lr-schedule constant --check-every 10 --quiet --save "$4" >"$4.json" 2>"$4.err"
}
compare() {  # compare A B -> prints the worst relative difference, exit 1 if > 1e-5
  python3 "$(dirname "${BASH_SOURCE[0]}")/safetensors_diff.py" "$1" "$2" 1e-5
}
for model in mlp cnn; do
  if ! run 1 ring "$model" "$tmp/$model.np1.safetensors"; then
    echo "FAIL $model np=1: $(tail -2 "$tmp/$model.np1.safetensors.err")"; fails=$((fails + 1)); continue
  fi
  for coll in ring ring-allreduce mpi; do
    for np in 2 4; do
      out="$tmp/$model.$coll.np$np.safetensors"
      if ! run "$np" "$coll" "$model" "$out"; then
        echo "FAIL $model $coll np=$np: $(tail -2 "$out.err")"; fails=$((fails + 1)); continue
      fi
      want=false; [[ $coll == ring ]] && want=true
      if ! grep -q "\"fused_update\":$want" "$out.json"; then
        echo "FAIL $model $coll np=$np: the summary does not say fused_update $want"; fails=$((fails + 1)); continue
      fi
      if diff=$(compare "$tmp/$model.np1.safetensors" "$out"); then
        echo "ok   $model $coll np=$np: max relative difference $diff"; passes=$((passes + 1))
      else
        echo "FAIL $model $coll np=$np: max relative difference $diff > 1e-5"; fails=$((fails + 1))
      fi
    done
  done
done
echo "$passes passed, $fails failed"
[[ $fails -eq 0 ]]
