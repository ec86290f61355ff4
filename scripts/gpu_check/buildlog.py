"""The build stage's analysis: the first error of a cmake/compiler log, what the configure step
found (NCCL, MPI), and the stage's result from the exit statuses of its cmake runs."""
import re

from gpu_check.procs import TIMED_OUT

ERROR_RE = re.compile(r"CMake Error|error:|Error:|FAILED:|[Ee]rror [0-9]")


def _lines(text):
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n")


def first_error(text):
    """The first line of a log that looks like an error and the two non-blank lines after it, on
    one line with runs of spaces squeezed; else the log's last line; at most 300 characters."""
    picked, on = [], False
    for line in _lines(text):
        on = on or bool(ERROR_RE.search(line))
        if on and line.split():
            picked.append(line)
            if len(picked) == 3:
                break
    s = re.sub(" +", " ", "".join(line + " " for line in picked))
    if not s:
        s = _lines(text)[-1] if text else ""
    return s[:300]


def nccl_found(configure_log):
    """"ON" when the configure step turned the NCCL backend on, else "OFF"."""
    return "ON" if "nccl collective backend on" in configure_log else "OFF"


def cache_value(cache_text, name):
    """The value of NAME:TYPE=VALUE in a CMakeCache.txt ("" when absent)."""
    for line in cache_text.splitlines():
        if line.startswith(name + ":"):
            return line.split("=")[1] if "=" in line else line
    return ""


def configure_failed(rc, seconds, configure_log):
    return {"status": "FAIL", "summary": "cmake configure failed (exit %d): %s" % (rc, first_error(configure_log)),
            "configure_seconds": seconds}


def build_result(rc_rf, rc_tests, t0, t1, t2, jobs, mpi, nccl, compile_log, tests_log):
    """The stage's result: rc_rf / rc_tests are the exit statuses of building ringflow and
    ringflow_tests, t0/t1/t2 the times configure started, build started, everything ended."""
    mpi = mpi or "?"
    total = t2 - t0
    r = {"status": "PASS", "summary": "",
         "configure_seconds": t1 - t0, "compile_seconds": t2 - t1, "build_seconds": total,
         "jobs": jobs, "mpi": mpi, "nccl": nccl}
    if rc_rf in TIMED_OUT or rc_tests in TIMED_OUT:
        r["status"], r["summary"] = "TIMEOUT", "build timed out after %d s" % total
    elif rc_rf:
        r["status"] = "FAIL"
        r["summary"] = "ringflow failed to build (exit %d) after %d s: %s" % (rc_rf, total, first_error(compile_log))
    elif rc_tests:
        r["status"] = "FAIL"
        r["summary"] = "ringflow built, ringflow_tests failed (exit %d) after %d s: %s" % (
            rc_tests, total, first_error(tests_log))
    else:
        r["summary"] = "built in %d s (configure %d s, -j%s, MPI %s, NCCL %s)" % (total, t1 - t0, jobs, mpi, nccl)
    return r
