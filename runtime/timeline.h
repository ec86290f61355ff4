// Chrome trace events (chrome://tracing, Perfetto): spans recorded from any thread, written as
// one JSON file per rank with the rank as pid, as Horovod's timeline shows a step.
#pragma once
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace rf {

class Timeline {
 public:
  // pid: the rank. Times are microseconds since the Timeline was created.
  explicit Timeline(int pid = 0) : pid_(pid), origin_(std::chrono::steady_clock::now()) {}
  int64_t now_us() const {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - origin_).count();
  }
  // A complete span ("ph":"X") on thread lane `tid` (0 compute, 1 communication, 2 host: the
  // trainer's batch preparation and whole Session::run calls).
  void span(const std::string& name, const char* category, int tid, int64_t start_us, int64_t end_us);
  size_t size() const;
  // {"traceEvents": [...], "displayTimeUnit": "ms"}: this process's spans and lane names.
  std::string json() const;

 private:
  struct Event {
    std::string name;
    const char* category;
    int tid;
    int64_t start, dur;
  };
  int pid_;
  std::chrono::steady_clock::time_point origin_;
  mutable std::mutex mu_;
  std::vector<Event> events_;
};

}  // namespace rf
