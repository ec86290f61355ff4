#include "collective/watchdog.h"

#include <exception>
#include <utility>

namespace rf::collective {

Watchdog::Watchdog(std::chrono::milliseconds poll, Fatal on_fatal, Health health)
    : poll_(poll), on_fatal_(std::move(on_fatal)), health_(std::move(health)), thread_([this] { main(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::watch(std::string what, Done done, Clock::time_point deadline) {
  std::lock_guard<std::mutex> lk(mu_);
  items_.push_back({std::move(what), std::move(done), deadline});
}

size_t Watchdog::pending() const {
  std::lock_guard<std::mutex> lk(mu_);
  return items_.size();
}

void Watchdog::main() {
  std::unique_lock<std::mutex> lk(mu_);
  while (!stop_) {
    cv_.wait_for(lk, poll_, [this] { return stop_; });
    if (stop_) break;
    // The oldest items first; the lock is released around the callbacks (done() may be a CUDA
    // query, on_fatal ends the process), so watch() never waits for them.
    while (!items_.empty()) {
      Item front = items_.front();
      lk.unlock();
      bool finished = false;
      try {
        finished = front.done();
      } catch (const std::exception& e) {  // the test itself failed (a CUDA error): as fatal
        on_fatal_(front.what + ": " + e.what(), false);
        finished = true;
      }
      const bool late = !finished && Clock::now() > front.deadline;
      if (late) on_fatal_(front.what, true);
      lk.lock();
      if (!finished && !late) break;  // still running: so are the ones behind it
      items_.pop_front();
    }
    if (health_) {
      lk.unlock();
      std::string why;
      try {
        why = health_();
      } catch (const std::exception& e) {
        why = e.what();
      }
      if (!why.empty()) on_fatal_(why, false);
      lk.lock();
    }
  }
}

}  // namespace rf::collective
