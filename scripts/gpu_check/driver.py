"""The parent: options, pre-flight, one time-boxed process per stage, and the report after every
stage and at the end (also after an interrupt). Exit status: 0 when no stage failed, 1 when one
did, 2 for a bad command line, 3 without a CUDA device (not with --dry-run)."""
import os
import shutil
import signal
import subprocess
import sys

from gpu_check import options, preflight, report, stages
from gpu_check.procs import log, now, read_text, timeout_cmd

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")
NO_DEVICE_EXIT = 3


class Interrupted(Exception):
    """SIGTERM (SIGINT raises KeyboardInterrupt): write the final report and exit 130."""


def _on_term(signum, frame):
    raise Interrupted()


def usage(err):
    if str(err):
        sys.stderr.write(str(err) + "\n")
    if err.show_usage:
        sys.stderr.write(options.usage_text(read_text(SCRIPT)))
    return 2


def exit_status(ok, rc):
    """The final exit status: 0 when the report is OK, else 1, or rc when it is neither 0 nor 1
    (130 after an interrupt)."""
    return 0 if ok else (1 if rc in (0, 1) else rc)


class Run:
    """One gpu_check run: its options, what pre-flight found, and the work folder."""

    def __init__(self, opts, gpu_name):
        self.o, self.gpu = opts, gpu_name
        self.start = now()
        self.deadline = self.start + opts.budget
        self.build = opts.build_dir if os.path.isabs(opts.build_dir) else os.path.join(ROOT, opts.build_dir)
        self.work = os.path.join(self.build, "gpu_check")
        self.selected = options.selected_stages(opts.only, opts.skip)
        self.data_note = self.deps_note = "?"
        self.nvcc, self.torch = "", "none"

    def prepare(self, env):
        """The work folder (this script's own: logs of the last check only), data, dependencies,
        and the environment every stage runs in."""
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        data_dir, self.data_note, warning = preflight.choose_data(self.o.data_dir)
        if warning:
            log(warning)
        if data_dir and not os.path.isabs(data_dir):
            data_dir = os.path.join(ROOT, data_dir)
        deps = preflight.carried_debs(self.o.deps_dir, env)
        self.deps_note = "%s; cuDNN: %s" % (deps, preflight.find_cudnn(env))
        stages.Ctx(work=self.work, build=self.build, dry=int(self.o.dry), skip_build=int(self.o.skip_build),
                   data_dir=data_dir, train_args=self.o.train_args, deps_prefix=env.get("GC_DEPS_PREFIX", ""),
                   cudnn_include=env.get("GC_CUDNN_INCLUDE", ""),
                   cudnn_library=env.get("GC_CUDNN_LIBRARY", "")).to_env(env)
        # TF32 off everywhere (ringflow's default, runtime/cuda_options.h; this also forces
        # cuBLAS/cuDNN in PyTorch to full fp32).
        env["NVIDIA_TF32_OVERRIDE"] = "0"
        env["PYTHONUNBUFFERED"] = "1"
        if self.o.dry and not env.get("PYTHON") and not preflight.has_torch("python3"):
            env["PYTHON"] = "/usr/bin/python3"
        self.nvcc = preflight.nvcc_version()
        self.torch = preflight.torch_version(env.get("PYTHON") or "python3")
        log("GPU: " + self.gpu)
        log("nvcc: %s; torch: %s; TF32 off (NVIDIA_TF32_OVERRIDE=0)" % (self.nvcc or "not found", self.torch))
        log("data: %s; deps: %s" % (self.data_note, self.deps_note))
        log("budget %d s; stages: %s; logs in %s" % (self.o.budget, " ".join(self.selected), self.work))

    def meta(self):
        return {"dry_run": self.o.dry, "gpu": self.gpu, "nvcc": self.nvcc or "none", "torch": self.torch,
                "data": self.data_note, "deps": self.deps_note, "budget_seconds": self.o.budget}

    def export(self, final):
        """Writes the report (and copies it with the logs to $OUT); returns whether it is OK."""
        ok, text = report.write_report(self.work, self.meta(), options.STAGES, self.selected, now() - self.start, final)
        out = os.environ.get("OUT", "")
        if out and os.path.isdir(out):
            report.export(self.work, out)
        if final:
            sys.stdout.write("\n" + text)
            sys.stdout.flush()
        return ok

    def run_stage(self, s, lim):
        """The stage in its own process under `timeout -k 10 LIM`; returns (exit status, seconds)."""
        t0 = now()
        env = dict(os.environ, GC_STAGE_END=str(t0 + lim))
        cmd = timeout_cmd(lim, [sys.executable, "-m", "gpu_check", "--stage", s], kill_after=10)
        with open(os.path.join(self.work, s + ".log"), "wb") as fh:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            try:
                rc = p.wait()
            except BaseException:
                p.terminate()  # timeout passes it on to the stage
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                raise
        return rc, now() - t0

    def run_stages(self):
        for i, s in enumerate(self.selected):
            lim = options.stage_limit(s, self.deadline, now(), len(self.selected) - i - 1)
            path = report.result_path(self.work, s)
            if lim < options.MIN_STAGE_SECONDS:
                report.write_json(path, {"status": "SKIP", "summary": "no time left in the budget", "seconds": 0})
                log("%s: SKIP (no time left in the budget)" % s)
                continue
            log_path = os.path.join(self.work, s + ".log")
            log("%s: running (limit %d s, log %s)" % (s, lim, log_path))
            rc, secs = self.run_stage(s, lim)
            r = report.stage_outcome(path, rc, secs, log_path)
            report.write_json(path, r)
            log("%s: %s (%d s) %s" % (s, r["status"], secs, r["summary"]))
            if not report.passed(r):
                log("%s: last lines of %s.log:" % (s, s))
                sys.stderr.write(report.log_tail(log_path))
            self.export(False)


def main(argv):
    if argv[:1] == ["--stage"] and len(argv) == 2:
        return stages.main(argv[1])
    os.chdir(ROOT)
    try:
        opts = options.parse(argv)
    except options.UsageError as e:
        return usage(e)
    preflight.add_cuda_bin(os.environ)
    gpu_name = "none (dry run)"
    if not opts.dry:
        gpu_name, why = preflight.probe_gpu()
        if why:
            sys.stderr.write("gpu_check: no CUDA device: %s (scripts/gpu_check.sh --dry-run checks this script "
                             "on the CPU)\n" % why)
            return NO_DEVICE_EXIT
    signal.signal(signal.SIGTERM, _on_term)
    r, rc = Run(opts, gpu_name), 0
    try:
        r.prepare(os.environ)
        r.run_stages()
    except (KeyboardInterrupt, Interrupted):
        rc = 130
    except Exception:  # report what ran, then the error
        import traceback
        traceback.print_exc()
        rc = 1
    finally:
        ok = os.path.isdir(r.work) and r.export(True)
        log("report: %s%s" % (os.path.join(r.work, "report.txt"), " (and $OUT)" if os.environ.get("OUT") else ""))
    return exit_status(ok, rc)
