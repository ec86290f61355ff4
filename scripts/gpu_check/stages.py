"""The stage bodies: the commands each stage runs and which analysis judges them. The driver runs
each as `python3 -m gpu_check --stage NAME` under `timeout`, with its settings in GC_* variables
(Ctx); the stage writes WORK/NAME.result.json, and a stage that ends without one is a FAIL (or
TIMEOUT). Output goes to the stage's log, WORK/NAME.log."""
import os
import shutil
import signal

from gpu_check import bench, buildlog, gtest, lossdiff, sanitizer, timeline
from gpu_check.procs import TIMED_OUT, Clock, capture, forward_term, is_exe, log, now, read_text, run, say, tail
from gpu_check.report import result_path, write_json

DIFF_RUN_SECONDS = 150
SANITIZE_PLAN = (("memcheck", "mlp", 20), ("memcheck", "cnn", 20), ("racecheck", "mlp", 5),
                 ("synccheck", "mlp", 5), ("synccheck", "cnn", 5),
                 # racecheck on the CNN's cuDNN kernels is the slowest: last, and 2 steps (5 did
                 # not finish in the time left on an H200; bench/RESULTS.md, gpu_check.sh).
                 ("racecheck", "cnn", 2))
SANITIZER_PATHS = ("/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer")


class Ctx:
    """A stage's settings, from the GC_* variables the driver exports (to_env writes them)."""
    FIELDS = (("work", "GC_WORK", str, ""), ("build", "GC_BUILD", str, "build"), ("dry", "GC_DRY", int, 0),
              ("skip_build", "GC_SKIP_BUILD", int, 0), ("data_dir", "GC_DATA_DIR", str, ""),
              ("train_args", "GC_TRAIN_ARGS", str, ""), ("diff_steps", "GC_DIFF_STEPS", int, 200),
              ("tol", "GC_TOL", float, 1e-3), ("strict", "GC_DIFF_STRICT", int, 10),
              ("late_tol", "GC_DIFF_LATE_TOL", float, 0.05),
              ("allowed_skip", "GC_ALLOWED_SKIP", str, "CUDA device is present"),
              ("deps_prefix", "GC_DEPS_PREFIX", str, ""), ("cudnn_include", "GC_CUDNN_INCLUDE", str, ""),
              ("cudnn_library", "GC_CUDNN_LIBRARY", str, ""), ("stage_end", "GC_STAGE_END", int, 0))

    def __init__(self, **kw):
        for attr, _var, _conv, default in self.FIELDS:
            setattr(self, attr, kw.get(attr, default))

    @classmethod
    def from_env(cls, env):
        return cls(**{a: conv(env[v]) for a, v, conv, _d in cls.FIELDS if env.get(v, "") != ""})

    def to_env(self, env):
        for attr, var, conv, _d in self.FIELDS:
            v = getattr(self, attr)
            env[var] = ("%g" % v) if conv is float else str(v)

    def clock(self):
        return Clock(self.stage_end)

    def data_args(self):
        return ["--data", "fashion-mnist", "--data-dir", self.data_dir] if self.data_dir else ["--data", "synthetic"]

    def extra(self):
        """--train-args, split on whitespace."""
        return self.train_args.split()

    def path(self, name):
        return os.path.join(self.work, name)


def result(status, summary, **kw):
    r = {"status": status, "summary": summary}
    r.update(kw)
    return r


def train_run(ctx, name, t, args):
    """`ringflow train ARGS --train-args` under a t-second timeout, stdout to WORK/NAME.json,
    stderr to NAME.err (after the command line); its exit status (124 when t < 5: not run)."""
    err = ctx.path(name + ".err")
    if t < 5:
        with open(err, "w") as fh:
            fh.write("not run: no time left\n")
        return 124
    with open(err, "w") as fh:
        fh.write("+ ringflow train %s %s\n" % (" ".join(args), " ".join(ctx.extra())))
    return run([os.path.join(ctx.build, "ringflow"), "train"] + args + ctx.extra(), limit=t,
               out=ctx.path(name + ".json"), err=err)


# ---- build ----------------------------------------------------------------------------------

def cmake_configure_args(ctx, nvcc, ninja):
    cfg = ["-S", ".", "-B", ctx.build, "-DCMAKE_BUILD_TYPE=Release"]
    if nvcc:
        cfg += ["-DRINGFLOW_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=90"]
    if not os.path.isfile(os.path.join(ctx.build, "CMakeCache.txt")) and ninja:
        cfg += ["-G", "Ninja"]
    if ctx.deps_prefix:  # carried dependencies (unpacked by the driver): CMake searches them first
        p, arch = ctx.deps_prefix, "x86_64-linux-gnu"
        cfg += ["-DCMAKE_PREFIX_PATH=%s/usr" % p,
                "-DCMAKE_LIBRARY_PATH=%s/usr/lib/%s/openblas-pthread;%s/usr/lib/%s;%s/lib/%s" % (p, arch, p, arch, p, arch),
                "-DCBLAS_INCLUDE_DIR=%s/usr/include/%s/openblas-pthread" % (p, arch)]
    if ctx.cudnn_include:
        cfg += ["-DCUDNN_INCLUDE_DIR=" + ctx.cudnn_include, "-DCUDNN_LIBRARY=" + ctx.cudnn_library]
    return cfg


def stage_build(ctx):
    clock, rf = ctx.clock(), os.path.join(ctx.build, "ringflow")
    if ctx.skip_build and is_exe(rf):
        return result("SKIP", "--skip-build: using the existing " + rf)
    nvcc = shutil.which("nvcc")
    if not nvcc:
        if not ctx.dry:
            return result("FAIL", "nvcc not found (looked on PATH and in /usr/local/cuda/bin)")
        log("nvcc not found: building the CPU-only backend (dry run)")
    cfg = cmake_configure_args(ctx, nvcc, shutil.which("ninja"))
    os.environ["CMAKE_POLICY_VERSION_MINIMUM"] = "3.5"  # a CMake 4 (pip's) refuses old package configs
    jobs = 1 if ctx.dry else len(os.sched_getaffinity(0))
    conf_log, comp_log, tests_log = ctx.path("configure.log"), ctx.path("compile.log"), ctx.path("compile_tests.log")
    t0 = now()
    log("configure: cmake " + " ".join(cfg))
    rc = run(["cmake"] + cfg, limit=clock.cap(120), out=conf_log)
    say(read_text(conf_log))
    if rc:
        return buildlog.configure_failed(rc, now() - t0, read_text(conf_log))
    t1 = now()
    nccl = buildlog.nccl_found(read_text(conf_log))

    def target(name, logf, append=False):
        return run(["cmake", "--build", ctx.build, "-j", str(jobs), "--target", name],
                   limit=clock.cap(100000), out=logf, append=append)
    # ringflow first: a broken test file must not keep the loss comparison and the benchmark from running.
    log("build: cmake --build %s -j%d --target ringflow, then ringflow_tests" % (ctx.build, jobs))
    rc_rf = target("ringflow", comp_log)
    rc_t = rc_rf if rc_rf in TIMED_OUT else target("ringflow_tests", tests_log)
    if rc_t == 0 and nccl == "ON" and target("ringflow_nccl_tests", tests_log, True):
        log("build: ringflow_nccl_tests failed (the tests stage reports it)")
    if rc_rf == 0 and target("epilogue_micro", comp_log, True):  # the profile stage's; optional
        log("build: bench/epilogue_micro failed to build (profile skips it)")
    say(tail(read_text(comp_log), 30))
    if os.path.isfile(tests_log):
        say(tail(read_text(tests_log), 30))
    mpi = buildlog.cache_value(read_text(os.path.join(ctx.build, "CMakeCache.txt")), "RINGFLOW_MPI")
    return buildlog.build_result(rc_rf, rc_t, t0, t1, now(), jobs, mpi, nccl, read_text(comp_log), read_text(tests_log))


# ---- tests ----------------------------------------------------------------------------------

def stage_tests(ctx):
    clock = ctx.clock()
    binary, xml = os.path.join(ctx.build, "ringflow_tests"), ctx.path("cuda_tests.xml")
    if not is_exe(binary):
        return result("FAIL", binary + " not built")
    for f in (xml, ctx.path("nccl_tests.xml")):
        if os.path.exists(f):
            os.remove(f)
    rc = run([binary, "--gtest_filter=" + gtest.FILTER, "--gtest_output=xml:" + xml], limit=clock.cap(100000),
             out=ctx.path("cuda_tests.log"))
    log_text = read_text(ctx.path("cuda_tests.log"))
    say("\n".join(gtest.progress_lines(log_text)))
    # The nccl backend at world size 1 (exit 77: it found no device, i.e. skipped).
    nccl_bin, nccl_rc = os.path.join(ctx.build, "ringflow_nccl_tests"), gtest.NCCL_NOT_BUILT
    if is_exe(nccl_bin):
        nccl_rc = run([nccl_bin, "--gtest_output=xml:" + ctx.path("nccl_tests.xml")], limit=clock.cap(100000),
                      out=ctx.path("nccl_tests.log"))
    return gtest.tests_result(xml, rc, bool(ctx.dry), ctx.allowed_skip, ctx.path("nccl_tests.xml"), nccl_rc, log_text)


# ---- diff -----------------------------------------------------------------------------------

def diff_side(ctx, key, side, dev, model, dtype, common):
    """One run of the pair; writes diff-KEY-SIDE.rc and returns the exit status."""
    name = "diff-%s-%s" % (key, side)
    log("diff: %s (%s) on %s" % (model, dtype, " ".join(dev)))
    rc = train_run(ctx, name, ctx.clock().cap(DIFF_RUN_SECONDS), ["--model", model, "--dtype", dtype] + dev + common +
                   ["--metrics", ctx.path(name + ".jsonl")])
    with open(ctx.path(name + ".rc"), "w") as fh:
        fh.write("%s exit %d\n" % (name, rc))
    if rc:
        say(tail(read_text(ctx.path(name + ".err")), 5))
    return rc


def stage_diff(ctx):
    if not is_exe(os.path.join(ctx.build, "ringflow")):
        return result("FAIL", os.path.join(ctx.build, "ringflow") + " not built")
    steps, gpu, cpu = ctx.diff_steps, ["--device", "cuda:0"], ["--device", "cpu"]
    if ctx.dry:  # the "GPU" is a CPU run with another thread count
        steps, gpu = 20, ["--device", "cpu", "--threads", "1"]
    common = ["--batch", "64", "--seed", "1234", "--max-steps", str(steps), "--epochs", "100",
              "--metrics-every", "1", "--quiet"] + ctx.data_args()
    for model, dtype in lossdiff.RUNS:
        key = "%s-%s" % (model, dtype)
        if diff_side(ctx, key, "gpu", gpu, model, dtype, common) == 0:
            diff_side(ctx, key, "cpu", cpu, model, dtype, common)
    r = lossdiff.diff_result(ctx.work, steps, ctx.tol, bool(ctx.dry), ctx.strict, ctx.late_tol)
    say("%s %s" % (r["status"], r["summary"]))
    return r


# ---- sanitize -------------------------------------------------------------------------------

def find_sanitizer():
    for c in (shutil.which("compute-sanitizer"),) + SANITIZER_PATHS:
        if c and is_exe(c):
            return c
    return None


def stage_sanitize(ctx):
    if ctx.dry:
        return result("SKIP", "dry run: compute-sanitizer needs a GPU")
    cs = find_sanitizer()
    if not cs:
        return result("SKIP", "compute-sanitizer not found")
    rf = os.path.join(ctx.build, "ringflow")
    if not is_exe(rf):
        return result("FAIL", rf + " not built")
    tsv = []
    for tool, model, n in SANITIZE_PLAN:
        out, t = ctx.path("sanitize-%s-%s.log" % (tool, model)), ctx.clock().cap(150)
        if t < 25:
            tsv.append("%s\t%s\t-\tnot run: no time left" % (tool, model))
            continue
        log("sanitize: %s %s (%d steps)" % (tool, model, n))
        rc = run([cs, "--tool", tool, "--print-limit", "20", rf, "train", "--model", model, "--device", "cuda:0",
                  "--data", "synthetic", "--synthetic-train", "2048", "--batch", "64", "--max-steps", str(n),
                  "--epochs", "1", "--seed", "7", "--quiet"] + ctx.extra(), limit=t, out=out)
        say(tail(read_text(out), 5))
        tsv.append("%s\t%s\t%d\t%s" % (tool, model, rc, out))
    with open(ctx.path("sanitize.tsv"), "w") as fh:
        fh.write("".join(l + "\n" for l in tsv))
    version = tail(capture([cs, "--version"], merge=False)[1], 1).strip()
    return sanitizer.sanitize_result(sanitizer.read_plan("\n".join(tsv)), version)


# ---- bench ----------------------------------------------------------------------------------

def bench_args(ctx, time_limit):
    args = ["--ringflow", os.path.join(ctx.build, "ringflow"), "--json", ctx.path("bench.jsonl"),
            "--time-limit", str(time_limit)]
    if ctx.train_args:
        args += ["--train-args", ctx.train_args]
    args += ["--data-dir", ctx.data_dir] if ctx.data_dir else ["--synthetic"]
    if ctx.dry:
        return args + ["--device", "cpu", "--runs", "2", "--steps", "5", "--warmup", "2", "--batches", "64"]
    return args + ["--device", "cuda:0", "--runs", "3", "--steps", "300", "--warmup", "20", "--batches", "64 512"]


def stage_bench(ctx):
    if not is_exe(os.path.join(ctx.build, "ringflow")):
        return result("FAIL", os.path.join(ctx.build, "ringflow") + " not built")
    if os.path.exists(ctx.path("bench.jsonl")):
        os.remove(ctx.path("bench.jsonl"))
    rc = run(["bash", "bench/gpu_vs_torch.sh"] + bench_args(ctx, max(1, ctx.clock().left() - 10)), err=None)
    return bench.bench_result(bench.read_rows(ctx.path("bench.jsonl")), rc)


# ---- profile --------------------------------------------------------------------------------

def stage_profile(ctx):
    if not is_exe(os.path.join(ctx.build, "ringflow")):
        return result("FAIL", os.path.join(ctx.build, "ringflow") + " not built")
    clock, dev, batch = ctx.clock(), ["--device", "cuda:0"], 512
    if ctx.dry:
        dev, batch = ["--device", "cpu", "--threads", "1"], 64
    rc = train_run(ctx, "profile", clock.left() - 5,
                   ["--model", "cnn"] + ctx.data_args() + dev + ["--batch", str(batch), "--max-steps", "30",
                                                                  "--epochs", "1000", "--quiet", "--timeline",
                                                                  ctx.path("profile_trace.json")])
    # cuBLASLt's epilogue matmul against gemm + our bias kernel, eager and in a graph, per dense
    # layer (bench/epilogue_micro.cpp): the evidence for which path the fused dense step should take.
    micro, micro_log = os.path.join(ctx.build, "bench", "epilogue_micro"), ctx.path("epilogue_micro.log")
    open(micro_log, "w").close()
    if not ctx.dry and is_exe(micro) and clock.left() > 20:
        mrc = run([micro], limit=clock.left() - 10, out=micro_log)
        if mrc:
            log("profile: epilogue_micro exited with status %d" % mrc)
    return timeline.profile_result(ctx.path("profile_trace.json"), rc, batch, micro_log)


STAGE_BODIES = {"build": stage_build, "tests": stage_tests, "diff": stage_diff, "sanitize": stage_sanitize,
                "bench": stage_bench, "profile": stage_profile}


def main(name):
    """`--stage NAME`: runs the stage and writes its result."""
    signal.signal(signal.SIGTERM, forward_term)
    ctx = Ctx.from_env(os.environ)
    r = STAGE_BODIES[name](ctx)
    write_json(result_path(ctx.work, name), r)
    return 0
