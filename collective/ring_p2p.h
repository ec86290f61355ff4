// The ring over MPI non-blocking point-to-point: reduce-scatter then allgather around the ranks
// of a communicator, each segment step cut into chunks that are pipelined (receives posted
// ahead, partial sums kept in a few chunk slots) so reducing one chunk overlaps moving the next.
// Between two ranks allreduce is a pipelined exchange instead (one hop, the same bytes).
#pragma once
#if RINGFLOW_MPI
#include <cstddef>
#include <vector>

#include "collective/host_engine.h"

namespace rf::collective {

class P2PRing {
 public:
  // comm: the ring's ranks (all ranks, or the node leaders); errors must return.
  P2PRing(HostCommunicator& owner, MPI_Comm comm, size_t chunk_bytes);
  int size() const { return n_; }

  // Each is a whole collective over comm. avg_div: the divisor of ReduceOp::Avg (the world
  // size, which in the hierarchical case is not this ring's size).
  void allreduce(const Task& t, const void* send, void* recv, size_t count, DType dtype, ReduceOp op,
                 int avg_div);
  void reduce_scatter(const Task& t, const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp op,
                      int avg_div);
  void allgatherv(const Task& t, const void* send, void* recv, const std::vector<size_t>& counts, DType dtype);
  void broadcast(const Task& t, void* buf, size_t count, DType dtype, int root);

 private:
  struct Plan;
  void run(const Task& t, const Plan& p);
  void exchange(const Task& t, const void* send, void* recv, size_t count, DType dtype, ReduceOp op, int avg_div);

  HostCommunicator& owner_;
  MPI_Comm comm_;
  int n_ = 1, r_ = 0, left_ = 0, right_ = 0;
  int left_world_ = 0, right_world_ = 0;  // for the timeout message
  std::vector<int> world_of_;             // comm rank -> world rank
  size_t chunk_bytes_;
  std::vector<std::byte> slots_;          // receive / partial-sum chunk slots
};

}  // namespace rf::collective
#endif
