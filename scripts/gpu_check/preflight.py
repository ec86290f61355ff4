"""What gpu_check finds out before the stages: is there a GPU, which data, the carried build
dependencies (data/debs, from scripts/stage_data.sh --deps), cuDNN, and the tools' versions."""
import glob
import os
import re
import shutil
import subprocess
import tempfile

from gpu_check.procs import capture, log

IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
DATA_DIRS = ("data/fashion-mnist", "/usr/share/datasets/fashion-mnist")
DEPS_PREFIX = "/tmp/ringflow-deps"
ARCH = "x86_64-linux-gnu"
CUDNN_HEADERS = ("/usr/local/cuda/include/cudnn.h", "/usr/include/cudnn.h", "/usr/include/%s/cudnn.h" % ARCH)
CUDA_BIN = "/usr/local/cuda/bin"


def add_cuda_bin(env, isdir=os.path.isdir, which=shutil.which):
    """nvcc and compute-sanitizer live outside PATH in the toolkit's default location."""
    if isdir(CUDA_BIN) and not which("nvcc", path=env.get("PATH")):
        env["PATH"] = CUDA_BIN + ":" + env.get("PATH", "")


def gpu_verdict(found, rc, output):
    """(name, why) from `nvidia-smi --query-gpu=name,...`: why is "" when there is a GPU."""
    name = output.strip().split("\n")[0] if output.strip() else ""
    if not found:
        return "", "nvidia-smi not found"
    if rc != 0 or not name or "NVIDIA-SMI has failed" in name or "No devices" in name:
        return name, "nvidia-smi found no GPU (%s)" % (name or "no output")
    return name, ""


def probe_gpu():
    found = shutil.which("nvidia-smi") is not None
    rc, out = (capture(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       limit=30) if found else (127, ""))
    return gpu_verdict(found, rc, out)


def choose_data(data_dir, isfile=os.path.isfile):
    """(data_dir, note, warning): the Fashion-MNIST directory to use ("" for synthetic data), the
    report's description of the data, and a warning when a given directory lacks a file."""
    if not data_dir:
        data_dir = next((d for d in DATA_DIRS if isfile(os.path.join(d, IDX_FILES[0]))), "")
        note = data_dir or "synthetic (no Fashion-MNIST in ./data/fashion-mnist or /usr/share/datasets/fashion-mnist)"
    else:
        note = data_dir
    if data_dir:
        missing = next((f for f in IDX_FILES if not isfile(os.path.join(data_dir, f))), None)
        if missing:
            p = os.path.join(data_dir, missing)
            return "", "synthetic (%s missing)" % p, "warning: %s missing: using synthetic data" % p
    return data_dir, note, ""


def unpack_deb(deb, prefix):
    """A .deb's files under prefix: dpkg-deb where there is one, else ar + tar (a .deb is an ar
    archive holding data.tar.*). Returns whether it worked."""
    deb = os.path.abspath(deb)
    if shutil.which("dpkg-deb"):
        return subprocess.call(["dpkg-deb", "-x", deb, prefix]) == 0
    t = tempfile.mkdtemp()
    try:
        if subprocess.call(["ar", "x", deb], cwd=t) != 0:
            return False
        data = glob.glob(os.path.join(t, "data.tar.*"))
        return bool(data) and subprocess.call(["tar", "-xf", data[0], "-C", prefix]) == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(t, ignore_errors=True)


def relink(prefix):
    """Points the absolute symlinks under prefix (e.g. /usr/lib/x.so -> /lib/x.so.1) into prefix."""
    for d, dirs, files in os.walk(prefix):
        for n in dirs + files:
            p = os.path.join(d, n)
            if os.path.islink(p):
                tgt = os.readlink(p)
                if tgt.startswith("/") and os.path.exists(prefix + tgt):
                    os.remove(p)
                    os.symlink(prefix + tgt, p)


def lib_dirs(prefix):
    return ["%s/usr/lib/%s/openblas-pthread" % (prefix, ARCH), "%s/usr/lib/%s" % (prefix, ARCH), "%s/lib/%s" % (prefix, ARCH)]


def prepend_path(env, var, dirs):
    env[var] = ":".join(list(dirs) + ([env[var]] if env.get(var) else []))


def carried_debs(deps_dir, env, prefix=DEPS_PREFIX):
    """Unpacks deps_dir's .debs into a private prefix (never into /; once, until it is deleted),
    and points GC_DEPS_PREFIX (for CMake) and LD_LIBRARY_PATH at it. Returns the report's note."""
    debs = sorted(glob.glob(os.path.join(deps_dir, "*.deb")))
    if not debs:
        return "system"
    if not os.path.isfile(os.path.join(prefix, ".done")):
        shutil.rmtree(prefix, ignore_errors=True)
        os.makedirs(prefix)
        for f in debs:
            if not unpack_deb(f, prefix):
                log("warning: cannot unpack %s" % f)
        relink(prefix)
        open(os.path.join(prefix, ".done"), "w").close()
    env["GC_DEPS_PREFIX"] = prefix
    prepend_path(env, "LD_LIBRARY_PATH", lib_dirs(prefix))
    n = sum(1 for _d, _s, fs in os.walk(deps_dir) for f in fs if f.endswith(".deb"))
    return "carried: %d .debs from %s unpacked in %s" % (n, deps_dir, prefix)


def wheel_cudnn(python):
    """(include dir, library) of the cuDNN in PyTorch's wheels (nvidia-cudnn-*) for that python."""
    rc, d = capture([python, "-c", "import nvidia.cudnn as m; print(list(m.__path__)[0])"], merge=False)
    d = d.strip()
    if rc != 0 or not d or not os.path.isfile(os.path.join(d, "include", "cudnn.h")):
        return None
    libs = sorted(glob.glob(os.path.join(d, "lib", "libcudnn.so*")))
    return (os.path.join(d, "include"), libs[0]) if libs else None


def find_cudnn(env, exists=os.path.exists, wheel=wheel_cudnn):
    """cuDNN (the CUDA build needs it): the toolkit's or the system's, else the one in PyTorch's
    wheels, whose libcudnn.so.9 CMake's find_library cannot find (GC_CUDNN_INCLUDE/LIBRARY tell
    the build stage, LD_LIBRARY_PATH the loader). Returns the report's note."""
    if any(exists(h) for h in CUDNN_HEADERS):
        return "system"
    for py in (env.get("PYTHON") or "python3", "python3"):
        found = wheel(py)
        if found:
            inc, lib = found
            env["GC_CUDNN_INCLUDE"], env["GC_CUDNN_LIBRARY"] = inc, lib
            prepend_path(env, "LD_LIBRARY_PATH", [os.path.dirname(lib)])
            return "%s (PyTorch's wheel)" % lib
    return "not found"


def nvcc_version():
    rc, out = capture(["nvcc", "--version"], merge=False)
    m = re.search(r"release [0-9.]*", out)
    return m.group(0) if m else ""


def torch_version(python):
    rc, out = capture([python, "-c", "import torch; print(torch.__version__)"], merge=False)
    return out.strip() if rc == 0 and out.strip() else "none"


def has_torch(python):
    return capture([python, "-c", "import torch"], merge=False)[0] == 0
