// Collective communication between the replicas of a data-parallel job: the Communicator
// interface every backend implements (`ring`: ours, over MPI point-to-point or an MPI
// shared-memory window; `mpi`: MPI_Allreduce and friends; `nccl`: NCCL on a CUDA stream), its
// options and the asynchronous Work handle. Buffers are pointers + element count + DType: host
// memory for ring and mpi, device memory for nccl.
#pragma once
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace rf::collective {

// Avg is Sum divided by the world size, in the accumulation type (f32 for f16/bf16, f64 for
// f64); integers truncate toward zero.
enum class ReduceOp : uint8_t { Sum, Avg, Min, Max };
const char* reduce_op_name(ReduceOp op);

// How the ring moves data: MPI point-to-point, or reading straight from the other ranks'
// buffers in an MPI shared-memory window (same node; across nodes the node leaders run the
// point-to-point ring: hierarchical). Auto picks shm when ranks share a node.
enum class Transport : uint8_t { Auto, P2P, Shm };
const char* transport_name(Transport t);

struct CommOptions {
  Transport transport = Transport::Auto;  // env RINGFLOW_RING_TRANSPORT=auto|p2p|shm
  bool check_mismatch = false;            // env RINGFLOW_CHECK_COLLECTIVES=1
  double timeout_seconds = 300.0;         // env RINGFLOW_COLLECTIVE_TIMEOUT (seconds)
  size_t chunk_bytes = 0;                 // pipeline chunk; 0 = transport default (env RINGFLOW_CHUNK_BYTES)
  // Testing only: pretend nodes of this many consecutive ranks of each real node (0 = the real
  // nodes), so the hierarchical path runs on one machine. Env RINGFLOW_RANKS_PER_NODE.
  int ranks_per_node = 0;
  // now + timeout_seconds: when a collective started now gives up.
  std::chrono::steady_clock::time_point deadline() const {
    return std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                  std::chrono::duration<double>(timeout_seconds));
  }
};

// `base` with the RINGFLOW_* environment variables above applied over it; throws rf::Error on
// a malformed value.
CommOptions options_from_env(CommOptions base = {});
// A byte count: a non-negative decimal number with an optional K, M or G suffix (powers of
// 1024; "1.5M" is allowed). Throws rf::Error naming `what` otherwise. Used for the RINGFLOW_*
// sizes and the benchmarks' -b/-e flags.
size_t parse_size(const std::string& what, const std::string& text);

// What a collective is, as every rank must call it (the mismatch check compares these).
enum class CollKind : uint8_t { Allreduce, Broadcast, Allgather, Allgatherv, ReduceScatter, Barrier,
                                AllreduceShm, ShmAlloc };
const char* coll_kind_name(CollKind k);

struct Collective {
  CollKind kind = CollKind::Barrier;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;             // elements; per rank for allgather and reduce_scatter
  DType dtype = DType::F32;
  ReduceOp op = ReduceOp::Sum;
  int root = 0;
  std::vector<size_t> counts;   // allgatherv: elements from each rank
  size_t offset = 0;            // allreduce_shm: first element, counted from the shm_buffer start
};

namespace detail {
// A backend's completion state behind a Work handle (host: a flag and a condition variable;
// CUDA: an event).
struct WorkState {
  virtual ~WorkState() = default;
  virtual void wait() = 0;  // blocks; throws rf::Error when the collective failed
  virtual bool test() = 0;  // never blocks
  virtual void wait_device() { wait(); }  // see Work::wait_device
};
}  // namespace detail

// Handle to an asynchronous collective. Buffers must stay untouched until wait() returns
// or test() has returned true.
class Work {
 public:
  Work() = default;  // already finished, successfully
  explicit Work(std::shared_ptr<detail::WorkState> s) : state_(std::move(s)) {}
  void wait() {  // throws rf::Error when the collective failed
    if (state_) state_->wait();
  }
  bool test() { return !state_ || state_->test(); }  // then wait() returns (or throws) at once
  // Device backends (nccl): the device's compute stream waits for the collective (an event), the
  // host does not, so kernels queued after this call see the result. Host backends: wait().
  void wait_device() {
    if (state_) state_->wait_device();
  }

 private:
  std::shared_ptr<detail::WorkState> state_;
};

// The other ranks' shm_buffer, readable in place, where every rank of the job shares one node's
// memory (the ring backend's shm transport): the Reducer's fused update reads its peers'
// gradients straight from there instead of allreducing them. Flags are per-rank monotonic
// counters for the hand-offs (a release store, acquire loads).
class PeerWindow {
 public:
  static constexpr int kFlags = 2;
  virtual ~PeerWindow() = default;
  // Rank r's shm_buffer (world rank; r == rank() is this rank's own). Moves when shm_buffer grows.
  virtual const void* buffer(int r) const = 0;
  virtual uint64_t flag(int f) const = 0;             // this rank's flag f
  virtual void publish(int f, uint64_t value) = 0;    // this rank's flag f := value
  // Returns once every other rank's flag f >= value. Past the communicator's timeout the job ends
  // with one line naming `what` and the ranks waited for.
  virtual void wait(int f, uint64_t value, const char* what) = 0;
};

// Every rank calls the same collectives in the same order (the communicator, its creation and
// its destruction are collective too). In place: send == recv for allreduce; for allgather(v)
// send == recv + (this rank's offset) and for reduce_scatter recv == send + rank * recv_count,
// as in NCCL. Blocking forms are the async form waited (a backend may run them inline).
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual int local_rank() const = 0;  // among the ranks sharing this node
  virtual int local_size() const = 0;
  virtual std::string name() const = 0;  // e.g. "ring(shm)", "mpi", "local"

  // recv[i] = op over ranks of send[i], count elements.
  Work allreduce_async(const void* send, void* recv, size_t count, DType dtype, ReduceOp op);
  void allreduce(const void* send, void* recv, size_t count, DType dtype, ReduceOp op);
  void allreduce(void* buf, size_t count, DType dtype, ReduceOp op) { allreduce(buf, buf, count, dtype, op); }
  // buf on every rank = buf on root.
  Work broadcast_async(void* buf, size_t count, DType dtype, int root);
  void broadcast(void* buf, size_t count, DType dtype, int root);
  // recv (size() * count elements) = every rank's send (count elements), in rank order.
  Work allgather_async(const void* send, void* recv, size_t count, DType dtype);
  void allgather(const void* send, void* recv, size_t count, DType dtype);
  // As allgather with counts[r] elements from rank r (counts the same on every rank).
  Work allgatherv_async(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype);
  void allgatherv(const void* send, void* recv, const std::vector<size_t>& counts, DType dtype);
  // send holds size() * recv_count elements; recv = block rank() of their reduction.
  Work reduce_scatter_async(const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp op);
  void reduce_scatter(const void* send, void* recv, size_t recv_count, DType dtype, ReduceOp op);
  Work barrier_async();
  void barrier();

  // Fusion buffers that already live in shared memory skip the copy into it. shm_buffer is
  // collective (same bytes on every rank) and returns this rank's buffer of at least `bytes`
  // (it may move when a later call asks for more); allreduce_shm reduces `count` elements
  // starting `offset` elements into it, in place (several regions may be in flight, e.g. one per
  // gradient bucket). Backends without shared memory return a private buffer.
  void* shm_buffer(size_t bytes);
  Work allreduce_shm_async(size_t count, DType dtype, ReduceOp op, size_t offset = 0);
  void allreduce_shm(size_t count, DType dtype, ReduceOp op, size_t offset = 0);
  // Null unless every rank shares this node's shm_buffer window (see PeerWindow).
  virtual PeerWindow* peer_window() { return nullptr; }

 protected:
  // The one entry point a backend implements; arguments are validated already.
  virtual Work submit(Collective c, bool blocking) = 0;
  virtual void* shm_buffer_impl(size_t bytes) = 0;

 private:
  Work call(Collective c, bool blocking);
};

// backend: "ring", "mpi", "nccl" or "auto" (ring). Collective over all ranks.
// For "nccl" every buffer (send, recv, shm_buffer) is a DEVICE pointer on cuda:(local_rank % devices).
// The RINGFLOW_* environment variables override `opts` (see options_from_env). Without an MPI
// launcher (or without MPI compiled in) every backend is world size 1 and collectives are
// local copies.
std::unique_ptr<Communicator> make_communicator(const std::string& backend, const CommOptions& opts = {});

}  // namespace rf::collective
