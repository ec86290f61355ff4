"""The sanitize stage's verdict on synthetic compute-sanitizer logs."""
from gpu_check import sanitizer
from gpu_check.tests.util import TempDirCase

CLEAN = "========= COMPUTE-SANITIZER\nepoch 1\n========= ERROR SUMMARY: 0 errors\n"
DIRTY = ("========= COMPUTE-SANITIZER\n========= Invalid __global__ read of size 4 bytes\n"
         "=========     at bias_add+0x90\n========= ERROR SUMMARY: 3 errors\n")
RACE = "========= Race reported between Write access at k+0x10\n========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n"
RACE_CLEAN = "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"


class SanitizeTest(TempDirCase):
    def result(self, *runs):
        plan = []
        for i, (tool, model, rc, text) in enumerate(runs):
            if rc is None:
                plan.append("%s\t%s\t-\t%s" % (tool, model, text))
            else:
                plan.append("%s\t%s\t%d\t%s" % (tool, model, rc, self.write("s%d.log" % i, text)))
        return sanitizer.sanitize_result(sanitizer.read_plan("\n".join(plan) + "\n"), "Version 2025.1")

    def test_clean(self):
        r = self.result(("memcheck", "mlp", 0, CLEAN), ("racecheck", "mlp", 0, RACE_CLEAN))
        self.assertEqual(r["status"], "PASS")
        self.assertEqual(r["summary"], "memcheck/mlp clean; racecheck/mlp clean")
        self.assertEqual(r["runs"][0], {"tool": "memcheck", "model": "mlp", "exit": 0, "errors": 0, "result": "clean"})
        self.assertEqual(r["version"], "Version 2025.1")

    def test_errors_fail_and_name_the_first(self):
        r = self.result(("memcheck", "mlp", 0, CLEAN), ("memcheck", "cnn", 1, DIRTY))
        self.assertEqual(r["status"], "FAIL")
        self.assertEqual(r["summary"], "memcheck/mlp clean; memcheck/cnn 3 errors")
        self.assertEqual(r["runs"][1]["result"], "3 error(s): ========= Invalid __global__ read of size 4 bytes")

    def test_racecheck_summary(self):
        r = self.result(("racecheck", "cnn", 0, RACE))
        self.assertEqual((r["status"], r["runs"][0]["errors"]), ("FAIL", 2))

    def test_only_memcheck_must_finish(self):
        self.assertEqual(self.result(("memcheck", "mlp", 0, CLEAN), ("racecheck", "cnn", 124, "partial\n"))["status"], "PASS")
        r = self.result(("memcheck", "mlp", 137, "partial\n"))
        self.assertEqual((r["status"], r["summary"]), ("TIMEOUT", "memcheck/mlp timed out"))
        r = self.result(("memcheck", "mlp", 0, CLEAN), ("memcheck", "cnn", None, "not run: no time left"))
        self.assertEqual((r["status"], r["summary"]), ("TIMEOUT", "memcheck/mlp clean; memcheck/cnn not run"))
        r = self.result(("memcheck", "mlp", 0, CLEAN), ("synccheck", "cnn", None, "not run: no time left"))
        self.assertEqual(r["status"], "PASS")
        self.assertEqual(self.result(("memcheck", "mlp", 124, ""), ("memcheck", "cnn", 0, DIRTY))["status"], "FAIL")

    def test_training_failures_and_missing_summaries(self):
        r = self.result(("memcheck", "mlp", 1, "ringflow: error: out of memory\n========= ERROR SUMMARY: 0 errors\n"))
        self.assertEqual((r["status"], r["summary"]), ("FAIL", "memcheck/mlp training failed: ringflow: error: out of memory"))
        r = self.result(("memcheck", "mlp", 0, "something else\n"))
        self.assertEqual(r["summary"], "memcheck/mlp no sanitizer summary: something else")
        r = self.result(("memcheck", "mlp", 3, CLEAN))
        self.assertEqual((r["status"], r["summary"]), ("FAIL", "memcheck/mlp clean, but exit status 3"))
