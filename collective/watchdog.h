// A thread that watches operations the host never waits on. Each has a completion test and a
// deadline; one that has not completed by its deadline, or a failed health check, goes to
// `on_fatal` with a one-line reason (which, in ringflow, ends the job). The NCCL backend's
// collectives are the reason it exists: with Work::wait_device the host only queues a stream
// wait, so a collective that never finishes (a rank missing, ranks calling different
// collectives) would otherwise hang the step's final synchronisation forever (PyTorch's NCCL
// watchdog, the same idea).
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace rf::collective {

class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  // done(): true once the operation finished; called on the watchdog's thread.
  using Done = std::function<bool()>;
  // health(): "" while all is well, else the reason to give up (called every poll).
  using Health = std::function<std::string()>;
  // on_fatal(reason, timed_out): reason is an item's `what` (timed_out) or health()'s answer.
  // In ringflow it ends the job; if it returns, the item is dropped.
  using Fatal = std::function<void(const std::string& reason, bool timed_out)>;

  Watchdog(std::chrono::milliseconds poll, Fatal on_fatal, Health health = {});
  ~Watchdog();  // stops and joins the thread (pending items are forgotten)
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Watches one operation, described by `what` in the fatal message ("allreduce #12, 4 MiB").
  // Items are checked in the order they were added and a finished one is dropped; a later item
  // counts as pending while an earlier one is (operations on one stream finish in order).
  void watch(std::string what, Done done, Clock::time_point deadline);
  size_t pending() const;

 private:
  struct Item {
    std::string what;
    Done done;
    Clock::time_point deadline;
  };
  void main();

  const std::chrono::milliseconds poll_;
  const Fatal on_fatal_;
  const Health health_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> items_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace rf::collective
