"""The build stage's log reading and verdict."""
import unittest

from gpu_check import buildlog

LOG = """[1/40] Building CXX object a.o
[2/40] Building CUDA object kernels/gemm.cu.o
FAILED: kernels/gemm.cu.o
/usr/local/cuda/bin/nvcc    -O3   -c gemm.cu

kernels/gemm.cu(12): error: identifier "x" is undefined
ninja: build stopped: subcommand failed.
"""


class FirstErrorTest(unittest.TestCase):
    def test_the_error_and_two_more_lines_on_one_line(self):
        self.assertEqual(buildlog.first_error(LOG), "FAILED: kernels/gemm.cu.o /usr/local/cuda/bin/nvcc -O3 -c gemm.cu "
                                                    'kernels/gemm.cu(12): error: identifier "x" is undefined ')

    def test_cmake_error(self):
        log = "-- Found CUDA\nCMake Error at CMakeLists.txt:40 (find_package):\n  Could not find cuDNN\n"
        self.assertEqual(buildlog.first_error(log), "CMake Error at CMakeLists.txt:40 (find_package): Could not find cuDNN ")

    def test_no_error_gives_the_last_line(self):
        self.assertEqual(buildlog.first_error("one\ntwo\nKilled\n"), "Killed")
        self.assertEqual(buildlog.first_error(""), "")

    def test_at_most_300_characters(self):
        self.assertEqual(len(buildlog.first_error("error: " + "x" * 400)), 300)


class BuildResultTest(unittest.TestCase):
    def result(self, rc_rf, rc_t, mpi="ON", nccl="ON"):
        return buildlog.build_result(rc_rf, rc_t, 100, 110, 160, 16, mpi, nccl, LOG, "tests.cpp:3: error: no\n")

    def test_pass(self):
        r = self.result(0, 0)
        self.assertEqual(r, {"status": "PASS", "summary": "built in 60 s (configure 10 s, -j16, MPI ON, NCCL ON)",
                             "configure_seconds": 10, "compile_seconds": 50, "build_seconds": 60, "jobs": 16,
                             "mpi": "ON", "nccl": "ON"})

    def test_unknown_mpi(self):
        self.assertIn("MPI ?", self.result(0, 0, mpi="")["summary"])

    def test_failures(self):
        r = self.result(1, 1)
        self.assertEqual(r["status"], "FAIL")
        self.assertTrue(r["summary"].startswith("ringflow failed to build (exit 1) after 60 s: FAILED: kernels/gemm.cu.o"))
        r = self.result(0, 2)
        self.assertEqual(r["summary"], "ringflow built, ringflow_tests failed (exit 2) after 60 s: tests.cpp:3: error: no ")
        self.assertEqual(self.result(124, 124)["status"], "TIMEOUT")
        self.assertEqual(self.result(0, 137)["summary"], "build timed out after 60 s")

    def test_configure(self):
        r = buildlog.configure_failed(1, 4, "CMake Error: no CUDA\n")
        self.assertEqual(r, {"status": "FAIL", "summary": "cmake configure failed (exit 1): CMake Error: no CUDA ",
                             "configure_seconds": 4})
        self.assertEqual(buildlog.nccl_found("-- ringflow: nccl collective backend on\n"), "ON")
        self.assertEqual(buildlog.nccl_found("-- nothing\n"), "OFF")
        cache = "//Use MPI\nRINGFLOW_MPI:BOOL=ON\nRINGFLOW_MPI_X:BOOL=OFF\n"
        self.assertEqual(buildlog.cache_value(cache, "RINGFLOW_MPI"), "ON")
        self.assertEqual(buildlog.cache_value(cache, "RINGFLOW_NCCL"), "")
