"""The command line, stage selection and per-stage time limits."""
import os
import unittest

from gpu_check import options

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "gpu_check.sh")


class ParseTest(unittest.TestCase):
    def test_defaults(self):
        o = options.parse([])
        self.assertEqual((o.dry, o.skip_build, o.data_dir, o.budget, o.only, o.skip, o.build_dir, o.deps_dir,
                          o.train_args), (False, False, "", 540, "", "", "build", "data/debs", ""))

    def test_every_option(self):
        o = options.parse(["--dry-run", "--skip-build", "--data-dir", "d", "--budget", "300", "--only", "diff bench",
                           "--skip", "bench", "--build-dir", "b", "--deps-dir", "x", "--train-args", "--fuse-epilogues off"])
        self.assertEqual((o.dry, o.skip_build, o.data_dir, o.budget, o.only, o.skip, o.build_dir, o.deps_dir,
                          o.train_args), (True, True, "d", 300, "diff bench", "bench", "b", "x", "--fuse-epilogues off"))

    def test_errors(self):
        for argv, msg, show in ((["--bogus"], "gpu_check: unknown argument '--bogus'", True),
                                (["--budget"], "", True), (["-h"], "", True),
                                (["--budget", "0"], "gpu_check: --budget must be a positive integer", False),
                                (["--budget", "1e3"], "gpu_check: --budget must be a positive integer", False),
                                (["--only", "diff gpu"], "gpu_check: unknown stage 'gpu' (build tests diff sanitize "
                                                         "bench profile)", False)):
            with self.assertRaises(options.UsageError) as cm:
                options.parse(argv)
            self.assertEqual((str(cm.exception), cm.exception.show_usage), (msg, show), argv)

    def test_selection(self):
        self.assertEqual(options.selected_stages("", ""), list(options.STAGES))
        self.assertEqual(options.selected_stages("bench diff", ""), ["diff", "bench"])
        self.assertEqual(options.selected_stages("", "sanitize build"), ["tests", "diff", "bench", "profile"])
        self.assertEqual(options.selected_stages("diff", "diff"), [])

    def test_stage_limit(self):
        # Each stage gets its cap, less when the budget must keep 20 s for every later stage.
        self.assertEqual(options.stage_limit("build", 1540, 1000, 5), 300)
        self.assertEqual(options.stage_limit("build", 1200, 1000, 5), 100)
        self.assertEqual(options.stage_limit("profile", 1030, 1000, 0), 30)
        self.assertLess(options.stage_limit("profile", 1010, 1000, 0), options.MIN_STAGE_SECONDS)

    def test_usage_comes_from_the_script_header(self):
        with open(SCRIPT) as fh:
            text = options.usage_text(fh.read())
        self.assertTrue(text.startswith("usage: scripts/gpu_check.sh [--dry-run] [--skip-build]"))
        for opt in ("--data-dir", "--budget", "--only", "--skip", "--build-dir", "--deps-dir", "--train-args"):
            self.assertIn(opt, text)
            self.assertIn(opt, options.VALUED)
        self.assertNotIn("Stages", text)
