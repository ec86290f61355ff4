// The `ringflow` program (its flags: models/cli.cpp). Every failure ends in one
// "ringflow: error: ..." line on stderr and a non-zero exit status.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>

#include "collective/mpi_env.h"
#include "models/cli.h"
#include "models/trainer.h"
#include "runtime/error.h"

namespace {

// This process's rank as the launcher tells it (Open MPI, PMI, PMIx), readable before MPI is
// initialised; 0 outside a launcher.
int launcher_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* v = std::getenv(name)) return std::atoi(v);
  return 0;
}

// Whether this rank prints a flag error (flags are parsed before MPI starts, so ranks cannot
// agree on it): rank 0, whose arguments every rank shares in a plain launch, and under Open MPI's
// MPMD launches (`mpirun -np 1 ringflow ... : -np 1 ringflow ...`) the first rank of each app
// context, whose arguments may differ from rank 0's. Open MPI tells a rank its context
// (OMPI_MCA_orte_app_num) and every context's size (OMPI_APP_CTX_NUM_PROCS).
bool reports_flag_errors() {
  const int rank = launcher_rank();
  if (rank == 0) return true;
  const char* app = std::getenv("OMPI_MCA_orte_app_num");
  const char* sizes = std::getenv("OMPI_APP_CTX_NUM_PROCS");
  if (!app || !sizes) return false;
  const int k = std::atoi(app);
  std::istringstream in(sizes);
  int first = 0, size = 0;
  for (int i = 0; i < k; ++i) {
    if (!(in >> size)) return false;
    first += size;
  }
  return k > 0 && rank == first;
}

// With several ranks an error during training must end the whole job from where it was thrown:
// unwinding would run destructors that wait for the peers (a shared window's collective free, a
// fused update's flag), while the peers wait for this rank. So main catches only JobError there
// (which every rank raises alike), an exception nothing catches is not unwound, and this handler
// prints its one line and aborts the job.
[[noreturn]] void report_and_abort() {
  std::string what = "unknown error";
  if (const std::exception_ptr ep = std::current_exception()) {
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
  }
  std::fprintf(stderr, "ringflow: error: rank %d: %s\n", launcher_rank(), what.c_str());
  rf::collective::abort_job_now(1);  // from any thread: no atexit handlers while others run
}

}  // namespace

int main(int argc, char** argv) {
  const rf::CommandLine cl = rf::parse_command_line(argc, argv, std::cout);
  if (cl.list_models) {
    rf::print_models(std::cout);
    return 0;
  }
  if (cl.sample) {
    try {
      std::cout << rf::sample_gpt(cl.sample_config) << std::endl;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ringflow: error: %s\n", e.what());
      return 1;
    }
    return 0;
  }
  if (!cl.train) {
    if (cl.exit_code == 2 && reports_flag_errors())  // a bad flag (--help exits 0)
      std::fprintf(stderr, "ringflow: error: %s (see ringflow train --help)\n", cl.error.c_str());
    return cl.exit_code;
  }
  const rf::TrainConfig& c = cl.config;
  auto run = [&] {
    const nlohmann::json summary = rf::train(c);
    if (summary["rank"].get<int>() == 0) std::cout << summary.dump() << std::endl;
  };
  if (rf::collective::started_by_mpi_launcher()) {
    std::set_terminate(report_and_abort);
    try {
      run();
    } catch (const rf::JobError& e) {  // raised on every rank: one line, and a normal exit
      if (e.print) std::fprintf(stderr, "ringflow: error: %s\n", e.what());
      return 1;
    }  // anything else has no handler: report_and_abort, from the throw site
    return 0;
  }
  try {
    run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ringflow: error: %s\n", e.what());
    rf::collective::abort_job(1);  // one process: a plain exit
  }
  return 0;
}
