"""The report: each stage's NAME.result.json in the work folder -> report.txt (the table on
stdout), report.json, and a copy of both plus logs.tar.gz in $OUT."""
import json
import os
import shutil
import socket
import tarfile
import time

from gpu_check import bench
from gpu_check.procs import read_text, tail

PASSING = ("PASS", "SKIP")


def result_path(work, stage):
    return os.path.join(work, stage + ".result.json")


def write_json(path, obj, indent=None):
    """obj to path, through a temporary file (a reader never sees half of it)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=indent)
    os.replace(tmp, path)


def stage_outcome(path, rc, secs, log_path):
    """A finished stage's result: its result file with the seconds it took, or, when it wrote
    none, TIMEOUT (exit 124/137) or FAIL with the last line of its log."""
    if os.path.exists(path):
        with open(path) as fh:
            r = json.load(fh)
    else:
        lines = [l.strip() for l in read_text(log_path).splitlines() if l.strip()][-1:]
        timed_out = rc in (124, 137)
        r = {"status": "TIMEOUT" if timed_out else "FAIL",
             "summary": ("timed out" if timed_out else "stage exited %d without a result" % rc) +
                        (": %s" % lines[0][:200] if lines else "")}
    r["seconds"] = secs
    return r


def passed(r):
    return r["status"] in PASSING


def stage_entry(work, name, selected, final):
    """A stage's line in the report: its result, else pending (FAIL "did not run" in the final
    report), or SKIP when --only/--skip left it out."""
    p = result_path(work, name)
    if os.path.exists(p):
        with open(p) as fh:
            r = json.load(fh)
    elif name in selected:
        r = {"status": "FAIL" if final else "PENDING", "summary": "did not run" if final else "not run yet"}
    else:
        r = {"status": "SKIP", "summary": "not selected (--only/--skip)"}
    r["stage"] = name
    return r


def build_report(meta, stages, total):
    """report.json's object. meta: dry_run, gpu, nvcc, torch, data, deps, budget_seconds."""
    ok = all(passed(s) for s in stages)
    return {"report": "ringflow gpu_check", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(), "dry_run": meta["dry_run"], "gpu": meta["gpu"],
            "nvcc": meta["nvcc"], "torch": meta["torch"], "data": meta["data"], "deps": meta["deps"],
            "budget_seconds": int(meta["budget_seconds"]), "total_seconds": int(total), "ok": ok,
            "stages": stages}


def stage_row(s):
    secs = s.get("seconds")
    return "%-9s %-8s %5s  %s" % (s["stage"], s["status"], "" if secs is None else secs, s.get("summary", ""))


def report_text(rep):
    """report.txt: a headline, the tools and data, the stage table, the bench table."""
    lines = ["ringflow gpu_check%s: %s in %d s on %s" % (
                 " (DRY RUN, no GPU)" if rep["dry_run"] else "", "OK" if rep["ok"] else "FAILED",
                 rep["total_seconds"], rep["gpu"]),
             "nvcc %s, torch %s, data %s, deps %s" % (rep["nvcc"], rep["torch"], rep["data"], rep["deps"]), "",
             "%-9s %-8s %5s  key numbers" % ("stage", "result", "secs")]
    lines += [stage_row(s) for s in rep["stages"]]
    b = next((s for s in rep["stages"] if s["stage"] == "bench"), {})
    lines += bench.table_lines(b.get("rows") or [])
    return "\n".join(lines) + "\n"


def write_report(work, meta, all_stages, selected, total, final):
    """Writes report.txt and report.json into work; returns (ok, text)."""
    stages = [stage_entry(work, n, selected, final) for n in all_stages]
    rep = build_report(meta, stages, total)
    text = report_text(rep)
    with open(os.path.join(work, "report.txt"), "w") as fh:
        fh.write(text)
    write_json(os.path.join(work, "report.json"), rep, indent=1)
    return rep["ok"], text


def _not_report(info):
    base = os.path.basename(info.name)
    return None if base.startswith("report.") or ".tar.gz" in base else info


def export(work, out):
    """Copies report.txt and report.json to out, and the logs (all but those) as logs.tar.gz."""
    for f in ("report.txt", "report.json"):
        try:
            shutil.copyfile(os.path.join(work, f), os.path.join(out, f))
        except OSError:
            pass
    tmp = os.path.join(out, "logs.tar.gz.tmp")
    try:
        with tarfile.open(tmp, "w:gz") as tf:
            tf.add(work, arcname=".", filter=_not_report)
        os.replace(tmp, os.path.join(out, "logs.tar.gz"))
    except (OSError, tarfile.TarError):
        if os.path.exists(tmp):
            os.remove(tmp)


def log_tail(log_path, n=15):
    """The last lines of a stage's log, indented, for stderr after a stage that did not pass."""
    return "".join("    " + l + "\n" for l in tail(read_text(log_path), n).splitlines())
