"""The sanitize stage's analysis: compute-sanitizer runs of a short training (memcheck must run
and be clean; racecheck and synccheck run while time allows and must be clean when they do).

The stage writes one TSV line per planned run: TOOL MODEL RC LOG, or TOOL MODEL - REASON when it
did not run."""
import re

from gpu_check.procs import TIMED_OUT, read_text

RANK = {"PASS": 0, "TIMEOUT": 1, "FAIL": 2}
# memcheck/synccheck end with "ERROR SUMMARY: N errors", racecheck with
# "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)".
SUMMARY_RE = re.compile(r"ERROR SUMMARY: (\d+) error|RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?")
FIRST_WORDS = ("Invalid", "Race", "race", "Barrier", "barrier", "Error", "error")


def worse(a, b):
    return a if RANK[a] >= RANK[b] else b


def read_plan(tsv_text):
    """[(tool, model, rc or None, log path or why it did not run)] from the stage's TSV."""
    runs = []
    for line in tsv_text.splitlines():
        if line:
            tool, model, rc, path = line.split("\t")
            runs.append((tool, model, None if rc == "-" else int(rc), path))
    return runs


def error_count(text):
    """The error count of the sanitizer's last summary line, or None when there is none."""
    m = SUMMARY_RE.findall(text)
    return int(next(g for g in m[-1] if g)) if m else None


def first_report(text):
    """The sanitizer's first line that names an error or a hazard."""
    return next((l.strip() for l in text.splitlines()
                 if l.startswith("========= ") and any(w in l for w in FIRST_WORDS)), "")


def judge(tool, rc, text):
    """(status, errors, result) for one run that ran: status is the worst it makes the stage."""
    errors = error_count(text)
    app_err = [l.strip() for l in text.splitlines() if l.startswith("ringflow: error")]
    if errors:
        return "FAIL", errors, "%d error(s): %s" % (errors, first_report(text)[:160])
    if rc in TIMED_OUT:  # only memcheck must finish; racecheck on cuDNN kernels is slow
        return ("TIMEOUT" if tool == "memcheck" else "PASS"), errors, "timed out"
    if app_err:
        return "FAIL", errors, "training failed: " + app_err[-1][:160]
    if errors is None:
        lines = [l.strip() for l in text.splitlines() if l.strip()] or ["no output"]
        return "FAIL", errors, "no sanitizer summary: " + lines[-1][:160]
    if rc != 0:
        return "FAIL", errors, "clean, but exit status %d" % rc
    return "PASS", errors, "clean"


def sanitize_result(runs, version, read=read_text):
    """The stage's result from read_plan()'s runs and the sanitizer's version line."""
    status, parts, out = "PASS", [], []
    for tool, model, rc, path in runs:
        r = {"tool": tool, "model": model}
        if rc is None:
            r["result"] = path
            parts.append("%s/%s not run" % (tool, model))
            if tool == "memcheck":  # the one that must run
                status = worse("TIMEOUT", status)
            out.append(r)
            continue
        st, errors, res = judge(tool, rc, read(path))
        r.update({"exit": rc, "errors": errors, "result": res})
        status = worse(st, status)
        parts.append("%s/%s " % (tool, model) + ("clean" if res == "clean" else
                                                  ("%d errors" % errors if errors else res[:100])))
        out.append(r)
    return {"status": status, "summary": "; ".join(parts), "version": version, "runs": out}
