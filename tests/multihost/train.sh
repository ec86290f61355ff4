#!/usr/bin/env bash
# Training across emulated hosts (scripts/multihost.sh): `ringflow train` on 2 hosts x 2 ranks,
# global batch 64, ends with the same Variables as 1 rank after 20 momentum-SGD steps: the MLP
# in f32 within 1e-5 and the CNN in f64 within 1e-10 (max relative difference per Variable; f64
# because in f32 the last bits of a 64-sample sum against four 16-sample sums flip ReLU and
# max-pool decisions within a few steps: see tests/dp_equivalence.sh). The ring collective runs
# hierarchical there (shared memory within a host, TCP between); the MLP also runs with the mpi
# collective. Each 4-rank summary must say world_size 4, the collective (ring(hier) or mpi) and
# no fused update (the ranks span two nodes). Skips (77) where network namespaces cannot work.
# Usage: tests/multihost/train.sh path/to/ringflow
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mh=$here/../../scripts/multihost.sh
data=/usr/share/datasets/fashion-mnist
if [[ ${1:-} != --inside ]]; then
  rc=0; why=$("$mh" check) || rc=$?
  if ((rc)); then echo "$why"; exit "$rc"; fi
  [[ -f $data/train-images-idx3-ubyte.gz ]] || { echo "skip: Fashion-MNIST is not installed at $data"; exit 77; }
  exec "$mh" with 2 -- bash "${BASH_SOURCE[0]}" --inside "$@"
fi
bin=$(readlink -f "$2")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
train() {  # train MODEL DTYPE COLLECTIVE OUT [LAUNCHER...]
  local model=$1 dtype=$2 coll=$3 out=$4; shift 4
  "$@" "$bin" train --model "$model" --collective "$coll" --dtype "$dtype" --device cpu --threads 1 --batch 64 \
    --max-steps 20 --epochs 1 --optimizer momentum --lr 0.05 --lr-schedule constant --check-every 10 --quiet \
    --save "$out" >"$out.json" 2>"$out.err"
}
for case in "mlp f32 ring 1e-5" "mlp f32 mpi 1e-5" "cnn f64 ring 1e-10"; do
  read -r model dtype coll tol <<<"$case"
  one=$tmp/$model.$dtype.np1.safetensors four=$tmp/$model.$dtype.$coll.2x2.safetensors
  [[ -f $one ]] || train "$model" "$dtype" ring "$one" || {
    echo "FAIL $model $dtype 1 rank: $(tail -2 "$one.err")"; fails=$((fails + 1)); continue; }
  if ! train "$model" "$dtype" "$coll" "$four" timeout 600 "$mh" mpirun --host h1:2,h2:2; then
    echo "FAIL $model $dtype $coll 2x2: $(grep -a 'error' "$four.err" | head -3)"; fails=$((fails + 1)); continue
  fi
  want='"mpi"'; [[ $coll == ring ]] && want='"ring(hier)"'
  if ! grep -q '"world_size":4' "$four.json" || ! grep -q '"fused_update":false' "$four.json" ||
     ! grep -qF "\"collective\":$want" "$four.json"; then
    echo "FAIL $model $dtype $coll 2x2: the summary does not say world_size 4, collective $want, fused_update false: $(head -c 600 "$four.json")"
    fails=$((fails + 1)); continue
  fi
  if diff=$(python3 "$here/../safetensors_diff.py" "$one" "$four" "$tol"); then
    echo "ok   $model $dtype $coll 2 hosts x 2 ranks vs 1 rank: max relative difference $diff <= $tol"; passes=$((passes + 1))
  else
    echo "FAIL $model $dtype $coll 2 hosts x 2 ranks vs 1 rank: max relative difference $diff > $tol"; fails=$((fails + 1))
  fi
done
echo "$passes passed, $fails failed"
((fails == 0))
