// MPI initialisation on demand and finalisation at exit (see mpi_env.h).
#include "collective/mpi_env.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "collective/mpi_check.h"
#include "runtime/error.h"

namespace rf::collective {

bool started_by_mpi_launcher() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

#if RINGFLOW_MPI
std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "unknown MPI error";
  return std::string(buf, static_cast<size_t>(len));
}

namespace {
bool g_we_initialised = false;

void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialised && !finalized) MPI_Finalize();
}
}  // namespace
#endif

const MpiEnv& mpi_env() {
  static MpiEnv env;
  static std::once_flag once;
  std::call_once(once, [] {
#if RINGFLOW_MPI
    int initialised = 0;
    MPI_CHECK(MPI_Initialized(&initialised));
    if (!initialised && !started_by_mpi_launcher()) return;
    if (!initialised) {
      int provided = 0;
      MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
      g_we_initialised = true;
      std::atexit(finalize_at_exit);
    }
    MPI_CHECK(MPI_Query_thread(&env.thread_level));
    // Collectives run on one communication thread at a time; anything less cannot work.
    RF_CHECK(env.thread_level >= MPI_THREAD_SERIALIZED,
             "MPI provides thread level ", env.thread_level, " but ringflow needs MPI_THREAD_SERIALIZED or better");
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &env.world_rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &env.world_size));
    env.active = true;
#else
    const char* n = std::getenv("OMPI_COMM_WORLD_SIZE");
    if (!n) n = std::getenv("PMI_SIZE");
    RF_CHECK(!n || std::atoi(n) <= 1, "started by an MPI launcher with ", n,
             " ranks, but ringflow was built without MPI (RINGFLOW_MPI=OFF)");
#endif
  });
  return env;
}

namespace {
// Two buffers written in turn under a mutex; the SIGTERM handler writes whichever is current
// (write(2) only), then dies of the signal as it would have.
struct LastWords {
  char text[2][1024];
  size_t len[2] = {0, 0};
  std::atomic<int> current{-1};
  std::atomic<bool> silenced{false};
  std::mutex mu;
  int next = 0;
};
LastWords g_words;

extern "C" void say_last_words(int sig) {
  const int i = g_words.current.load(std::memory_order_acquire);
  if (i >= 0 && !g_words.silenced.load(std::memory_order_acquire)) {
    const ssize_t n = write(STDERR_FILENO, g_words.text[i], g_words.len[i]);
    (void)n;
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

namespace {
// MPI_Abort where this process is one of several ranks; returns otherwise. The pause first lets
// the launcher forward the error line just written to stderr: Open MPI tears the job down on
// MPI_Abort and can drop output still in flight (seen: a job that ended with only its banner).
void abort_ranks(int code) {
  g_words.silenced.store(true, std::memory_order_release);
  std::fflush(stderr);
#if RINGFLOW_MPI
  int initialised = 0, finalized = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalized);
  if (initialised && !finalized) {
    int size = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      MPI_Abort(MPI_COMM_WORLD, code);
    }
  }
#else
  (void)code;
#endif
}
}  // namespace


void arm_last_words() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa = {};
    sa.sa_handler = say_last_words;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
  });
}

void set_last_words(const std::string& line) {
  std::lock_guard<std::mutex> lk(g_words.mu);
  const int i = g_words.next;
  g_words.next ^= 1;
  const size_t n = std::min(line.size(), sizeof g_words.text[i]);
  std::memcpy(g_words.text[i], line.data(), n);
  g_words.len[i] = n;
  g_words.current.store(i, std::memory_order_release);
}

void clear_last_words() { g_words.current.store(-1, std::memory_order_release); }

void abort_job(int code) {
  abort_ranks(code);
  std::exit(code);
}

void abort_job_now(int code) {
  abort_ranks(code);
  std::_Exit(code);
}

}  // namespace rf::collective
