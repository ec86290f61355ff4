// The main() of the gtest programs that run under mpiexec: ranks other than 0 print only their
// failures (prefixed with the rank), and the run fails on every rank if any rank failed. Tests
// use EXPECT_* only, so that every rank keeps calling the same collectives whatever fails.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <functional>

#include "collective/mpi_env.h"
#if RINGFLOW_MPI
#include <mpi.h>
#endif

namespace rf::testing {

class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                   r.line_number(), r.summary());
  }

 private:
  int rank_;
};

// setup() runs before the tests and teardown() after them, on every rank (both collective).
inline int run_mpi_tests(int argc, char** argv, const std::function<void()>& setup = {},
                         const std::function<void()>& teardown = {}) {
  ::testing::InitGoogleTest(&argc, argv);
  const collective::MpiEnv& env = collective::mpi_env();
  if (env.world_rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new FailurePrinter(env.world_rank));
  }
  if (setup) setup();
  int failed = RUN_ALL_TESTS() != 0;
  if (teardown) teardown();
#if RINGFLOW_MPI
  if (env.active) {
    int any = 0;
    MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any && !failed && env.world_rank == 0) std::fprintf(stderr, "another rank failed\n");
    failed = any;
  }
#endif
  return failed;
}

}  // namespace rf::testing
