// Who has reached which collective, asked point-to-point: each rank keeps the number of the
// collective it last started, and a small responder thread answers peers that ask for it. A
// rank whose collective times out asks everyone; the ranks that answer with an older number
// never started it, the ranks that do not answer within the patience are dead or cut off. Only
// two-sided MPI is used, so it works between nodes whatever one-sided support the transport has
// (an MPI window over the whole job did not: Open MPI's osc components refuse it across TCP
// nodes with MPI_THREAD_MULTIPLE). Also the host name of every rank, for the messages.
#pragma once
#if RINGFLOW_MPI
#include <mpi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace rf::collective {

class ProgressBoard {
 public:
  // Collective over `comm` (duplicated, so its messages never match the collectives'). The
  // responder runs only with MPI_THREAD_MULTIPLE; without it ask() answers nothing.
  explicit ProgressBoard(MPI_Comm comm);
  ~ProgressBoard();
  ProgressBoard(const ProgressBoard&) = delete;
  ProgressBoard& operator=(const ProgressBoard&) = delete;

  // This rank has started collective `seq` (1, 2, ... as on every rank).
  void started(uint64_t seq) { seq_.store(seq, std::memory_order_release); }

  struct Answer {
    bool asked = false;         // false: no responder (thread level), nothing is known
    std::vector<int> late;      // answered with a number below seq: never started it
    std::vector<int> silent;    // no answer within the patience: dead, hung in MPI, or cut off
  };
  // Asks every other rank how far it got; returns within about `patience`.
  Answer ask(uint64_t seq, std::chrono::milliseconds patience);

  // The processor name (MPI_Get_processor_name) of rank r of the communicator.
  const std::string& host(int r) const { return hosts_[static_cast<size_t>(r)]; }
  // "2,3 on host h2; 5 on host h3": ranks grouped by host, hosts in order of first appearance.
  std::string describe(const std::vector<int>& ranks) const;

 private:
  void respond();

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<std::string> hosts_;
  std::atomic<uint64_t> seq_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread responder_;
};

}  // namespace rf::collective
#endif
