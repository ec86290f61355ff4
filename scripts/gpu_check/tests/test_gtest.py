"""The tests stage's verdict on small synthetic gtest XML reports."""
from gpu_check import gtest
from gpu_check.tests.util import TempDirCase

ALLOWED = "CUDA device is present"


def case(name, kind="pass", msg=""):
    cls, n = name.split(".")
    body = {"pass": "", "fail": '<failure message="boom"/>',
            "skip": '<skipped message="%s"/>' % msg, "notrun": ""}[kind]
    attrs = ' status="notrun"' if kind == "notrun" else ' status="run"' + (' result="skipped"' if kind == "skip" else "")
    return '<testcase name="%s" classname="%s"%s>%s</testcase>' % (n, cls, attrs, body)


def report(*cases):
    return '<?xml version="1.0"?><testsuites><testsuite name="s">%s</testsuite></testsuites>' % "".join(cases)


class TestsResultTest(TempDirCase):
    def result(self, cases, rc=0, dry=False, nccl_rc=gtest.NCCL_NOT_BUILT, nccl_cases=None, log=""):
        xml = self.write("cuda.xml", report(*cases)) if cases is not None else self.dir + "/none.xml"
        nccl = self.write("nccl.xml", report(*nccl_cases)) if nccl_cases is not None else self.dir + "/nonccl.xml"
        return gtest.tests_result(xml, rc, dry, ALLOWED, nccl, nccl_rc, log)

    def test_all_pass(self):
        r = self.result([case("CudaKernels.Unary"), case("FusedUpdate.X"), case("Cuda.Off", "notrun")])
        self.assertEqual(r["status"], "PASS")
        self.assertEqual(r["summary"], "2 passed, 0 failed, 0 skipped of 2; nccl tests not built")
        self.assertEqual((r["passed"], r["failed"], r["skipped"], r["total"]), (2, 0, 0, 2))

    def test_a_skip_on_a_gpu_machine_fails(self):
        r = self.result([case("CudaKernels.Unary"), case("CudaExec.MatchesCpu", "skip", "no CUDA device: x")])
        self.assertEqual(r["status"], "FAIL")
        self.assertEqual(r["summary"], "1 passed, 0 failed, 1 skipped of 2; nccl tests not built: skipped on a GPU "
                                       "machine, e.g. CudaExec.MatchesCpu (no CUDA device: x)")
        self.assertEqual(r["unexpected_skips"], ["CudaExec.MatchesCpu (no CUDA device: x)"])

    def test_the_same_skip_in_a_dry_run_passes(self):
        r = self.result([case("CudaKernels.Unary"), case("CudaExec.MatchesCpu", "skip", "no CUDA device: x")], dry=True)
        self.assertEqual(r["status"], "PASS")
        self.assertTrue(r["summary"].endswith("(dry run: no GPU, skips expected)"))
        self.assertEqual(r["unexpected_skips"], 1)  # a count in a dry run

    def test_skips_that_need_no_gpu_are_allowed(self):
        r = self.result([case("CudaKernels.Unary"),
                         case("Fallback.CpuOnly", "skip", "skipped: a CUDA device is present")])
        self.assertEqual(r["status"], "PASS")
        self.assertIn("1 skipped of 2; nccl tests not built (1 skip(s) expected with a GPU)", r["summary"])
        self.assertEqual(r["expected_skips"], 1)

    def test_failures_are_named(self):
        cases = [case("C.T%d" % i, "fail") for i in range(7)] + [case("C.ok")]
        r = self.result(cases, rc=1)
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("1 passed, 7 failed, 0 skipped of 8", r["summary"])
        self.assertIn(": failed C.T0, C.T1, C.T2, C.T3, C.T4, C.T5 ...", r["summary"])

    def test_a_crash_or_timeout_fails_even_when_all_passed(self):
        r = self.result([case("C.ok")], rc=124)
        self.assertEqual(r["status"], "FAIL")
        self.assertTrue(r["summary"].endswith("(exit 124: timed out)"))

    def test_no_report_or_no_tests(self):
        r = self.result(None, rc=139)
        self.assertEqual((r["status"], r["summary"]), ("FAIL", "no XML report (ringflow_tests exit 139)"))
        r = self.result([])
        self.assertEqual((r["status"], r["summary"]), ("FAIL", "no test matches " + gtest.FILTER))

    def test_nccl_tests(self):
        r = self.result([case("C.ok")], nccl_rc=0, nccl_cases=[case("Nccl.AllReduce")])
        self.assertEqual(r["summary"], "2 passed, 0 failed, 0 skipped of 2")
        r = self.result([case("C.ok")], nccl_rc=gtest.NO_DEVICE)
        self.assertEqual(r["status"], "FAIL")
        self.assertEqual(r["failed_tests"], ["ringflow_nccl_tests (skipped on a GPU machine)"])
        r = self.result([case("C.ok")], nccl_rc=gtest.NO_DEVICE, dry=True)
        self.assertEqual(r["status"], "PASS")
        self.assertIn("; nccl tests: no device (skipped)", r["summary"])
        r = self.result([case("C.ok")], nccl_rc=134)
        self.assertEqual(r["failed_tests"], ["ringflow_nccl_tests (exit 134, no XML report)"])
        r = self.result([case("C.ok")], nccl_rc=134, nccl_cases=[case("Nccl.A")])
        self.assertEqual(r["failed_tests"], ["ringflow_nccl_tests (exit 134)"])

    def test_cublaslt_lines_are_reported(self):
        log = "[ RUN      ] FusionCuda.X\n[ cuBLASLt ] f32: 48 of 48 took the epilogue\n[ cuBLASLt ] f64: 48 of 48\n"
        r = self.result([case("FusionCuda.X")], log=log)
        self.assertTrue(r["summary"].endswith("; cuBLASLt epilogue: f32: 48 of 48 took the epilogue; f64: 48 of 48"))

    def test_progress_lines(self):
        log = "[ RUN      ] A.b\n[  SKIPPED ] A.b (0 ms)\n[  PASSED  ] 3 tests.\nnoise\n[==========] 4 tests ran.\n"
        self.assertEqual(gtest.progress_lines(log), ["[  SKIPPED ] A.b (0 ms)", "[  PASSED  ] 3 tests.",
                                                     "[==========] 4 tests ran."])
