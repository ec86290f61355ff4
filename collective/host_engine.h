// The host-side engine under the ring and mpi backends: collectives queue in FIFO order (the
// same on every rank) and one communication thread runs them, so the caller's compute overlaps
// communication; a blocking call on an idle queue runs inline (no thread hand-off). Also here:
// world size 1 as local copies, the mismatch check, and the timeout that names the ranks not
// heard from.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collective/communicator.h"
#include "collective/mpi_check.h"
#include "collective/progress_board.h"

namespace rf::collective {

using Clock = std::chrono::steady_clock;

// Completion of one host collective: a flag, the error text, a condition variable.
struct HostWork : detail::WorkState {
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> done{false};
  std::string error;  // empty: success
  void finish(std::string err);
  void wait() override;
  bool test() override { return done.load(std::memory_order_acquire); }
};

struct Task : Collective {
  uint64_t seq = 0;             // 1, 2, ... in call order, the same on every rank
  Clock::time_point deadline;   // set when the task starts running
  std::shared_ptr<HostWork> work;
  const char* what = nullptr;   // names the wait in a timeout message (default: the collective kind)
};

class HostCommunicator : public Communicator {
 public:
  ~HostCommunicator() override;
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  const CommOptions& options() const { return opts_; }

  // Ends the job: prints "ringflow: error: <kind> #<seq> timed out after <s> s waiting for
  // rank(s) <r> on host <h> (from rank <me> on host <h>)" and aborts. The ranks named are those
  // that never started the collective or do not answer (asked through the ProgressBoard); when
  // every rank answers that it started it, `waiting_for`.
  [[noreturn]] void timeout_abort(const Task& t, const std::vector<int>& waiting_for);

  // Last words: a wait that lasts records what it waits for, and if the launcher ends the job
  // meanwhile (SIGTERM: another rank or a host failed), this rank says so in one line:
  // "ringflow: error: rank 0 on host h1: ended by the launcher (SIGTERM) while allreduce #57
  // waited for rank(s) 3 on host h2". clear_wait() when the wait is over.
  void note_wait(const Task& t, const std::vector<int>& peers);
  static void clear_wait();

 protected:
  explicit HostCommunicator(const CommOptions& opts);
  // Derived destructors call this first: runs what is queued, then stops the thread.
  void shutdown();
  // Runs one collective when size() > 1, on the communication thread or inline.
  virtual void execute(Task& t) = 0;
  // Returns this rank's fusion buffer of at least `bytes` (collective; runs as a task). The
  // default is private memory; allreduce_shm then reduces it in place like any buffer.
  virtual void* shm_alloc(size_t bytes);

  Work submit(Collective c, bool blocking) override;
  void* shm_buffer_impl(size_t bytes) override;

  // For backends that block inside one MPI call (no polling loop): a watchdog thread enforces
  // the deadline of the task between arm and disarm.
  void arm_watchdog(const Task* t);
  void disarm_watchdog();

#if RINGFLOW_MPI
  MPI_Comm world_ = MPI_COMM_NULL;  // our duplicate of MPI_COMM_WORLD (errors return)
  MPI_Comm node_ = MPI_COMM_NULL;   // the ranks of this node (or of the pretend node)
#endif
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  CommOptions opts_;
  std::vector<std::byte> private_shm_;  // shm_alloc's default
  // private_shm_ for allreduce_shm of t.count elements (throws when shm_buffer was smaller).
  void* private_shm_for(const Task& t);

 private:
  Work submit_task(std::shared_ptr<Task> t, bool blocking);
  void run(Task& t);
  void run_local(Task& t);
  void check_mismatch(Task& t);
  std::string task_name(const Task& t) const;                 // "allreduce #17"
  std::string ranks_named(const std::vector<int>& r) const;   // "2,3 on host h2"
  std::string me() const;                                     // "rank 0 on host h1"
  void thread_main();
  void watchdog_main();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool busy_ = false, stop_ = false;
  uint64_t seq_ = 0;
  std::thread thread_;

  std::mutex wd_mu_;
  std::condition_variable wd_cv_;
  const Task* wd_task_ = nullptr;
  bool wd_stop_ = false;
  std::thread wd_thread_;

#if RINGFLOW_MPI
  std::unique_ptr<ProgressBoard> board_;  // who started which collective, for the timeout message
#endif
};

// A polling loop's idle policy: spin briefly, then yield, then nap, so that ranks sharing a
// core (oversubscribed tests) still progress; past the task's deadline, timeout_abort.
class Poller {
 public:
  Poller(HostCommunicator& c, const Task& t) : c_(c), t_(t) {}
  ~Poller() {
    if (noted_) HostCommunicator::clear_wait();
  }
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;
  void progressed() { idle_ = 0; }
  // waiting_for() lists the peers this loop waits on (for the timeout message and last words).
  template <class F> void idle(F&& waiting_for) {
    if (++idle_ < kSpin) return relax();
    if (idle_ == kNote) c_.note_wait(t_, waiting_for()), noted_ = true;
    if (Clock::now() > t_.deadline) c_.timeout_abort(t_, waiting_for());
    backoff();
  }

 private:
  // ~64 pauses, then a few milliseconds of yields, then naps: a peer that is late by more
  // than that (still computing) should not cost this process a core. A wait that reaches
  // kNote (some hundred microseconds) is recorded for the last words.
  static constexpr unsigned kSpin = 64, kNote = 512, kYield = 4000;
  static void relax();
  void backoff();
  HostCommunicator& c_;
  const Task& t_;
  unsigned idle_ = 0;
  bool noted_ = false;
};

}  // namespace rf::collective
