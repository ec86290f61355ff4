// Collectives among the ranks of one node through an MPI shared-memory window: each rank reduces
// its slice by reading the other ranks' data straight from their segments, in cache-sized
// blocks handed over with release/acquire counters (no MPI call on the data path), so each byte
// of a large buffer leaves memory once and is reduced while it is still in cache.
#pragma once
#if RINGFLOW_MPI
#include <cstddef>
#include <cstdint>
#include <vector>

#include "collective/host_engine.h"

namespace rf::collective {

class ShmNode final : public PeerWindow {
 public:
  // node: the ranks sharing memory; block_bytes: the pipeline block per slice.
  ShmNode(HostCommunicator& owner, MPI_Comm node, size_t block_bytes);
  ~ShmNode();
  int size() const { return L_; }
  int rank() const { return p_; }

  // Who receives the whole reduction: every rank, local rank `root`, or nobody (each rank gets
  // only its own slice of slices(): a reduce-scatter in allreduce's layout).
  enum class Gather { All, Root, None };
  // out = op over the node's `in` (every rank, or only local rank `root`). in == nullptr: the
  // input is this rank's data region (data()), reduced in place there. avg_div as in reduce_into.
  void allreduce(const Task& t, const void* in, void* out, size_t count, DType dtype, ReduceOp op, int avg_div,
                 Gather gather, int root = 0);
  // allreduce's slices of `count` elements, one per local rank: ceil(count / size()) rounded to
  // whole cache lines, contiguous and in rank order (the last ones shorter or empty).
  void slices(size_t count, DType dtype, std::vector<size_t>& off, std::vector<size_t>& len) const;
  void reduce_scatter(const Task& t, const void* in, void* out, size_t recv_count, DType dtype, ReduceOp op,
                      int avg_div);
  void broadcast(const Task& t, void* buf, size_t count, DType dtype, int root);
  void allgatherv(const Task& t, const void* send, void* recv, const std::vector<size_t>& counts, DType dtype);
  void barrier(const Task& t);

  // This rank's data region of at least `bytes` (collective over the node; contents are not
  // kept when it grows).
  void* data(const Task& t, size_t bytes);
  void* data() const { return data_[p_]; }

  // PeerWindow (when the node is the whole job): the data regions and flags beside the
  // collectives' counters. wait() does not involve the communication thread.
  const void* buffer(int world_rank) const override;
  uint64_t flag(int f) const override;
  void publish(int f, uint64_t value) override;
  void wait(int f, uint64_t value, const char* what) override;

 private:
  struct Counters;  // one rank's progress counters, each on its own cache lines
  struct Reduce;
  void reduce(const Task& t, const Reduce& r);
  Counters& ctr(int q) const;
  char* slot(int q, uint64_t j) const;  // rank q's staging slot for block j (L sub-blocks)
  uint64_t begin(const Task& t);        // waits until every rank finished the previous collective
  void end(uint64_t c, uint64_t blocks);
  // Waits until counter field(q) >= v.
  void wait(const Task& t, int q, const uint64_t Counters::*field, uint64_t v) const;

  HostCommunicator& owner_;
  MPI_Comm node_;
  int L_ = 1, p_ = 0;
  std::vector<int> world_of_;
  size_t block_bytes_;
  static constexpr uint64_t kSlots = 4;  // staging slots per rank (blocks in flight)
  MPI_Win ctrl_win_ = MPI_WIN_NULL;
  std::vector<char*> ctrl_;  // each rank's counters + staging slots
  MPI_Win data_win_ = MPI_WIN_NULL;
  std::vector<char*> data_;  // each rank's data region (shm_buffer)
  size_t data_bytes_ = 0;
  uint64_t coll_ = 0;  // shared-memory collectives so far (the same on every rank)
  uint64_t base_ = 0;  // blocks so far: counters compare against base_ + block + 1
};

}  // namespace rf::collective
#endif
