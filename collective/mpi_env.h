// Process-wide MPI state. MPI is initialised once, on first use, only when the process was
// started by an MPI launcher (mpirun/mpiexec/srun put their rank variables in the environment);
// otherwise it is never touched and the job is world size 1, so single-device runs need no MPI.
#pragma once
#include <string>

namespace rf::collective {

struct MpiEnv {
  bool active = false;   // MPI is initialised and usable
  int thread_level = 0;  // MPI_THREAD_* provided (MPI_THREAD_SERIALIZED or better when active)
  int world_rank = 0;
  int world_size = 1;
};

// True when an MPI launcher started this process (OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK).
bool started_by_mpi_launcher();

// Initialises MPI on the first call when started by a launcher (MPI_Init_thread asking for
// MPI_THREAD_MULTIPLE, accepting SERIALIZED) and registers MPI_Finalize at exit. Thread-safe.
const MpiEnv& mpi_env();

// Ends the process with `code`. In a multi-rank job it calls MPI_Abort, because peers may be
// blocked in a collective waiting for this rank; MPI_Finalize would hang instead.
[[noreturn]] void abort_job(int code);
// The same from any thread while others run (a watchdog): MPI_Abort, or std::_Exit (no atexit
// handlers, no static destructors) for one process. stderr is flushed first.
[[noreturn]] void abort_job_now(int code);

// Last words: a line this process writes to stderr if the launcher ends it with SIGTERM (as
// mpirun does to every rank when another rank or a host fails), saying what it was waiting for.
// arm_last_words installs the handler (once); set_last_words replaces the line, clear_last_words
// withdraws it. A process that ends the job itself (abort_job*) has said its own line and stays
// silent.
void arm_last_words();
void set_last_words(const std::string& line);
void clear_last_words();

}  // namespace rf::collective
