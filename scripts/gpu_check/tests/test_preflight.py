"""Pre-flight: the GPU probe's verdict, the data directory, carried .debs, cuDNN."""
import os

from gpu_check import preflight
from gpu_check.tests.util import TempDirCase


class GpuTest(TempDirCase):
    def test_verdicts(self):
        self.assertEqual(preflight.gpu_verdict(False, 127, ""), ("", "nvidia-smi not found"))
        self.assertEqual(preflight.gpu_verdict(True, 0, "NVIDIA H100 80GB HBM3, 570.1, 81559 MiB\n"),
                         ("NVIDIA H100 80GB HBM3, 570.1, 81559 MiB", ""))
        self.assertEqual(preflight.gpu_verdict(True, 9, "NVIDIA-SMI has failed because it couldn't communicate\n")[1],
                         "nvidia-smi found no GPU (NVIDIA-SMI has failed because it couldn't communicate)")
        self.assertEqual(preflight.gpu_verdict(True, 0, "No devices were found\n")[1],
                         "nvidia-smi found no GPU (No devices were found)")
        self.assertEqual(preflight.gpu_verdict(True, 124, "")[1], "nvidia-smi found no GPU (no output)")

    def test_cuda_bin_joins_path_when_nvcc_is_not_on_it(self):
        env = {"PATH": "/usr/bin"}
        preflight.add_cuda_bin(env, isdir=lambda d: True, which=lambda n, path: None)
        self.assertEqual(env["PATH"], "/usr/local/cuda/bin:/usr/bin")
        env = {"PATH": "/usr/bin"}
        preflight.add_cuda_bin(env, isdir=lambda d: True, which=lambda n, path: "/usr/bin/nvcc")
        self.assertEqual(env["PATH"], "/usr/bin")


class DataTest(TempDirCase):
    def test_first_directory_with_the_files(self):
        have = {"/usr/share/datasets/fashion-mnist/" + f for f in preflight.IDX_FILES}
        self.assertEqual(preflight.choose_data("", have.__contains__),
                         ("/usr/share/datasets/fashion-mnist", "/usr/share/datasets/fashion-mnist", ""))

    def test_synthetic_when_none(self):
        d, note, warn = preflight.choose_data("", lambda p: False)
        self.assertEqual((d, warn), ("", ""))
        self.assertTrue(note.startswith("synthetic (no Fashion-MNIST in ./data/fashion-mnist"))

    def test_a_given_directory_lacking_a_file(self):
        have = {"mine/" + f for f in preflight.IDX_FILES[:2]}
        self.assertEqual(preflight.choose_data("mine", have.__contains__),
                         ("", "synthetic (mine/t10k-images-idx3-ubyte.gz missing)",
                          "warning: mine/t10k-images-idx3-ubyte.gz missing: using synthetic data"))


class DepsTest(TempDirCase):
    def test_no_debs(self):
        env = {}
        self.assertEqual(preflight.carried_debs(self.dir, env), "system")
        self.assertEqual(env, {})

    def test_absolute_symlinks_point_into_the_prefix(self):
        p = self.dir
        self.write("usr/lib/libx.so.1", "lib")
        os.symlink("/usr/lib/libx.so.1", os.path.join(p, "usr/lib/libx.so"))
        os.symlink("/nonexistent/liby.so.1", os.path.join(p, "usr/lib/liby.so"))
        os.symlink("libx.so.1", os.path.join(p, "usr/lib/libz.so"))
        preflight.relink(p)
        self.assertEqual(os.readlink(os.path.join(p, "usr/lib/libx.so")), p + "/usr/lib/libx.so.1")
        self.assertEqual(os.readlink(os.path.join(p, "usr/lib/liby.so")), "/nonexistent/liby.so.1")
        self.assertEqual(os.readlink(os.path.join(p, "usr/lib/libz.so")), "libx.so.1")

    def test_library_path(self):
        env = {"LD_LIBRARY_PATH": "/a"}
        preflight.prepend_path(env, "LD_LIBRARY_PATH", preflight.lib_dirs("/p"))
        self.assertEqual(env["LD_LIBRARY_PATH"], "/p/usr/lib/x86_64-linux-gnu/openblas-pthread:"
                                                 "/p/usr/lib/x86_64-linux-gnu:/p/lib/x86_64-linux-gnu:/a")


class CudnnTest(TempDirCase):
    def test_system_cudnn(self):
        env = {}
        self.assertEqual(preflight.find_cudnn(env, exists=lambda p: p == "/usr/include/cudnn.h"), "system")
        self.assertEqual(env, {})

    def test_pytorch_wheel(self):
        env, asked = {"PYTHON": "/venv/bin/python"}, []

        def wheel(py):
            asked.append(py)
            return ("/w/include", "/w/lib/libcudnn.so.9") if py == "python3" else None
        note = preflight.find_cudnn(env, exists=lambda p: False, wheel=wheel)
        self.assertEqual(asked, ["/venv/bin/python", "python3"])
        self.assertEqual(note, "/w/lib/libcudnn.so.9 (PyTorch's wheel)")
        self.assertEqual((env["GC_CUDNN_INCLUDE"], env["GC_CUDNN_LIBRARY"], env["LD_LIBRARY_PATH"]),
                         ("/w/include", "/w/lib/libcudnn.so.9", "/w/lib"))

    def test_not_found(self):
        self.assertEqual(preflight.find_cudnn({}, exists=lambda p: False, wheel=lambda py: None), "not found")
