// collective::Watchdog: finished items are dropped, a late one and a failed health check reach
// the fatal handler (which here records instead of ending the process).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "collective/watchdog.h"

using rf::collective::Watchdog;
using namespace std::chrono_literals;

namespace {

struct Recorder {
  std::mutex mu;
  std::vector<std::pair<std::string, bool>> calls;
  Watchdog::Fatal handler() {
    return [this](const std::string& why, bool timed_out) {
      std::lock_guard<std::mutex> lk(mu);
      calls.emplace_back(why, timed_out);
    };
  }
  size_t count() {
    std::lock_guard<std::mutex> lk(mu);
    return calls.size();
  }
};

// Polls cond for up to 5 s.
template <class F> bool eventually(F cond) {
  for (int i = 0; i < 500; ++i) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

}  // namespace

TEST(Watchdog, FinishedItemsAreDroppedInOrder) {
  Recorder r;
  Watchdog w(5ms, r.handler());
  std::atomic<bool> first{false}, second{true};
  const auto far = Watchdog::Clock::now() + 1h;
  w.watch("first", [&] { return first.load(); }, far);
  w.watch("second", [&] { return second.load(); }, far);
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(w.pending(), 2u) << "the second is behind an unfinished first";
  first = true;
  EXPECT_TRUE(eventually([&] { return w.pending() == 0; }));
  EXPECT_EQ(r.count(), 0u);
}

TEST(Watchdog, ALateItemIsFatalOnce) {
  Recorder r;
  Watchdog w(5ms, r.handler());
  w.watch("allreduce #3 (64 B)", [] { return false; }, Watchdog::Clock::now() + 30ms);
  ASSERT_TRUE(eventually([&] { return r.count() >= 1; }));
  std::this_thread::sleep_for(50ms);
  ASSERT_EQ(r.count(), 1u) << "a fatal handler that returns drops the item";
  EXPECT_EQ(r.calls[0].first, "allreduce #3 (64 B)");
  EXPECT_TRUE(r.calls[0].second);
  EXPECT_EQ(w.pending(), 0u);
}

TEST(Watchdog, AFailedHealthCheckIsFatal) {
  Recorder r;
  std::atomic<bool> broken{false};
  Watchdog w(5ms, r.handler(), [&] { return broken ? std::string("remote rank 2 failed") : std::string(); });
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(r.count(), 0u);
  broken = true;
  ASSERT_TRUE(eventually([&] { return r.count() >= 1; }));
  EXPECT_EQ(r.calls[0].first, "remote rank 2 failed");
  EXPECT_FALSE(r.calls[0].second);
}

TEST(Watchdog, StopsWithItemsPending) {
  Recorder r;
  {
    Watchdog w(5ms, r.handler());
    w.watch("never", [] { return false; }, Watchdog::Clock::now() + 1h);
  }  // the destructor returns although the item never finishes
  EXPECT_EQ(r.count(), 0u);
}
