#!/usr/bin/env bash
# Training throughput on one GPU: ringflow (its default, which replays the step as a CUDA graph, and
# --cuda-graph off and --fuse-epilogues off, where the build has them) vs PyTorch eager and
# torch.compile, MLP and CNN, several batch sizes; prints samples/s and ratios.
#
# usage: bench/gpu_vs_torch.sh [--device cuda:0|cpu] [--models "mlp cnn"] [--batches "64 512"]
#                              [--runs R] [--steps N] [--warmup W] [--data-dir DIR] [--synthetic]
#                              [--json FILE] [--time-limit S] [--no-compile] [--ringflow PATH]
#                              [--train-args "ARGS"]
#   --device D      cuda:N (default cuda:0) or cpu (a dry run of the script without a GPU)
#   --models LIST   space separated (default "mlp cnn");  --batches LIST (default "64 512")
#   --runs R        ringflow processes per (model, batch), PyTorch timed runs; medians (default 3)
#   --steps N       timed steps per run (default 300);  --warmup W  untimed steps first (default 20)
#   --data-dir DIR  Fashion-MNIST IDX files (default: ./data/fashion-mnist, else
#                   /usr/share/datasets/fashion-mnist); --synthetic: random data of the same shapes
#   --json FILE     also write the per-(model, batch) JSON lines to FILE
#   --time-limit S  start nothing new after S seconds (0: none); what did not run is reported
#   --no-compile    skip torch.compile;  --ringflow PATH  the binary (default build/ringflow)
#   --train-args A  more flags for every `ringflow train` run
# Environment: PYTHON (default: the first of python3, /usr/bin/python3 that imports torch).
#
# Same training on both sides: Fashion-MNIST, shuffled batches, cross-entropy, momentum SGD (lr 0.05
# constant, momentum 0.9), fp32 with TF32 off (NVIDIA_TF32_OVERRIDE=0; ringflow's default, and set
# in PyTorch). ringflow: R processes of W+N steps each; its samples/s is `samples_per_second` of
# the JSON summary (every step, the first ones included), and "steady" is the same over the last N
# steps only (from the --metrics lines). PyTorch (bench/torch_gpu.py, one process): per variant W
# untimed steps (torch.compile compiles in them), then R timed runs of N steps between
# torch.cuda.synchronize() calls. Ratios are ringflow / PyTorch medians.
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda:0
models="mlp cnn"
batches="64 512"
runs=3
steps=300
warmup=20
data_dir=""
synthetic=0
json_out=""
time_limit=0
compile=1
rf=build/ringflow
train_args=()

BENCH_NAME=gpu_vs_torch
source bench/lib.sh
usage() { sed -n '5,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

while (($#)); do
  case "$1" in
    --device) (($# >= 2)) || usage; device="$2"; shift 2 ;;
    --models) (($# >= 2)) || usage; models="$2"; shift 2 ;;
    --batches) (($# >= 2)) || usage; batches="$2"; shift 2 ;;
    --runs) (($# >= 2)) || usage; runs="$2"; shift 2 ;;
    --steps) (($# >= 2)) || usage; steps="$2"; shift 2 ;;
    --warmup) (($# >= 2)) || usage; warmup="$2"; shift 2 ;;
    --data-dir) (($# >= 2)) || usage; data_dir="$2"; shift 2 ;;
    --synthetic) synthetic=1; shift ;;
    --json) (($# >= 2)) || usage; json_out="$2"; shift 2 ;;
    --time-limit) (($# >= 2)) || usage; time_limit="$2"; shift 2 ;;
    --no-compile) compile=0; shift ;;
    --ringflow) (($# >= 2)) || usage; rf="$2"; shift 2 ;;
    --train-args) (($# >= 2)) || usage; read -r -a train_args <<<"$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "gpu_vs_torch: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ "$device" == cpu || "$device" =~ ^cuda(:[0-9]+)?$ ]] || die "--device must be cpu or cuda[:N], got '$device'"
[[ "$device" == cuda ]] && device=cuda:0
is_posint "$runs" || die "--runs must be a positive integer, got '$runs'"
is_posint "$steps" || die "--steps must be a positive integer, got '$steps'"
[[ "$warmup" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer, got '$warmup'"
[[ "$time_limit" =~ ^[0-9]+$ ]] || die "--time-limit must be a non-negative integer, got '$time_limit'"
read -r -a model_list <<<"$models"
read -r -a batch_list <<<"$batches"
((${#model_list[@]})) || die "--models is empty"
((${#batch_list[@]})) || die "--batches is empty"
for m in "${model_list[@]}"; do [[ "$m" == mlp || "$m" == cnn ]] || die "unknown model '$m' (expected mlp or cnn)"; done
for b in "${batch_list[@]}"; do is_posint "$b" || die "--batches: '$b' is not a positive integer"; done
[[ -x "$rf" ]] || die "$rf not found (build it: scripts/build.sh, or scripts/gpu_check.sh)"

if ((synthetic)); then
  data_dir=""
elif [[ -z "$data_dir" ]]; then
  for d in data/fashion-mnist /usr/share/datasets/fashion-mnist; do
    if [[ -f "$d/train-images-idx3-ubyte.gz" ]]; then data_dir="$d"; break; fi
  done
  [[ -n "$data_dir" ]] || die "no Fashion-MNIST found in ./data/fashion-mnist or /usr/share/datasets/fashion-mnist" \
    "(scripts/stage_data.sh copies it; --synthetic uses random data)"
fi
[[ -z "$data_dir" || -f "$data_dir/train-images-idx3-ubyte.gz" ]] || die "$data_dir holds no train-images-idx3-ubyte.gz"

if [[ -z "${PYTHON:-}" ]]; then
  for p in python3 /usr/bin/python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import torch' 2>/dev/null; then PYTHON="$p"; break; fi
  done
fi
[[ -n "${PYTHON:-}" ]] || die "no python3 that can import torch (set PYTHON)"

export NVIDIA_TF32_OVERRIDE=0   # fp32 GEMMs and convolutions in cuBLAS/cuDNN, for both programs
start=$SECONDS
remaining() { if ((time_limit)); then echo $((time_limit - (SECONDS - start))); else echo 100000; fi; }
gcd() { local a="$1" b="$2" t; while ((b)); do t=$((a % b)); a="$b"; b="$t"; done; echo "$a"; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
records="$tmp/records.jsonl"   # one line per ringflow run
: >"$records"

variants=(ringflow)
rf_help="$("$rf" train --help 2>&1 || true)"
# The eager step (--cuda-graph off; the default, auto, captures one replica's step on a GPU): what
# the graph is worth. (Not when --train-args sets --cuda-graph itself, nor with a build from before
# auto, whose --cuda-graph was a plain flag.)
if [[ "$device" != cpu ]] && grep -q -- '--cuda-graph \[auto' <<<"$rf_help" &&
   [[ " ${train_args[*]} " != *" --cuda-graph "* && " ${train_args[*]} " != *" --cuda-graph="* ]]; then
  variants+=(ringflow-no-graph)
fi
# The same step without epilogue fusion: what the fused MatMul/Conv2D -> BiasAdd -> Relu steps
# (cuBLASLt's bias/ReLU epilogue for dense layers) are worth, measured in the same run.
# (Not when --train-args sets --fuse-epilogues itself: every run is then what it says.)
if [[ "$device" != cpu ]] && grep -q -- '--fuse-epilogues' <<<"$rf_help" &&
   [[ " ${train_args[*]} " != *" --fuse-epilogues "* ]]; then
  variants+=(ringflow-unfused)
fi
if [[ -n "$data_dir" ]]; then data_args=(--data fashion-mnist --data-dir "$data_dir"); else data_args=(--data synthetic); fi
total=$((warmup + steps))
every="$(gcd "$warmup" "$total")"
((every > 0)) || every="$total"

# record_run IMPL MODEL BATCH RUN RC OUT ERR METRICS WARMUP: appends one JSON line to $records.
record_run() {
  python3 - "$@" >>"$records" <<'EOF'
import json, sys
impl, model, batch, run, rc, out, err, metrics, warmup = sys.argv[1:10]
batch, run, rc, warmup = int(batch), int(run), int(rc), int(warmup)
rec = {"impl": impl, "model": model, "batch": batch, "run": run, "sps": None, "steady_sps": None}
summary = None
try:
    for line in open(out):
        line = line.strip()
        if line.startswith("{"):
            try:
                summary = json.loads(line)
            except ValueError:
                pass
except OSError:
    pass
if rc != 0 or summary is None or "samples_per_second" not in summary:
    msg = ""
    try:
        lines = [l.strip() for l in open(err) if l.strip()]
        errs = [l for l in lines if "error" in l.lower()]
        msg = (errs or lines or [""])[-1]
    except OSError:
        pass
    if rc == -1:
        rec["error"] = "not run: --time-limit reached"
    else:
        why = "timed out" if rc in (124, 137) else f"exit status {rc}"
        rec["error"] = (f"{why}: {msg}" if msg else why)[:300]
else:
    rec["sps"] = summary["samples_per_second"]
    rec["steps"] = summary.get("steps")
    rec["device"] = summary.get("device")
    rec["cuda_graph"] = summary.get("cuda_graph")
    rec["graph_kernels"] = summary.get("cuda_graph_kernels")  # kernels one replayed step launches
    # Steady state: the steps after the warm-up, from the cumulative samples/s of the metrics lines
    # (time to step k = k * batch / sps_k).
    pts = {}
    try:
        for line in open(metrics):
            j = json.loads(line)
            if "test_loss" not in j:
                pts[j["step"]] = j["samples_per_second"]
    except (OSError, ValueError, KeyError):
        pass
    last = summary.get("steps")
    warm = warmup if warmup in pts else min((k for k in pts if k > 0), default=None)
    if last in pts and warm is not None and warm < last:
        t_last, t_warm = last * batch / pts[last], warm * batch / pts[warm]
        if t_last > t_warm:
            rec["steady_sps"] = (last - warm) * batch / (t_last - t_warm)
print(json.dumps(rec, separators=(",", ":")))
EOF
}

echo "gpu_vs_torch: device $device, models ${models}, batches ${batches}, $runs run(s) of $steps steps" \
     "after $warmup warm-up, data ${data_dir:-synthetic}, ringflow variants: ${variants[*]}" >&2
for m in "${model_list[@]}"; do
  for b in "${batch_list[@]}"; do
    for ((r = 1; r <= runs; r++)); do
      for v in "${variants[@]}"; do
        left="$(remaining)"
        out="$tmp/rf-$m-$b-$r-$v"
        if ((left < 5)); then
          : >"$out.err"
          record_run "$v" "$m" "$b" "$r" -1 "$out.json" "$out.err" "$out.metrics" "$warmup"
          continue
        fi
        lim=$((left < 180 ? left : 180))
        cmd=("$rf" train --model "$m" --batch "$b" --max-steps "$total" --epochs 100000 "${data_args[@]}"
             --optimizer momentum --lr 0.05 --momentum 0.9 --lr-schedule constant --seed 0
             --device "$device" --quiet --metrics "$out.metrics" --metrics-every "$every")
        [[ "$v" == ringflow-no-graph ]] && cmd+=(--cuda-graph off)
        [[ "$v" == ringflow-unfused ]] && cmd+=(--fuse-epilogues off)
        cmd+=("${train_args[@]}")
        rc=0
        timeout -k 5 "$lim" "${cmd[@]}" >"$out.json" 2>"$out.err" || rc=$?
        record_run "$v" "$m" "$b" "$r" "$rc" "$out.json" "$out.err" "$out.metrics" "$warmup"
        echo "  $(tail -n 1 "$records")" >&2
      done
    done
  done
done

torch_out="$tmp/torch.jsonl"
: >"$torch_out"
left="$(remaining)"
if ((left >= 20)); then
  tvariants=eager
  ((compile)) && tvariants=eager,compile
  tdevice="$device"
  targs=(--models "$(tr ' ' ',' <<<"${model_list[*]}")" --batches "$(tr ' ' ',' <<<"${batch_list[*]}")"
         --variants "$tvariants" --device "$tdevice" --steps "$steps" --warmup "$warmup" --runs "$runs"
         --lr 0.05 --momentum 0.9 --seed 0 --data-dir "$data_dir")
  ((time_limit)) && targs+=(--time-limit $((left > 30 ? left - 15 : left / 2)))
  rc=0
  timeout -k 5 "$left" "$PYTHON" bench/torch_gpu.py "${targs[@]}" >"$torch_out" 2>"$tmp/torch.err" || rc=$?
  cat "$torch_out" >&2
  if ((rc)); then
    echo "gpu_vs_torch: bench/torch_gpu.py exited with status $rc:" >&2
    tail -n 15 "$tmp/torch.err" >&2
  fi
else
  echo "gpu_vs_torch: no time left for PyTorch (--time-limit $time_limit)" >&2
fi

python3 - "$records" "$torch_out" "$device" "$runs" "$steps" "$warmup" "${json_out:-}" "${data_dir:-synthetic}" <<'EOF'
import json, statistics, sys
records_f, torch_f, device, runs, steps, warmup, json_out, data = sys.argv[1:9]
rf = [json.loads(l) for l in open(records_f) if l.strip()]
tt = []
for l in open(torch_f):
    try:
        tt.append(json.loads(l))
    except ValueError:
        pass
keys = []
for r in rf + tt:
    k = (r["model"], r["batch"])
    if k not in keys:
        keys.append(k)
gpu = next((t.get("gpu") for t in tt if t.get("gpu")), None)

def med(vals):
    vals = [v for v in vals if v is not None]
    return round(statistics.median(vals), 2) if vals else None

def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None

out, ok = [], True
for model, batch in keys:
    mine = [r for r in rf if (r["model"], r["batch"]) == (model, batch)]
    tor = {t["variant"]: t for t in tt if (t["model"], t["batch"]) == (model, batch)}
    res = {"bench": "gpu_vs_torch", "model": model, "batch": batch, "device": device, "gpu": gpu,
           "data": data, "runs": int(runs), "steps": int(steps), "warmup": int(warmup)}
    notes = []
    for impl, key in (("ringflow", "ringflow"), ("ringflow-no-graph", "ringflow_no_graph"),
                      ("ringflow-unfused", "ringflow_unfused")):
        rs = [r for r in mine if r["impl"] == impl]
        if not rs:
            continue
        res[key + "_sps"] = med(r["sps"] for r in rs)
        res[key + "_steady_sps"] = med(r["steady_sps"] for r in rs)
        kernels = [r["graph_kernels"] for r in rs if r.get("graph_kernels") is not None]
        if kernels:
            res[key + "_graph_kernels"] = kernels[0]
        errs = sorted({r["error"] for r in rs if r.get("error")})
        notes += [f"{impl}: {e}" for e in errs]
        if impl == "ringflow" and (errs or res[key + "_sps"] is None):
            ok = False
        if impl == "ringflow":  # did the default (--cuda-graph auto) replay a captured step?
            res["ringflow_cuda_graph"] = any(r.get("cuda_graph") is True for r in rs)
    for v in ("eager", "compile"):
        t = tor.get(v)
        res[f"torch_{v}_sps"] = t.get("samples_per_second") if t else None
        if t and t.get("note"):
            notes.append(f"torch {v}: {t['note']}")
    if res["torch_eager_sps"] is None:
        ok = False
        if "eager" not in tor:
            notes.append("torch eager: no result")
    for v in ("eager", "compile"):
        res[f"ratio_{v}"] = ratio(res.get("ringflow_sps"), res[f"torch_{v}_sps"])
        res[f"ratio_{v}_steady"] = ratio(res.get("ringflow_steady_sps"), res[f"torch_{v}_sps"])
        if "ringflow_no_graph_sps" in res:
            res[f"no_graph_ratio_{v}_steady"] = ratio(res.get("ringflow_no_graph_steady_sps"), res[f"torch_{v}_sps"])
    if "ringflow_no_graph_steady_sps" in res:  # > 1: the CUDA graph pays
        res["graph_over_no_graph_steady"] = ratio(res.get("ringflow_steady_sps"), res["ringflow_no_graph_steady_sps"])
    if "ringflow_unfused_steady_sps" in res:  # > 1: the fused epilogues pay
        res["fused_over_unfused_steady"] = ratio(res.get("ringflow_steady_sps"), res["ringflow_unfused_steady_sps"])
    res["notes"] = notes
    out.append(res)

def f(v, fmt):
    return "n/a" if v is None else fmt % v

print(f"\nringflow vs PyTorch on {gpu or device}: medians of {runs} run(s) of {steps} steps after {warmup} "
      f"warm-up; ratio = ringflow / torch")
print("%-5s %6s  %-26s %12s %9s %10s" % ("model", "batch", "impl", "samples/s", "/eager", "/compile"))
for r in out:
    rows = [("ringflow", r.get("ringflow_sps")), ("ringflow (steady)", r.get("ringflow_steady_sps"))]
    if "ringflow_no_graph_sps" in r:
        rows += [("ringflow --cuda-graph off", r.get("ringflow_no_graph_sps")),
                 ("  (steady)", r.get("ringflow_no_graph_steady_sps"))]
    if "ringflow_unfused_sps" in r:
        rows += [("ringflow unfused", r.get("ringflow_unfused_sps")),
                 ("  (steady)", r.get("ringflow_unfused_steady_sps"))]
    for name, v in rows:
        print("%-5s %6d  %-26s %12s %9s %10s" % (r["model"], r["batch"], name, f(v, "%.1f"),
              f(ratio(v, r["torch_eager_sps"]), "%.3f"), f(ratio(v, r["torch_compile_sps"]), "%.3f")))
    for name, key in (("torch eager", "torch_eager_sps"), ("torch.compile", "torch_compile_sps")):
        print("%-5s %6d  %-26s %12s" % (r["model"], r["batch"], name, f(r[key], "%.1f")))
    for n in r["notes"]:
        print(f"      note: {n}")
print()
lines = [json.dumps(r, separators=(",", ":")) for r in out]
for l in lines:
    print(l)
if json_out:
    with open(json_out, "w") as fh:
        fh.write("".join(l + "\n" for l in lines))
sys.exit(0 if ok and out else 1)
EOF
