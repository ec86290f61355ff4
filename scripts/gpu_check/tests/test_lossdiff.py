"""The diff stage's criteria on small synthetic loss curves."""
import json
import math

from gpu_check import lossdiff
from gpu_check.tests.util import TempDirCase


def curve(n, f=lambda k: 2.0 / k):
    return {k: f(k) for k in range(1, n + 1)}


class CompareTest(TempDirCase):
    def test_identical_curves(self):
        st = lossdiff.compare(curve(20), curve(20), 10)
        self.assertEqual(st["worst"], 0.0)
        self.assertIsNone(st["at"])
        self.assertEqual(len(st["common"]), 20)

    def test_largest_difference_and_its_step(self):
        b = curve(20)
        a = dict(b)
        a[7] = b[7] * (1 + 2e-3)
        a[15] = b[15] * (1 + 5e-3)
        st = lossdiff.compare(a, b, 10)
        self.assertAlmostEqual(st["worst"], 5e-3, places=9)
        self.assertEqual(st["at"], 15)
        self.assertAlmostEqual(st["worst_strict"], 2e-3, places=9)  # steps 1-10 only
        self.assertEqual(st["at_strict"], 7)

    def test_nan_is_the_worst_and_stays_so(self):
        b = curve(20)
        a = dict(b)
        a[3] = float("nan")
        st = lossdiff.compare(a, b, 10)
        self.assertTrue(math.isnan(st["worst"]))
        self.assertEqual(st["at"], 3)
        ok, txt = lossdiff.whole_run_verdict("mlp-f32", st, 20, 1e-3)
        self.assertFalse(ok)
        self.assertIn("max rel diff nan > 0.001 at step 3", txt)

    def test_late_mean_covers_the_last_50_steps(self):
        b = curve(200)
        a = dict(b)
        for k in range(151, 201):
            a[k] = b[k] * 1.1
        st = lossdiff.compare(a, b, 10)
        self.assertAlmostEqual(st["late"], 0.1, places=9)
        a[150] = b[150] * 100  # outside the window
        self.assertAlmostEqual(lossdiff.compare(a, b, 10)["late"], 0.1, places=9)

    def test_median_distance(self):
        ref = curve(5, lambda k: 1.0)
        x = {1: 1.0, 2: 1.1, 3: 1.2, 4: 1.3, 5: 1.4}
        self.assertAlmostEqual(lossdiff.median_distance(x, ref, [1, 2, 3, 4, 5]), 0.2)
        self.assertTrue(math.isnan(lossdiff.median_distance(x, {}, [1, 2])))


class VerdictTest(TempDirCase):
    def test_whole_run_within_tolerance(self):
        b = curve(200)
        a = {k: v * (1 + 1e-5) for k, v in b.items()}
        ok, txt = lossdiff.whole_run_verdict("mlp-f32", lossdiff.compare(a, b, 10), 200, 1e-3)
        self.assertTrue(ok)
        self.assertRegex(txt, r"^mlp-f32: max rel diff 1\.00e-05 at step \d+ over 200 steps$")

    def test_whole_run_drifting_past_tolerance_fails(self):
        b = curve(200)
        a = {k: v * (1 + 1e-5 * k) for k, v in b.items()}  # 2e-3 by step 200
        ok, txt = lossdiff.whole_run_verdict("mlp-f32", lossdiff.compare(a, b, 10), 200, 1e-3)
        self.assertFalse(ok)
        self.assertEqual(txt, "mlp-f32: max rel diff 2.00e-03 > 0.001 at step 200 over 200 steps")

    def test_too_few_steps_fail(self):
        ok, txt = lossdiff.whole_run_verdict("mlp-f32", lossdiff.compare(curve(150), curve(150), 10), 200, 1e-3)
        self.assertFalse(ok)
        self.assertTrue(txt.endswith("over 150 steps (expected 200)"))


class DiffResultTest(TempDirCase):
    """diff_result over a work folder laid out as the stage writes it."""

    def pair(self, key, gpu, cpu, rc_gpu=0, rc_cpu=0, graph=False, norms=(10.0, 10.0)):
        for side, losses, rc, norm in (("gpu", gpu, rc_gpu, norms[0]), ("cpu", cpu, rc_cpu, norms[1])):
            base = "diff-%s-%s" % (key, side)
            if losses is not None:
                lines = [{"step": k, "loss": v} for k, v in sorted(losses.items())]
                lines.append({"step": max(losses), "loss": losses[max(losses)], "test_loss": 9.0})  # per-epoch
                self.write_json_lines(base + ".jsonl", lines)
                self.write(base + ".json", "starting\n" + json.dumps(
                    {"final_loss": losses[max(losses)], "param_norm": norm, "cuda_graph": graph and side == "gpu",
                     "samples_per_second": 100.0}) + "\n")
            if rc is not None:
                self.write(base + ".rc", "%s exit %d\n" % (base, rc))
                self.write(base + ".err", "+ ringflow train ...\n" + ("" if rc == 0 else "ringflow: error: bad thing\n"))

    def good_runs(self, n=20, cnn_f32_gpu=None, cnn_f32_cpu=None, graph=False):
        ref = curve(n)
        self.pair("mlp-f32", curve(n), curve(n), graph=graph)
        self.pair("cnn-f64", ref, ref, graph=graph)
        self.pair("cnn-f32", cnn_f32_gpu or ref, cnn_f32_cpu or ref, graph=graph)

    def result(self, steps=20, dry=False):
        return lossdiff.diff_result(self.dir, steps, 1e-3, dry, 10, 0.05)

    def test_all_agree(self):
        self.good_runs()
        r = self.result()
        self.assertEqual(r["status"], "PASS", r["summary"])
        self.assertTrue(r["summary"].startswith("gpu vs cpu: mlp-f32: max rel diff 0.00e+00 over 20 steps; "))
        self.assertEqual(list(r["models"]), ["mlp-f32", "cnn-f32", "cnn-f64"])
        self.assertEqual(r["models"]["cnn-f32"]["f64_control"]["ratio"], 0.0 / 1e-12)
        self.assertEqual(sorted(r), ["late_tol", "models", "status", "steps", "strict_steps", "summary", "tol"])

    def test_labels(self):
        self.good_runs(graph=True)
        self.assertTrue(self.result()["summary"].startswith("gpu (CUDA graph) vs cpu: "))
        self.assertTrue(self.result(dry=True)["summary"].startswith("cpu(1 thread) vs cpu: "))

    def test_mlp_drift_fails_the_stage(self):
        self.good_runs()
        b = curve(20)
        self.pair("mlp-f32", {k: v * (1 + 5e-3) for k, v in b.items()}, b)
        r = self.result()
        self.assertEqual(r["status"], "FAIL")
        self.assertRegex(r["summary"], r"mlp-f32: max rel diff 5\.00e-03 > 0\.001 at step \d+ over 20 steps; ")

    def test_cnn_f32_may_drift_late_like_the_cpu_does(self):
        ref = curve(20)
        drift = {k: v * (1 + (0 if k <= 10 else 1e-3 * (k - 10))) for k, v in ref.items()}
        self.good_runs(cnn_f32_gpu=drift, cnn_f32_cpu={k: v * (1 + 1e-3 * k) for k, v in ref.items()})
        r = self.result()
        self.assertEqual(r["status"], "FAIL")  # the GPU matches the CPU's f32 run only in steps 1-10
        self.assertIn("cnn-f32: steps 1-10 max rel diff", r["summary"])
        # The same drift on both sides: steps 1-10 agree, late mean and control within bounds.
        self.good_runs(cnn_f32_gpu=drift, cnn_f32_cpu=drift)
        r = self.result()
        self.assertEqual(r["status"], "PASS", r["summary"])
        self.assertIn("median distance from the f64 run: gpu f32 1.00e-03, cpu f32 1.00e-03", r["summary"])

    def test_cnn_f32_farther_from_f64_than_twice_the_cpu_fails(self):
        ref = curve(20)
        gpu = {k: v * (1 + (0 if k <= 10 else 3e-2)) for k, v in ref.items()}
        cpu = {k: v * (1 + (0 if k <= 10 else 1e-2)) for k, v in ref.items()}
        self.good_runs(cnn_f32_gpu=gpu, cnn_f32_cpu=cpu)
        r = self.result()
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("(gpu > 2x cpu)", r["summary"])

    def test_cnn_f32_without_the_f64_reference_fails(self):
        self.good_runs()
        self.pair("cnn-f64", curve(20), curve(20), rc_cpu=1)
        r = self.result()
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("; no f64 reference run", r["summary"])
        self.assertIn("cnn-f64: cpu run failed (exit 1): ringflow: error: bad thing", r["summary"])

    def test_runs_that_failed_or_did_not_run(self):
        self.good_runs()
        self.pair("mlp-f32", curve(20), None, rc_gpu=124, rc_cpu=None)
        r = self.result()
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("mlp-f32: gpu run timed out: ringflow: error: bad thing", r["summary"])
        self.assertEqual(r["models"]["mlp-f32"], {"dtype": "f32", "whole_run_checked": True,
                                                  "error": "gpu run timed out: ringflow: error: bad thing"})

    def test_param_norm_is_checked_for_cnn_f32(self):
        ref = curve(20)
        self.good_runs()
        self.pair("cnn-f32", ref, ref, norms=(10.5, 10.0))
        r = self.result()
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("param norm 5.00e-02 > 0.01", r["summary"])


class ReadTest(TempDirCase):
    def test_losses_leave_out_epoch_lines(self):
        p = self.write_json_lines("m.jsonl", [{"step": 1, "loss": 2.0}, {"step": 1, "loss": 3.0, "test_loss": 1.0}])
        self.assertEqual(lossdiff.read_losses(p), {1: 2.0})

    def test_summary_is_the_last_json_line(self):
        p = self.write("s.json", 'hello\n{"a": 1}\n  {"a": 2}\nbye\n')
        self.assertEqual(lossdiff.read_summary(p), {"a": 2})
        self.assertIsNone(lossdiff.read_summary(self.dir + "/missing"))

    def test_last_error_line(self):
        self.assertEqual(lossdiff.last_error_line("+ cmd\nwarming up\nError: x\nlater\n"), "Error: x")
        self.assertEqual(lossdiff.last_error_line("+ cmd\nsome line\n"), "some line")
        self.assertEqual(lossdiff.last_error_line(""), "no output")
