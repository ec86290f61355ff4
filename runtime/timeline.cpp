// Timeline storage and its Chrome trace JSON.
#include "runtime/timeline.h"

#include <nlohmann/json.hpp>

namespace rf {

void Timeline::span(const std::string& name, const char* category, int tid, int64_t start_us, int64_t end_us) {
  std::lock_guard<std::mutex> lock(mu_);
  events_.push_back({name, category, tid, start_us, end_us - start_us});
}

size_t Timeline::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return events_.size();
}

std::string Timeline::json() const {
  nlohmann::json events = nlohmann::json::array();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Event& e : events_)
      events.push_back({{"name", e.name}, {"cat", e.category}, {"ph", "X"}, {"pid", pid_}, {"tid", e.tid},
                        {"ts", e.start}, {"dur", e.dur}});
  }
  const char* lanes[] = {"compute", "communication", "host"};
  for (int tid = 0; tid < 3; ++tid)
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid_}, {"tid", tid}, {"args", {{"name", lanes[tid]}}}});
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid_}, {"args", {{"name", "rank " + std::to_string(pid_)}}}});
  return nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump();
}

}  // namespace rf
