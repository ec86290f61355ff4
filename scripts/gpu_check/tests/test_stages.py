"""The stage bodies against stand-in binaries (fakes.py), and the settings they get from the driver."""
import contextlib
import io
import json
import os

from gpu_check import stages
from gpu_check.procs import now
from gpu_check.tests import fakes
from gpu_check.tests.util import TempDirCase


class CtxTest(TempDirCase):
    def test_environment_round_trip(self):
        env = {}
        stages.Ctx(work="/w", build="/b", dry=1, data_dir="/d", train_args="--x 1", deps_prefix="/p").to_env(env)
        self.assertEqual((env["GC_WORK"], env["GC_DRY"], env["GC_TOL"], env["GC_ALLOWED_SKIP"]),
                         ("/w", "1", "0.001", "CUDA device is present"))
        c = stages.Ctx.from_env(env)
        self.assertEqual((c.work, c.build, c.dry, c.data_dir, c.tol, c.diff_steps, c.strict, c.late_tol),
                         ("/w", "/b", 1, "/d", 1e-3, 200, 10, 0.05))
        self.assertEqual(c.extra(), ["--x", "1"])
        self.assertEqual(c.data_args(), ["--data", "fashion-mnist", "--data-dir", "/d"])
        self.assertEqual(stages.Ctx().data_args(), ["--data", "synthetic"])

    def test_configure_arguments(self):
        c = stages.Ctx(build=self.dir, deps_prefix="/p", cudnn_include="/c/include", cudnn_library="/c/lib/libcudnn.so.9")
        cfg = stages.cmake_configure_args(c, "/usr/local/cuda/bin/nvcc", "/usr/bin/ninja")
        self.assertEqual(cfg[:5], ["-S", ".", "-B", self.dir, "-DCMAKE_BUILD_TYPE=Release"])
        for want in ("-DRINGFLOW_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90", "-G", "-DCMAKE_PREFIX_PATH=/p/usr",
                     "-DCBLAS_INCLUDE_DIR=/p/usr/include/x86_64-linux-gnu/openblas-pthread",
                     "-DCUDNN_INCLUDE_DIR=/c/include", "-DCUDNN_LIBRARY=/c/lib/libcudnn.so.9"):
            self.assertIn(want, cfg)
        self.write("CMakeCache.txt", "")  # an existing build keeps its generator
        self.assertNotIn("-G", stages.cmake_configure_args(stages.Ctx(build=self.dir), None, "/usr/bin/ninja"))

    def test_bench_arguments(self):
        dry = stages.bench_args(stages.Ctx(work="/w", build="/b", dry=1), 100)
        self.assertEqual(dry, ["--ringflow", "/b/ringflow", "--json", "/w/bench.jsonl", "--time-limit", "100",
                               "--synthetic", "--device", "cpu", "--runs", "2", "--steps", "5", "--warmup", "2",
                               "--batches", "64"])
        gpu = stages.bench_args(stages.Ctx(work="/w", build="/b", data_dir="/d", train_args="--fuse-epilogues off"), 9)
        self.assertEqual(gpu[6:], ["--train-args", "--fuse-epilogues off", "--data-dir", "/d", "--device", "cuda:0",
                                   "--runs", "3", "--steps", "300", "--warmup", "20", "--batches", "64 512"])


class StageRunTest(TempDirCase):
    def ctx(self, **kw):
        build = os.path.join(self.dir, "build")
        fakes.install(build)
        work = os.path.join(build, "gpu_check")
        os.makedirs(work, exist_ok=True)
        return stages.Ctx(work=work, build=build, stage_end=now() + 120, **kw)

    def run_stage(self, body, ctx):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return body(ctx)

    def test_diff_in_a_dry_run(self):
        c = self.ctx(dry=1)
        r = self.run_stage(stages.stage_diff, c)
        self.assertEqual(r["status"], "PASS", r["summary"])
        self.assertEqual(r["steps"], 20)
        with open(os.path.join(c.work, "diff-mlp-f32-gpu.err")) as fh:
            self.assertTrue(fh.read().startswith("+ ringflow train --model mlp --dtype f32 --device cpu --threads 1 "))
        with open(os.path.join(c.work, "diff-cnn-f64-cpu.rc")) as fh:
            self.assertEqual(fh.read(), "diff-cnn-f64-cpu exit 0\n")

    def test_diff_fails_when_the_gpu_drifts(self):
        os.environ["FAKE_DRIFT"] = "1e-4"
        self.addCleanup(os.environ.pop, "FAKE_DRIFT")
        r = self.run_stage(stages.stage_diff, self.ctx(dry=1))
        self.assertEqual(r["status"], "FAIL")
        self.assertIn("mlp-f32: max rel diff 2.00e-03 > 0.001 at step 20 over 20 steps", r["summary"])

    def test_tests_and_profile(self):
        c = self.ctx(dry=1)
        r = self.run_stage(stages.stage_tests, c)
        self.assertEqual((r["status"], r["summary"]), ("PASS", "1 passed, 0 failed, 1 skipped of 2; nccl tests not "
                                                               "built (dry run: no GPU, skips expected)"))
        self.assertEqual(self.run_stage(stages.stage_tests, self.ctx(dry=0))["status"], "FAIL")
        r = self.run_stage(stages.stage_profile, c)
        self.assertEqual(r["status"], "PASS", r["summary"])
        self.assertTrue(r["summary"].startswith("CNN batch 64, 3.00 ms of ops per step: Conv2D 67%, MatMul 33%"))

    def test_skips_and_missing_binaries(self):
        c = self.ctx(dry=1, skip_build=1)
        r = self.run_stage(stages.stage_build, c)
        self.assertEqual(r, {"status": "SKIP", "summary": "--skip-build: using the existing " + c.build + "/ringflow"})
        self.assertEqual(self.run_stage(stages.stage_sanitize, c)["summary"], "dry run: compute-sanitizer needs a GPU")
        os.remove(os.path.join(c.build, "ringflow"))
        self.assertEqual(self.run_stage(stages.stage_diff, c), {"status": "FAIL", "summary": c.build + "/ringflow not built"})

    def test_no_time_left(self):
        c = self.ctx(dry=1)
        c.stage_end = now() + 6
        r = self.run_stage(stages.stage_profile, c)
        self.assertEqual(r["status"], "FAIL")
        with open(os.path.join(c.work, "profile.err")) as fh:
            self.assertEqual(fh.read(), "not run: no time left\n")

    def test_main_writes_the_result(self):
        c = self.ctx(dry=1)
        env = {}
        c.to_env(env)
        old = dict(os.environ)
        os.environ.update(env)
        self.addCleanup(lambda: (os.environ.clear(), os.environ.update(old)))
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            stages.main("sanitize")
        with open(os.path.join(c.work, "sanitize.result.json")) as fh:
            self.assertEqual(json.load(fh)["status"], "SKIP")
