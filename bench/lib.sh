# Helpers shared by the bench/*.sh scripts. Source it after setting BENCH_NAME (the prefix of
# error lines) and, for run_one, BENCH_TIME_LIMIT (seconds one program run may take; default 600).

die() { echo "$BENCH_NAME: error: $*" >&2; exit 1; }
is_posint() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

# check_run_args: the options scaling.sh and vs_pytorch.sh share ($runs, $steps_mlp, $steps_cnn,
# $warmup, $models), checked; fills the array model_list.
check_run_args() {
  is_posint "$runs" || die "--runs must be a positive integer, got '$runs'"
  is_posint "$steps_mlp" || die "--steps-mlp must be a positive integer, got '$steps_mlp'"
  is_posint "$steps_cnn" || die "--steps-cnn must be a positive integer, got '$steps_cnn'"
  [[ "$warmup" =~ ^[0-9]+$ ]] || die "--warmup must be a non-negative integer, got '$warmup'"
  read -r -a model_list <<<"$models"
  ((${#model_list[@]})) || die "--models is empty"
  local m
  for m in "${model_list[@]}"; do
    [[ "$m" == mlp || "$m" == cnn ]] || die "unknown model '$m' (expected mlp or cnn)"
  done
}

# json_field FILE KEY: KEY of the last JSON object line in FILE (fails if there is none).
json_field() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
obj = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            pass
if obj is None or sys.argv[2] not in obj:
    sys.exit(1)
print(obj[sys.argv[2]])
EOF
}

# run_one NAME OUTFILE CMD...: runs CMD (at most BENCH_TIME_LIMIT s; timeout signals its whole
# process group), stdout to OUTFILE, stderr to OUTFILE.err; on failure, or without a JSON line
# holding samples_per_second, prints the output tails and exits.
run_one() {
  local name="$1" out="$2" limit="${BENCH_TIME_LIMIT:-600}"
  shift 2
  local rc=0
  timeout -k 10 "$limit" "$@" </dev/null >"$out" 2>"$out.err" || rc=$?
  if ((rc)); then
    local why="exit status $rc"
    ((rc == 124 || rc == 137)) && why="timed out after $limit s"
    echo "$BENCH_NAME: error: $name failed ($why): $*" >&2
    tail -n 5 "$out" >&2
    tail -n 20 "$out.err" >&2
    exit 1
  fi
  local key="${BENCH_KEY:-samples_per_second}"  # the field every run must report
  json_field "$out" "$key" >/dev/null ||
    die "$name printed no JSON line with $key: $*"$'\n'"$(tail -n 5 "$out")"
}
