"""The bench stage's analysis: the per-(model, batch) JSON lines of bench/gpu_vs_torch.sh --json,
its one-line summary, and the table report.txt prints under the stage table."""
import json

from gpu_check.procs import read_text


def read_rows(path):
    return [json.loads(l) for l in read_text(path).splitlines() if l.strip()]


def ratio(v):
    return "n/a" if v is None else "%.2fx" % v


def row_summary(r):
    """One row: steady state first (PyTorch is timed after its warm-up too); "whole run" counts
    ringflow's start (data upload, cuDNN plans) and warm-up steps against it."""
    s = "%s/%s: %s eager, %s compile steady; whole run %s/%s" % (
        r["model"], r["batch"], ratio(r.get("ratio_eager_steady")), ratio(r.get("ratio_compile_steady")),
        ratio(r.get("ratio_eager")), ratio(r.get("ratio_compile")))
    if "no_graph_ratio_eager_steady" in r:
        s += " (--cuda-graph off: %s eager steady)" % ratio(r.get("no_graph_ratio_eager_steady"))
    if "ringflow_graph_kernels" in r:  # what one replayed step launches, fused and not
        s += "; %s kernels/step" % r["ringflow_graph_kernels"]
        if "ringflow_unfused_graph_kernels" in r:
            s += " (%s unfused)" % r["ringflow_unfused_graph_kernels"]
    return s


def bench_result(rows, rc):
    """The stage's result from the JSON rows and gpu_vs_torch.sh's exit status."""
    summary = "ringflow/torch " + "; ".join(row_summary(r) for r in rows) if rows else "no results"
    if rc:
        notes = sorted({n for r in rows for n in r.get("notes", []) if n.startswith("ringflow")})
        summary += " (gpu_vs_torch exit %d" % rc + (": %s" % notes[0][:120] if notes else "") + ")"
    return {"status": "PASS" if rc == 0 and rows else "FAIL", "summary": summary, "rows": rows}


TABLE_HEAD = [
    "bench (samples/s; ratio = ringflow / torch; st/eager: ringflow's steady state / eager;",
    "       no-graph: steady state with --cuda-graph off; graph: steady / no-graph;",
    "       fuse: steady state with epilogue fusion / --fuse-epilogues off):",
    "  %-5s %5s %10s %10s %10s %10s %10s %8s %8s %8s %6s %6s" % (
        "model", "batch", "ringflow", "steady", "no-graph", "eager", "compile",
        "rf/eager", "rf/comp", "st/eager", "graph", "fuse")]


def _num(v, fmt="%.0f"):
    return "n/a" if v is None else fmt % v


def _opt(r, key, fmt):
    """A column that only some builds have: '-' when the row lacks it."""
    return _num(r.get(key), fmt) if key in r else "-"


def table_row(r):
    return "  %-5s %5s %10s %10s %10s %10s %10s %8s %8s %8s %6s %6s" % (
        r["model"], r["batch"], _num(r.get("ringflow_sps")), _num(r.get("ringflow_steady_sps")),
        _opt(r, "ringflow_no_graph_steady_sps", "%.0f"), _num(r.get("torch_eager_sps")),
        _num(r.get("torch_compile_sps")), _num(r.get("ratio_eager"), "%.3f"),
        _num(r.get("ratio_compile"), "%.3f"), _num(r.get("ratio_eager_steady"), "%.3f"),
        _opt(r, "graph_over_no_graph_steady", "%.3f"), _opt(r, "fused_over_unfused_steady", "%.3f"))


def table_lines(rows):
    """The bench table under the stage table (nothing without rows)."""
    return ["", *TABLE_HEAD, *[table_row(r) for r in rows]] if rows else []
