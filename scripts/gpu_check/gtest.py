"""The tests stage's analysis: gtest XML reports of ringflow_tests (the CUDA filter) and
ringflow_nccl_tests, and the cuBLASLt lines of the log. On a GPU machine a skipped test fails the
stage, except skips whose message matches the allowed pattern ("a CUDA device is present")."""
import re
import xml.etree.ElementTree as ET

from gpu_check.procs import TIMED_OUT

FILTER = "*Cuda*:FusedUpdate.*:TrainInput.*"
PROGRESS_RE = re.compile(r"^\[ *(FAILED|SKIPPED|PASSED) *\]|tests? ran")
NCCL_NOT_BUILT = -1  # the nccl tests' exit status when there is no binary
NO_DEVICE = 77       # ringflow_nccl_tests' exit status when it found no device (skipped)


def progress_lines(log_text, limit=60):
    """The log's FAILED/SKIPPED/PASSED and "N tests ran" lines (what the stage's log shows)."""
    return [l for l in log_text.splitlines() if PROGRESS_RE.search(l)][:limit]


def cublaslt_lines(log_text):
    """What the FusionCuda tests say cuBLASLt's epilogue took ("[ cuBLASLt ] f64: 48 of 48 ...")."""
    return [l.split("]", 1)[1].strip() for l in log_text.splitlines() if l.startswith("[ cuBLASLt ]")]


def read_cases(xml_path):
    """The <testcase> elements of a gtest XML report, or None when it is missing or unreadable."""
    try:
        return list(ET.parse(xml_path).getroot().iter("testcase"))
    except (OSError, ET.ParseError):
        return None


def skip_message(tc):
    sk = tc.find("skipped")
    return " ".join(((sk.get("message") if sk is not None else "") or "").split())


def classify(cases, allowed):
    """(passed, failed, bad_skips, ok_skips): names of the tests that ran ("notrun" ones are left
    out); a skip is ok when its message matches the regex `allowed` (empty: none is)."""
    passed, failed, bad, ok = [], [], [], []
    for tc in cases:
        name = "%s.%s" % (tc.get("classname"), tc.get("name"))
        if tc.get("status") == "notrun":
            continue
        if tc.find("failure") is not None or tc.find("error") is not None:
            failed.append(name)
        elif tc.get("result") == "skipped" or tc.find("skipped") is not None:
            msg = skip_message(tc)
            (ok if (allowed and re.search(allowed, msg)) else bad).append("%s (%s)" % (name, msg[-120:]))
        else:
            passed.append(name)
    return passed, failed, bad, ok


def nccl_cases(nccl_rc, nccl_xml, dry):
    """(cases, failed, note) for ringflow_nccl_tests at world size 1."""
    if nccl_rc == NCCL_NOT_BUILT:
        return [], [], "; nccl tests not built"
    if nccl_rc == NO_DEVICE:
        return [], ([] if dry else ["ringflow_nccl_tests (skipped on a GPU machine)"]), "; nccl tests: no device (skipped)"
    cases = read_cases(nccl_xml)
    if cases is None:
        return [], ["ringflow_nccl_tests (exit %d, no XML report)" % nccl_rc], ""
    if nccl_rc not in (0, 1):
        return cases, ["ringflow_nccl_tests (exit %d)" % nccl_rc], ""
    return cases, [], ""


def verdict(passed, failed, bad, ok, rc, dry, note, lt):
    """(status, summary) from the classified tests, ringflow_tests' exit status rc and the cuBLASLt lines."""
    total = len(passed) + len(failed) + len(bad) + len(ok)
    summary = "%d passed, %d failed, %d skipped of %d%s" % (len(passed), len(failed), len(bad) + len(ok), total, note)
    if ok:
        summary += " (%d skip(s) expected with a GPU)" % len(ok)
    if failed or rc not in (0, 1):
        status = "FAIL"
    elif bad and not dry:
        status, summary = "FAIL", summary + ": skipped on a GPU machine, e.g. " + bad[0][:160]
    else:
        status = "PASS"
    if dry and bad:
        summary += " (dry run: no GPU, skips expected)"
    if failed:
        summary += ": failed " + ", ".join(failed[:6]) + (" ..." if len(failed) > 6 else "")
    if rc not in (0, 1):
        summary += " (exit %d%s)" % (rc, ": timed out" if rc in TIMED_OUT else "")
    if lt:
        summary += "; cuBLASLt epilogue: " + "; ".join(lt)
    return status, summary


def tests_result(xml_path, rc, dry, allowed, nccl_xml, nccl_rc, log_text):
    """The tests stage's result: ringflow_tests' report and exit status rc, the nccl tests' report
    and exit status (NCCL_NOT_BUILT when absent), and ringflow_tests' log."""
    cases = read_cases(xml_path)
    more, nccl_failed, note = nccl_cases(nccl_rc, nccl_xml, dry)
    passed, failed, bad, ok = classify((cases or []) + more, allowed)
    failed = nccl_failed + failed
    total = len(passed) + len(failed) + len(bad) + len(ok)
    if cases is None:
        status, summary = "FAIL", "no XML report (ringflow_tests exit %d)" % rc
    elif total == 0:
        status, summary = "FAIL", "no test matches " + FILTER
    else:
        status, summary = verdict(passed, failed, bad, ok, rc, dry, note, cublaslt_lines(log_text))
    return {"status": status, "summary": summary, "passed": len(passed), "failed": len(failed),
            "skipped": len(bad) + len(ok), "expected_skips": len(ok), "total": total,
            "failed_tests": failed, "unexpected_skips": bad[:20] if not dry else len(bad)}
