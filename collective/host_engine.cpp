// The host engine (see host_engine.h): task queue and communication thread, local copies at
// world size 1, the mismatch check, the progress board and the collective timeout.
#include "collective/host_engine.h"

#include <sched.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "collective/mismatch.h"
#include "collective/mpi_env.h"
#include "runtime/error.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace rf::collective {

void HostWork::finish(std::string err) {
  {
    std::lock_guard<std::mutex> lk(mu);
    error = std::move(err);
    done.store(true, std::memory_order_release);
  }
  cv.notify_all();
}

void HostWork::wait() {
  if (!done.load(std::memory_order_acquire)) {
    std::unique_lock<std::mutex> lk(mu);
    cv.wait(lk, [&] { return done.load(std::memory_order_acquire); });
  }
  if (!error.empty()) throw Error(error);
}

void Poller::relax() {
#if defined(__x86_64__)
  _mm_pause();
#endif
}

void Poller::backoff() {
  if (idle_ < kYield) {
    sched_yield();
  } else {  // a long wait (a slow peer): stop competing for the core
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

namespace {

#if RINGFLOW_MPI
// With less than MPI_THREAD_MULTIPLE, collectives of different communicators must not call MPI
// at the same time: they take turns on this lock.
std::mutex g_serial_mpi;
#endif

std::string join(const std::vector<int>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(ranks[i]);
  }
  return s;
}

std::string format_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

}  // namespace

HostCommunicator::HostCommunicator(const CommOptions& opts) : opts_(opts) {
  const MpiEnv& env = mpi_env();
  (void)env;
#if RINGFLOW_MPI
  if (!env.active || env.world_size == 1) return;
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &world_));
  MPI_CHECK(MPI_Comm_set_errhandler(world_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(world_, &rank_));
  MPI_CHECK(MPI_Comm_size(world_, &size_));
  MPI_CHECK(MPI_Comm_split_type(world_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node_));
  if (opts_.ranks_per_node > 0) {
    // Pretend nodes are cut out of the real ones: shared memory never has to span machines.
    MPI_Comm real = node_;
    int local = 0;
    MPI_CHECK(MPI_Comm_rank(real, &local));
    MPI_CHECK(MPI_Comm_split(real, local / opts_.ranks_per_node, rank_, &node_));
    MPI_CHECK(MPI_Comm_free(&real));
  }
  MPI_CHECK(MPI_Comm_set_errhandler(node_, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_rank(node_, &local_rank_));
  MPI_CHECK(MPI_Comm_size(node_, &local_size_));
  board_ = std::make_unique<ProgressBoard>(world_);
  arm_last_words();
#endif
}

HostCommunicator::~HostCommunicator() {
  shutdown();
#if RINGFLOW_MPI
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // Destructors only log.
  auto log = [](int rc, const char* what) {
    if (rc != MPI_SUCCESS)
      std::fprintf(stderr, "ringflow: warning: %s failed: %s\n", what, mpi_error_string(rc).c_str());
  };
  board_.reset();
  if (node_ != MPI_COMM_NULL) log(MPI_Comm_free(&node_), "MPI_Comm_free");
  if (world_ != MPI_COMM_NULL) log(MPI_Comm_free(&world_), "MPI_Comm_free");
#endif
}

void HostCommunicator::shutdown() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard<std::mutex> lk(wd_mu_);
    wd_stop_ = true;
  }
  wd_cv_.notify_all();
  if (wd_thread_.joinable()) wd_thread_.join();
}

Work HostCommunicator::submit(Collective c, bool blocking) {
  auto t = std::make_shared<Task>();
  static_cast<Collective&>(*t) = std::move(c);
  return submit_task(std::move(t), blocking);
}

Work HostCommunicator::submit_task(std::shared_ptr<Task> t, bool blocking) {
  t->work = std::make_shared<HostWork>();
  Work w(t->work);
  std::unique_lock<std::mutex> lk(mu_);
  RF_CHECK(!stop_, "collective ", coll_kind_name(t->kind), " called on a communicator being destroyed");
  t->seq = ++seq_;
  if (size_ == 1 || (blocking && queue_.empty() && !busy_)) {
    // Nothing ahead of it: run here and spare the hand-off to the communication thread.
    busy_ = true;
    lk.unlock();
    run(*t);
    lk.lock();
    busy_ = false;
    lk.unlock();
    cv_.notify_all();
  } else {
    if (!thread_.joinable()) thread_ = std::thread(&HostCommunicator::thread_main, this);
    queue_.push_back(std::move(t));
    lk.unlock();
    cv_.notify_all();
  }
  if (blocking) w.wait();
  return w;
}

void HostCommunicator::thread_main() {
  for (;;) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return !busy_ && (!queue_.empty() || stop_); });
    if (queue_.empty()) return;  // stopping, and everything queued has run
    std::shared_ptr<Task> t = std::move(queue_.front());
    queue_.pop_front();
    busy_ = true;
    lk.unlock();
    run(*t);
    lk.lock();
    busy_ = false;
    lk.unlock();
    cv_.notify_all();
  }
}

void HostCommunicator::run(Task& t) {
  std::unique_lock<std::mutex> serial;
#if RINGFLOW_MPI
  if (size_ > 1 && mpi_env().thread_level < MPI_THREAD_MULTIPLE) serial = std::unique_lock<std::mutex>(g_serial_mpi);
#endif
  t.deadline = opts_.deadline();
  try {
    if (size_ == 1) {
      run_local(t);
    } else {
#if RINGFLOW_MPI
      board_->started(t.seq);
#endif
      if (opts_.check_mismatch) check_mismatch(t);
      if (t.kind == CollKind::ShmAlloc)
        t.recv = shm_alloc(t.count);
      else
        execute(t);
    }
    t.work->finish({});
  } catch (const std::exception& e) {
    t.work->finish(e.what());
  }
}

// World size 1: every collective is the identity (Avg divides by 1), so at most a copy.
void HostCommunicator::run_local(Task& t) {
  const size_t es = dtype_size(t.dtype);
  auto copy = [&](void* dst, const void* src, size_t n) {
    if (dst != src && n) std::memmove(dst, src, n * es);
  };
  switch (t.kind) {
    case CollKind::Allreduce:
    case CollKind::Allgather:
    case CollKind::ReduceScatter: copy(t.recv, t.send, t.count); break;
    case CollKind::Allgatherv: copy(t.recv, t.send, t.counts[0]); break;
    case CollKind::ShmAlloc:
      if (private_shm_.size() < t.count) private_shm_.resize(t.count);
      t.recv = private_shm_.data();
      break;
    case CollKind::Broadcast:
    case CollKind::Barrier:
    case CollKind::AllreduceShm: break;
  }
}

void* HostCommunicator::shm_alloc(size_t bytes) {
  if (private_shm_.size() < bytes) private_shm_.resize(bytes);
  return private_shm_.data();
}

void* HostCommunicator::private_shm_for(const Task& t) {
  const size_t es = dtype_size(t.dtype);
  RF_CHECK((t.offset + t.count) * es <= private_shm_.size(), "allreduce_shm of ", t.count * es, " bytes at offset ",
           t.offset * es, ", but shm_buffer holds ", private_shm_.size());
  return private_shm_.data() + t.offset * es;
}

void* HostCommunicator::shm_buffer_impl(size_t bytes) {
  // A task, so the (collective) allocation keeps its place in the FIFO; it returns the pointer.
  auto t = std::make_shared<Task>();
  t->kind = CollKind::ShmAlloc;
  t->count = bytes;
  submit_task(t, true);
  return t->recv;
}

void HostCommunicator::check_mismatch(Task& t) {
#if RINGFLOW_MPI
  const CollDesc mine = describe(t, t.seq);
  std::vector<CollDesc> all(static_cast<size_t>(size_));
  MPI_Request req;
  MPI_CHECK(MPI_Iallgather(&mine, sizeof(CollDesc), MPI_BYTE, all.data(), sizeof(CollDesc), MPI_BYTE, world_, &req));
  Poller poll(*this, t);
  for (int done = 0;;) {
    MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
    if (done) break;
    poll.idle([] { return std::vector<int>{}; });
  }
  const std::string report = mismatch_report(all, t.seq);
  if (!report.empty()) throw Error(report);
#else
  (void)t;
#endif
}

void HostCommunicator::timeout_abort(const Task& t, const std::vector<int>& waiting_for) {
  static std::atomic<bool> aborting{false};
  if (aborting.exchange(true)) {  // another thread is already reporting; let it finish
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::vector<int> named = waiting_for, silent;
#if RINGFLOW_MPI
  // Asking calls MPI from this thread (the watchdog's too): the board only answers with
  // MPI_THREAD_MULTIPLE. Waits outside the collective sequence (seq 0: the fused update's flags)
  // name the ranks they waited for.
  if (board_ && t.seq > 0) {
    const ProgressBoard::Answer a = board_->ask(t.seq, std::chrono::seconds(2));
    silent = a.silent;
    if (!a.late.empty() || !a.silent.empty()) {
      named = a.late;
      named.insert(named.end(), a.silent.begin(), a.silent.end());
      std::sort(named.begin(), named.end());
    }
  }
#endif
  std::string msg = task_name(t) + " timed out after " + format_seconds(opts_.timeout_seconds) +
                    " s waiting for rank(s) " + (named.empty() ? std::string("unknown") : ranks_named(named));
  if (!silent.empty()) msg += " (no answer from " + join(silent) + ": dead, hung, or its link is down)";
  msg += " (from " + me() + ")";
  std::fprintf(stderr, "ringflow: error: %s\n", msg.c_str());
  abort_job_now(1);
}

std::string HostCommunicator::task_name(const Task& t) const {
  std::string s = t.what ? t.what : coll_kind_name(t.kind);
  if (t.seq > 0) s += " #" + std::to_string(t.seq);
  return s;
}

std::string HostCommunicator::ranks_named(const std::vector<int>& r) const {
#if RINGFLOW_MPI
  if (board_) return board_->describe(r);
#endif
  return join(r);
}

std::string HostCommunicator::me() const {
  std::string s = "rank " + std::to_string(rank_);
#if RINGFLOW_MPI
  if (board_) s += " on host " + board_->host(rank_);
#endif
  return s;
}

void HostCommunicator::note_wait(const Task& t, const std::vector<int>& peers) {
  set_last_words("ringflow: error: " + me() + ": ended by the launcher (SIGTERM) while " + task_name(t) +
                 (peers.empty() ? std::string(" was running") : " waited for rank(s) " + ranks_named(peers)) + "\n");
}

void HostCommunicator::clear_wait() { clear_last_words(); }

void HostCommunicator::arm_watchdog(const Task* t) {
  note_wait(*t, {});
  std::lock_guard<std::mutex> lk(wd_mu_);
  if (!wd_thread_.joinable()) wd_thread_ = std::thread(&HostCommunicator::watchdog_main, this);
  wd_task_ = t;
  wd_cv_.notify_all();
}

void HostCommunicator::disarm_watchdog() {
  clear_wait();
  std::lock_guard<std::mutex> lk(wd_mu_);
  wd_task_ = nullptr;
  wd_cv_.notify_all();
}

void HostCommunicator::watchdog_main() {
  std::unique_lock<std::mutex> lk(wd_mu_);
  while (!wd_stop_) {
    if (!wd_task_) {
      wd_cv_.wait(lk);
      continue;
    }
    const Task* t = wd_task_;
    // A copy: wait_until reads its deadline again after waking, and by then disarm_watchdog may
    // have let the task go (ASan: heap-use-after-free).
    const Clock::time_point deadline = t->deadline;
    if (Clock::now() < deadline) {
      wd_cv_.wait_until(lk, deadline);
      continue;
    }
    // Past the deadline: report from a copy taken under the lock, for the same reason.
    const Task late = *t;
    lk.unlock();
    timeout_abort(late, {});
  }
}

}  // namespace rf::collective
