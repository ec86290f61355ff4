"""scripts/gpu_check.sh end to end with stand-in binaries (fakes.py): the exit statuses, the
table on stdout, report.txt / report.json / logs.tar.gz in $OUT, the no-device line."""
import json
import os
import subprocess
import unittest

from gpu_check import driver
from gpu_check.tests import fakes
from gpu_check.tests.util import TempDirCase

SCRIPT = os.path.join(driver.ROOT, "scripts", "gpu_check.sh")


class DriverTest(TempDirCase):
    def setUp(self):
        TempDirCase.setUp(self)
        self.build = os.path.join(self.dir, "build")
        fakes.install(self.build)
        self.out = os.path.join(self.dir, "out")
        os.mkdir(self.out)
        os.mkdir(os.path.join(self.dir, "debs"))
        for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                  "t10k-labels-idx1-ubyte.gz"):
            self.write("data/" + f, "")

    def run_script(self, *args, **env):
        e = dict(os.environ, OUT=self.out, **env)
        e.pop("FAKE_DRIFT", None) if "FAKE_DRIFT" not in env else None
        return subprocess.run(["bash", SCRIPT, "--build-dir", self.build, "--deps-dir", os.path.join(self.dir, "debs"),
                               "--data-dir", os.path.join(self.dir, "data")] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, universal_newlines=True,
                              timeout=300)

    def report(self):
        with open(os.path.join(self.out, "report.json")) as fh:
            return json.load(fh)

    def test_dry_run_passes(self):
        p = self.run_script("--dry-run", "--skip-build", "--skip", "bench")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("ringflow gpu_check (DRY RUN, no GPU): OK in ", p.stdout)
        self.assertIn("\nstage     result    secs  key numbers\n", p.stdout)
        self.assertRegex(p.stdout, r"\ndiff      PASS +\d+  cpu\(1 thread\) vs cpu: mlp-f32: max rel diff 0\.00e\+00")
        rep = self.report()
        self.assertEqual([(s["stage"], s["status"]) for s in rep["stages"]],
                         [("build", "SKIP"), ("tests", "PASS"), ("diff", "PASS"), ("sanitize", "SKIP"),
                          ("bench", "SKIP"), ("profile", "PASS")])
        self.assertEqual(rep["stages"][4]["summary"], "not selected (--only/--skip)")
        self.assertTrue(rep["dry_run"])
        self.assertEqual(sorted(os.listdir(self.out)), ["logs.tar.gz", "report.json", "report.txt"])
        with open(os.path.join(self.build, "gpu_check", "report.txt")) as fh:
            self.assertEqual(fh.read(), p.stdout.lstrip("\n"))

    def test_a_failing_stage_exits_1(self):
        p = self.run_script("--dry-run", "--skip-build", "--only", "diff", FAKE_DRIFT="1e-4")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("ringflow gpu_check (DRY RUN, no GPU): FAILED", p.stdout)
        self.assertIn("[gpu_check] diff: last lines of diff.log:", p.stderr)
        self.assertEqual(self.report()["stages"][2]["status"], "FAIL")

    def test_no_time_left_skips(self):
        # tests would get 25 - 20 s (20 s are kept for diff, still to come): too little; diff gets 25 s.
        p = self.run_script("--dry-run", "--skip-build", "--only", "tests diff", "--budget", "25")
        self.assertEqual(p.returncode, 0, p.stderr)
        tests, diff = self.report()["stages"][1:3]
        self.assertEqual((tests["status"], tests["summary"], tests["seconds"]), ("SKIP", "no time left in the budget", 0))
        self.assertEqual(diff["status"], "PASS")

    def test_no_device(self):
        bin_dir = os.path.join(self.dir, "bin")
        self.write("bin/nvidia-smi", "#!/bin/sh\necho 'No devices were found'\nexit 6\n")
        os.chmod(os.path.join(bin_dir, "nvidia-smi"), 0o755)
        p = self.run_script(PATH=bin_dir + ":" + os.environ["PATH"])
        self.assertEqual(p.returncode, 3)
        self.assertEqual(p.stderr, "gpu_check: no CUDA device: nvidia-smi found no GPU (No devices were found) "
                                   "(scripts/gpu_check.sh --dry-run checks this script on the CPU)\n")
        self.assertEqual(os.listdir(self.out), [])

    def test_bad_arguments(self):
        p = self.run_script("--frobnicate")
        self.assertEqual(p.returncode, 2)
        self.assertTrue(p.stderr.startswith("gpu_check: unknown argument '--frobnicate'\nusage: scripts/gpu_check.sh"))


class ExitStatusTest(unittest.TestCase):
    def test_exit_status(self):
        self.assertEqual(driver.exit_status(True, 0), 0)
        self.assertEqual(driver.exit_status(False, 0), 1)
        self.assertEqual(driver.exit_status(False, 130), 130)
        self.assertEqual(driver.exit_status(True, 130), 0)
