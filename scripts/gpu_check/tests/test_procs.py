"""Running commands under `timeout`, a stage's clock, and SIGTERM reaching a stage's command."""
import os
import signal
import subprocess
import sys
import time

from gpu_check import procs
from gpu_check.tests.util import TempDirCase

SCRIPTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RunTest(TempDirCase):
    def test_output_and_status(self):
        out = os.path.join(self.dir, "o.log")
        self.assertEqual(procs.run(["sh", "-c", "echo out; echo err >&2; exit 3"], limit=10, out=out), 3)
        self.assertEqual(procs.read_text(out), "out\nerr\n")
        err = os.path.join(self.dir, "e.log")
        self.assertEqual(procs.run(["sh", "-c", "echo more >&2"], out=out, err=err, append=True), 0)
        self.assertEqual((procs.read_text(out), procs.read_text(err)), ("out\nerr\n", "more\n"))

    def test_timeout_and_missing_command(self):
        self.assertEqual(procs.run(["sleep", "5"], limit=1, out=os.devnull), 124)
        self.assertEqual(procs.run([os.path.join(self.dir, "nothing")], out=os.devnull), 127)

    def test_helpers(self):
        self.assertEqual(procs.tail("a\nb\nc\n", 2), "b\nc\n")
        self.assertEqual(procs.last_exit(self.write("x.rc", "diff-mlp-f32-gpu exit 137\n")), 137)
        self.assertIsNone(procs.last_exit(os.path.join(self.dir, "none.rc")))
        c = procs.Clock(1000, clock=lambda: 900)
        self.assertEqual((c.left(), c.cap(30), c.cap(500)), (95, 30, 95))
        self.assertEqual(procs.Clock(1000, clock=lambda: 999).cap(30), 1)  # never `timeout 0`

    def test_sigterm_reaches_the_command(self):
        pid_file = os.path.join(self.dir, "pid")
        code = ("import signal; from gpu_check import procs; signal.signal(signal.SIGTERM, procs.forward_term); "
                "procs.run(['sh', '-c', 'echo $$ > %s; exec sleep 60'], limit=120)" % pid_file)
        p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=SCRIPTS))
        for _ in range(100):
            if procs.read_text(pid_file).strip():
                break
            time.sleep(0.1)
        sleeper = int(procs.read_text(pid_file))
        p.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(10), 128 + signal.SIGTERM)
        for _ in range(50):  # `timeout` passes the TERM on to sleep
            try:
                os.kill(sleeper, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(sleeper, signal.SIGKILL)
            self.fail("the command outlived its stage")
