"""report.txt / report.json as the bash script wrote them, a stage's fallback result, and $OUT."""
import json
import os
import shutil
import tarfile
import tempfile

from gpu_check import report
from gpu_check.tests.util import TempDirCase

ROWS = [{"model": "mlp", "batch": 64, "ringflow_sps": 120345.6, "ringflow_steady_sps": 130000.4,
         "ringflow_no_graph_steady_sps": 50000.0, "torch_eager_sps": 14000.0, "torch_compile_sps": None,
         "ratio_eager": 8.596, "ratio_compile": None, "ratio_eager_steady": 9.2857, "graph_over_no_graph_steady": 2.6},
        {"model": "cnn", "batch": 512, "ringflow_sps": 193.57, "ringflow_steady_sps": 311.56, "torch_eager_sps": 100.0,
         "torch_compile_sps": 120.0, "ratio_eager": 1.9357, "ratio_compile": 1.613, "ratio_eager_steady": 3.1156,
         "fused_over_unfused_steady": 1.07}]
RESULTS = {
    "build": {"status": "PASS", "summary": "built in 60 s (configure 10 s, -j16, MPI ON, NCCL ON)", "seconds": 61},
    "tests": {"status": "FAIL", "summary": "55 passed, 0 failed, 1 skipped of 56: skipped on a GPU machine, e.g. X.y (z)",
              "seconds": 40},
    "bench": {"status": "PASS", "summary": "ringflow/torch mlp/64: 9.29x eager", "seconds": 200, "rows": ROWS},
    "profile": {"status": "TIMEOUT", "summary": "timed out: last line", "seconds": 60},
}
META = {"dry_run": False, "gpu": "NVIDIA H200, 570.1, 143771 MiB", "nvcc": "release 13.0", "torch": "2.11.0",
        "data": "data/fashion-mnist", "deps": "system; cuDNN: system", "budget_seconds": 540}
STAGES = ("build", "tests", "diff", "sanitize", "bench", "profile")
SELECTED = ["build", "tests", "diff", "bench", "profile"]
# What the bash script's write_report printed for the same results (generated with it).
GOLDEN = """\
ringflow gpu_check: FAILED in 123 s on NVIDIA H200, 570.1, 143771 MiB
nvcc release 13.0, torch 2.11.0, data data/fashion-mnist, deps system; cuDNN: system

stage     result    secs  key numbers
build     PASS        61  built in 60 s (configure 10 s, -j16, MPI ON, NCCL ON)
tests     FAIL        40  55 passed, 0 failed, 1 skipped of 56: skipped on a GPU machine, e.g. X.y (z)
diff      FAIL            did not run
sanitize  SKIP            not selected (--only/--skip)
bench     PASS       200  ringflow/torch mlp/64: 9.29x eager
profile   TIMEOUT     60  timed out: last line

bench (samples/s; ratio = ringflow / torch; st/eager: ringflow's steady state / eager;
       no-graph: steady state with --cuda-graph off; graph: steady / no-graph;
       fuse: steady state with epilogue fusion / --fuse-epilogues off):
  model batch   ringflow     steady   no-graph      eager    compile rf/eager  rf/comp st/eager  graph   fuse
  mlp      64     120346     130000      50000      14000        n/a    8.596      n/a    9.286  2.600      -
  cnn     512        194        312          -        100        120    1.936    1.613    3.116      -  1.070
"""


class ReportTest(TempDirCase):
    def setUp(self):
        TempDirCase.setUp(self)
        for name, r in RESULTS.items():
            self.write(name + ".result.json", json.dumps(r))

    def test_text_as_before(self):
        ok, text = report.write_report(self.dir, META, STAGES, SELECTED, 123, True)
        self.assertFalse(ok)
        self.assertEqual(text, GOLDEN)
        with open(os.path.join(self.dir, "report.txt")) as fh:
            self.assertEqual(fh.read(), GOLDEN)

    def test_json_as_before(self):
        report.write_report(self.dir, META, STAGES, SELECTED, 123, True)
        with open(os.path.join(self.dir, "report.json")) as fh:
            rep = json.load(fh)
        self.assertEqual(list(rep), ["report", "time", "host", "dry_run", "gpu", "nvcc", "torch", "data", "deps",
                                     "budget_seconds", "total_seconds", "ok", "stages"])
        self.assertEqual((rep["report"], rep["ok"], rep["total_seconds"], rep["budget_seconds"]),
                         ("ringflow gpu_check", False, 123, 540))
        self.assertEqual([(s["stage"], s["status"]) for s in rep["stages"]],
                         [("build", "PASS"), ("tests", "FAIL"), ("diff", "FAIL"), ("sanitize", "SKIP"),
                          ("bench", "PASS"), ("profile", "TIMEOUT")])
        self.assertEqual(list(rep["stages"][0]), ["status", "summary", "seconds", "stage"])

    def test_progress_report_and_dry_run_headline(self):
        meta = dict(META, dry_run=True, gpu="none (dry run)")
        ok, text = report.write_report(self.dir, meta, STAGES, SELECTED, 5, False)
        self.assertTrue(text.startswith("ringflow gpu_check (DRY RUN, no GPU): FAILED in 5 s on none (dry run)\n"))
        self.assertIn("\ndiff      PENDING         not run yet\n", text)

    def test_ok_when_everything_passed_or_was_skipped(self):
        for name in ("tests", "profile"):
            os.remove(os.path.join(self.dir, name + ".result.json"))
        ok, text = report.write_report(self.dir, META, STAGES, ["build", "bench"], 9, True)
        self.assertTrue(ok)
        self.assertTrue(text.startswith("ringflow gpu_check: OK in 9 s"))

    def test_stage_outcome(self):
        log = self.write("x.log", "starting\nlast words\n\n")
        r = report.stage_outcome(self.dir + "/x.result.json", 124, 90, log)
        self.assertEqual(r, {"status": "TIMEOUT", "summary": "timed out: last words", "seconds": 90})
        r = report.stage_outcome(self.dir + "/x.result.json", 1, 3, self.dir + "/missing.log")
        self.assertEqual(r, {"status": "FAIL", "summary": "stage exited 1 without a result", "seconds": 3})
        r = report.stage_outcome(os.path.join(self.dir, "build.result.json"), 0, 7, log)
        self.assertEqual((r["status"], r["seconds"]), ("PASS", 7))

    def test_export(self):
        report.write_report(self.dir, META, STAGES, SELECTED, 1, True)
        self.write("bench.log", "bench output\n")
        self.write("old.tar.gz", "x")
        out = tempfile.mkdtemp(prefix="gpu_check_out_")
        self.addCleanup(shutil.rmtree, out, True)
        report.export(self.dir, out)
        self.assertEqual(sorted(os.listdir(out)), ["logs.tar.gz", "report.json", "report.txt"])
        with tarfile.open(os.path.join(out, "logs.tar.gz")) as tf:
            names = {os.path.basename(n) for n in tf.getnames()}
        self.assertIn("bench.log", names)
        self.assertIn("tests.result.json", names)
        self.assertFalse({"report.txt", "report.json", "old.tar.gz", "logs.tar.gz"} & names)

    def test_log_tail(self):
        log = self.write("s.log", "".join("line %d\n" % i for i in range(20)) + "no newline")
        t = report.log_tail(log, 3)
        self.assertEqual(t, "    line 18\n    line 19\n    no newline\n")
