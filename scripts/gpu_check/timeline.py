"""The profile stage's analysis: where a CNN step spends its device time, from a blocking
`ringflow train --timeline` Chrome trace (lane pid 0 / tid 0: the ops; tid 2: the host's
Session::run per step, named "step"), and bench/epilogue_micro's JSON lines."""
import collections
import json

from gpu_check.procs import read_text

WARMUP_STEPS = 10  # steps left out of the per-op sums (the first carries one-time costs)
TOP = 6


def load_events(path):
    """The trace's events (a {"traceEvents": [...]} object or a bare list); raises OSError or
    ValueError when there is no readable trace."""
    with open(path) as fh:
        ev = json.load(fh)
    return ev["traceEvents"] if isinstance(ev, dict) else ev


def lane(ev, tid, name=None):
    """The complete ("X") events of pid 0's lane tid (only those called name, if given), by start."""
    return sorted((e for e in ev if e.get("ph") == "X" and e.get("pid") == 0 and e.get("tid") == tid
                   and (name is None or e.get("name") == name)), key=lambda e: e["ts"])


def split_steps(ops):
    """The ops cut into steps: a step starts where the first op of the first step comes again."""
    first = ops[0]["name"] if ops else None
    steps, cur = [], []
    for e in ops:
        if e["name"] == first and cur:
            steps.append(cur)
            cur = []
        cur.append(e)
    steps.append(cur)
    return steps


def per_op(steps):
    """Microseconds per op type (the event's category, else its name) summed over the steps."""
    per = collections.Counter()
    for s in steps:
        for e in s:
            per[e.get("cat", e["name"])] += e["dur"]
    return per


def ops_summary(per, n_steps, batch):
    total = sum(per.values())
    return "CNN batch %s, %.2f ms of ops per step: " % (batch, total / n_steps / 1000) + ", ".join(
        "%s %.0f%%" % (k, 100 * v / total) for k, v in per.most_common(TOP))


def host_steps(runs):
    """The first step's host time, steps 2-10 together and the median later step, in ms ({}
    without more than 10 steps): the first carries the plan, the cuDNN/cuBLAS/cuBLASLt handles and
    algorithm choices and the first kernel loads that lower the bench's whole-run figure."""
    if len(runs) <= WARMUP_STEPS:
        return {}
    later = sorted(runs[WARMUP_STEPS:])
    return {"first_step_ms": runs[0] / 1000, "steps_2_10_ms": sum(runs[1:WARMUP_STEPS]) / 1000,
            "median_later_ms": later[len(later) // 2] / 1000}


def host_summary(h):
    return "; first step %.0f ms, steps 2-10 %.0f ms, later %.2f ms each (traced)" % (
        h["first_step_ms"], h["steps_2_10_ms"], h["median_later_ms"])


def micro_rows(text):
    """bench/epilogue_micro's JSON result lines."""
    rows = []
    for line in text.splitlines():
        if line.startswith('{"bench":"epilogue_micro"'):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows


def micro_row(r):
    """Per layer, in a graph: cuBLASLt epilogue us (kernels) / gemm + bias kernel us (kernels)."""
    if r["cublaslt_taken"]:
        s = "%s/%s %.1f/%.1f (%g/%g)" % (r["layer"], r["m"], r["graph_lt_us"], r["graph_gemm_bias_us"],
                                         r["graph_lt_kernels"], r["graph_gemm_bias_kernels"])
    else:
        s = "%s/%s cuBLASLt not taken" % (r["layer"], r["m"])
    return s + (" WRONG" if r["wrong"] else "")


def micro_summary(rows):
    if not rows:
        return ""
    return "; epilogue_micro graph us, cuBLASLt/gemm+bias (kernels): " + ", ".join(micro_row(r) for r in rows)


def profile_result(trace_path, rc, batch, micro_log):
    """The stage's result from the trace, ringflow's exit status and epilogue_micro's log."""
    try:
        ev = load_events(trace_path)
    except (OSError, ValueError) as e:
        return {"status": "FAIL", "summary": "ringflow exit %d, no trace (%s)" % (rc, e)}
    steps = split_steps(lane(ev, 0))[WARMUP_STEPS:]
    per = per_op(steps)
    if not steps or sum(per.values()) == 0:
        return {"status": "FAIL", "summary": "ringflow exit %d, %d steps in the trace" % (rc, len(steps))}
    h = host_steps([e["dur"] for e in lane(ev, 2, "step")])
    rows = micro_rows(read_text(micro_log))
    summary = ops_summary(per, len(steps), batch) + (host_summary(h) if h else "") + micro_summary(rows)
    out = {"status": "PASS" if rc == 0 else "FAIL", "summary": summary}
    out.update(h)
    out["epilogue_micro"] = rows
    out["per_op_us_per_step"] = {k: v / len(steps) for k, v in per.most_common()}
    return out
