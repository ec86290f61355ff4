"""gpu_check's command line (documented in scripts/gpu_check.sh's header), the stages it selects,
and each stage's time limit within the budget."""
import re

STAGES = ("build", "tests", "diff", "sanitize", "bench", "profile")
# Seconds each stage may take at most (the budget may leave less).
STAGE_CAP = {"build": 300, "tests": 90, "diff": 150, "sanitize": 180, "bench": 270, "profile": 60}
RESERVE_PER_LATER_STAGE = 20  # seconds kept for each stage still to come
MIN_STAGE_SECONDS = 15        # a stage with less than this is skipped
VALUED = {"--data-dir": "data_dir", "--budget": "budget", "--only": "only", "--skip": "skip",
          "--build-dir": "build_dir", "--deps-dir": "deps_dir", "--train-args": "train_args"}


class UsageError(Exception):
    """A bad command line (exit status 2): the message (may be empty), then the usage when
    show_usage (a bad argument; not for a bad --budget or stage name)."""

    def __init__(self, message, show_usage=True):
        Exception.__init__(self, message)
        self.show_usage = show_usage


class Options:
    def __init__(self):
        self.dry = False
        self.skip_build = False
        self.data_dir = ""
        self.budget = "540"  # under the device tool's 600 s per command
        self.only = ""
        self.skip = ""
        self.build_dir = "build"
        self.deps_dir = "data/debs"
        self.train_args = ""


def parse(argv):
    """Options from the arguments; raises UsageError."""
    o = Options()
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--dry-run":
            o.dry = True
        elif a == "--skip-build":
            o.skip_build = True
        elif a in VALUED:
            if i + 1 >= len(argv):
                raise UsageError("")
            setattr(o, VALUED[a], argv[i + 1])
            i += 1
        elif a in ("-h", "--help"):
            raise UsageError("")
        else:
            raise UsageError("gpu_check: unknown argument '%s'" % a)
        i += 1
    if not re.match(r"^[1-9][0-9]*$", o.budget):
        raise UsageError("gpu_check: --budget must be a positive integer", False)
    o.budget = int(o.budget)
    for s in (o.only + " " + o.skip).split():
        if s not in STAGES:
            raise UsageError("gpu_check: unknown stage '%s' (%s)" % (s, " ".join(STAGES)), False)
    return o


def selected_stages(only, skip):
    """The stages to run, in order: those in only (all when empty), less those in skip."""
    return [s for s in STAGES if (not only.split() or s in only.split()) and s not in skip.split()]


def stage_limit(stage, deadline, now, later):
    """Seconds for a stage: its cap, or what the budget leaves after reserving time for the
    `later` stages still to come; below MIN_STAGE_SECONDS it is skipped."""
    return min(STAGE_CAP[stage], deadline - now - RESERVE_PER_LATER_STAGE * later)


def usage_text(script_text):
    """The usage part of scripts/gpu_check.sh's header comment: from "usage:" to "Stages"."""
    out, on = [], False
    for line in script_text.splitlines():
        if not line.startswith("#"):
            if on:
                break
            continue
        body = re.sub(r"^# ?", "", line)
        on = on or body.startswith("usage:")
        if body.startswith("Stages"):
            break
        if on:
            out.append(body)
    return "\n".join(out) + "\n"
