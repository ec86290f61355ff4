"""Running a stage's commands, each under coreutils `timeout` as the bash script did (a command
that timed out exits 124, or 137 when it ignored SIGTERM and was killed KILL_AFTER seconds later),
a stage's clock, and the lines a stage writes to its log."""
import os
import subprocess
import sys
import time

TIMED_OUT = (124, 137)
RUNNING = []  # the commands run() is waiting for


def now():
    return int(time.time())


def log(msg):
    """A progress line on stderr, as `[gpu_check] ...`."""
    sys.stdout.flush()
    sys.stderr.write("[gpu_check] %s\n" % msg)
    sys.stderr.flush()


def say(text):
    """Text to stdout (a stage's log), flushed so that it stays ahead of the next command's output."""
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def read_text(path):
    """The file's text ("" when it cannot be read)."""
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def tail(text, n):
    """The last n lines of text, as `tail -n N` prints them."""
    lines = text.splitlines(True)
    return "".join(lines[-n:]) if n > 0 else ""


def last_exit(path):
    """The exit status at the end of an .rc file ("NAME exit RC"), or None."""
    words = read_text(path).split()
    try:
        return int(words[-1])
    except (IndexError, ValueError):
        return None


def is_exe(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


class Clock:
    """A stage's deadline (GC_STAGE_END): left() is the seconds until it less a 5 s margin for
    writing the result; cap(n) is min(n, left()) but at least 1 (`timeout 0` means no limit)."""

    def __init__(self, end, clock=now):
        self.end = end
        self._now = clock

    def left(self):
        return self.end - self._now() - 5

    def cap(self, n):
        return max(1, min(n, self.left()))


def timeout_cmd(limit, cmd, kill_after=5):
    """cmd under `timeout -k KILL_AFTER LIMIT`."""
    return ["timeout", "-k", str(kill_after), str(int(limit))] + [str(c) for c in cmd]


def run(cmd, limit=None, out=None, err="out", append=False, env=None):
    """Runs cmd (under `timeout` when limit is given) and returns its exit status. out: a file for
    stdout (None: this process's stdout); err: "out" to send stderr with stdout, a file name
    (appended to), or None for this process's stderr. 127: the command was not found."""
    if limit is not None:
        cmd = timeout_cmd(limit, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    files = []
    try:
        so = None
        if out is not None:
            so = open(out, "ab" if append else "wb")
            files.append(so)
        if err == "out":
            se = subprocess.STDOUT if so is not None else None
        elif err is not None:
            se = open(err, "ab")
            files.append(se)
        else:
            se = None
        try:
            p = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        except OSError:
            return 127
        RUNNING.append(p)
        try:
            return p.wait()
        finally:
            RUNNING.remove(p)
    finally:
        for fh in files:
            fh.close()


def forward_term(signum, frame):
    """SIGTERM handler for a stage process: pass the signal on to the command it is running
    (`timeout` runs it in a process group of its own, which the driver's `timeout` does not
    reach), then exit."""
    for p in list(RUNNING):
        p.terminate()
    sys.exit(128 + signum)


def capture(cmd, limit=None, merge=True):
    """(exit status, stdout) of cmd, stderr with it when merge (else dropped); (127, "") when it
    cannot start."""
    if limit is not None:
        cmd = timeout_cmd(limit, cmd)
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT if merge else subprocess.DEVNULL)
    except OSError:
        return 127, ""
    return p.returncode, p.stdout.decode(errors="replace")
