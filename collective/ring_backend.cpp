// The `ring` backend: picks the transport (shm when all ranks share a node, the point-to-point
// ring when each node holds one rank, hierarchical otherwise: a reduce-scatter through shared
// memory within the node, one point-to-point ring per local rank between the nodes, an allgather
// within the node) and runs each collective on it. RINGFLOW_RING_TRANSPORT forces p2p or shm (on one machine, shm with
// RINGFLOW_RANKS_PER_NODE exercises the hierarchical path).
#include "collective/backends.h"

#if RINGFLOW_MPI
#include <cstdio>
#include <memory>
#include <string>

#include "collective/host_engine.h"
#include "collective/ring_p2p.h"
#include "collective/shm_node.h"

namespace rf::collective {
namespace {

constexpr size_t kP2PChunk = 256 << 10;  // MPI messages within a node: per-message costs vanish
// MPI messages to other nodes: under Open MPI's TCP eager limit (64 KiB, headers included), so
// a chunk goes without a rendezvous. Past it, each chunk waits for a clear-to-send that travels
// behind the megabytes already queued the other way on the same connection: with 256 KiB chunks
// the CNN at 2 hosts x 1 rank over 1 Gbit/s ran 733-747 samples/s, with 32 KiB 1178-1202 (the
// link's rate); at 10 Gbit/s the exchange's busbw was at least MPI_Allreduce's from 64 KiB on.
constexpr size_t kNetChunk = 60 << 10;
constexpr size_t kShmBlock = 64 << 10;   // a slice block: a few of them per rank stay in L2

class RingCommunicator final : public HostCommunicator {
 public:
  explicit RingCommunicator(const CommOptions& o) : HostCommunicator(o) {
    if (size_ == 1) return;
    int max_local = 0;
    MPI_CHECK(MPI_Allreduce(&local_size_, &max_local, 1, MPI_INT, MPI_MAX, world_));
    const bool one_node = local_size_ == size_;
    if (o.transport == Transport::P2P || (o.transport == Transport::Auto && max_local == 1))
      mode_ = Mode::P2P;
    else
      mode_ = one_node ? Mode::Shm : Mode::Hier;
    if (mode_ != Mode::P2P) make_shm(o);
    // The flat ring serves p2p mode, and in hierarchical mode everything but allreduce.
    const size_t net_chunk = o.chunk_bytes ? o.chunk_bytes : kNetChunk;
    if (mode_ != Mode::Shm)
      ring_ = std::make_unique<P2PRing>(*this, world_, one_node && !o.chunk_bytes ? kP2PChunk : net_chunk);
    if (mode_ == Mode::Hier) {
      // Nodes are numbered by the world rank of their local rank 0, so every cross-node ring
      // visits them in the same order.
      int node_id = rank_, min_local = 0;
      MPI_CHECK(MPI_Bcast(&node_id, 1, MPI_INT, 0, node_));
      MPI_CHECK(MPI_Allreduce(&local_size_, &min_local, 1, MPI_INT, MPI_MIN, world_));
      // Nodes of equal size: local rank p of every node forms ring p (NCCL's and Horovod's
      // hierarchical layout). Otherwise only the node leaders form one.
      const bool uniform = min_local == max_local;
      const int color = uniform ? local_rank_ : (local_rank_ == 0 ? 0 : MPI_UNDEFINED);
      MPI_CHECK(MPI_Comm_split(world_, color, node_id, &cross_));
      if (cross_ != MPI_COMM_NULL) {
        MPI_CHECK(MPI_Comm_set_errhandler(cross_, MPI_ERRORS_RETURN));
        cross_ring_ = std::make_unique<P2PRing>(*this, cross_, net_chunk);
      }
      sliced_ = uniform;
    }
  }
  ~RingCommunicator() override {
    shutdown();
    shm_.reset();
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (cross_ != MPI_COMM_NULL && !finalized) MPI_Comm_free(&cross_);
  }
  std::string name() const override {
    if (size_ == 1) return "ring";
    return mode_ == Mode::P2P ? "ring(p2p)" : mode_ == Mode::Shm ? "ring(shm)" : "ring(hier)";
  }
  PeerWindow* peer_window() override { return mode_ == Mode::Shm ? shm_.get() : nullptr; }

 protected:
  void* shm_alloc(size_t bytes) override {
    if (!shm_) return HostCommunicator::shm_alloc(bytes);
    Task t;  // shm_alloc runs inside its own task; this one only carries the deadline
    t.kind = CollKind::ShmAlloc;
    t.deadline = opts_.deadline();
    return shm_->data(t, bytes);
  }

  void execute(Task& t) override {
    switch (t.kind) {
      case CollKind::Allreduce: return allreduce(t, t.send, t.recv);
      case CollKind::AllreduceShm:
        if (!shm_) return ring_->allreduce(t, private_shm_for(t), private_shm_for(t), t.count, t.dtype, t.op, size_);
        // Straight from the peers' windows only on one node; otherwise it is a plain buffer.
        if (mode_ != Mode::Shm) {
          char* region = static_cast<char*>(shm_->data()) + t.offset * dtype_size(t.dtype);
          return allreduce(t, region, region);
        }
        return allreduce(t, nullptr, shm_->data());
      case CollKind::Broadcast:
        if (mode_ == Mode::Shm) return shm_->broadcast(t, t.recv, t.count, t.dtype, t.root);
        return ring_->broadcast(t, t.recv, t.count, t.dtype, t.root);
      case CollKind::Allgather:
      case CollKind::Allgatherv: {
        const std::vector<size_t> counts =
            t.kind == CollKind::Allgatherv ? t.counts : std::vector<size_t>(static_cast<size_t>(size_), t.count);
        if (mode_ == Mode::Shm) return shm_->allgatherv(t, t.send, t.recv, counts, t.dtype);
        return ring_->allgatherv(t, t.send, t.recv, counts, t.dtype);
      }
      case CollKind::ReduceScatter:
        if (mode_ == Mode::Shm) return shm_->reduce_scatter(t, t.send, t.recv, t.count, t.dtype, t.op, size_);
        return ring_->reduce_scatter(t, t.send, t.recv, t.count, t.dtype, t.op, size_);
      case CollKind::Barrier:
        if (mode_ == Mode::Shm) return shm_->barrier(t);
        return mpi_barrier(t);
      case CollKind::ShmAlloc: return;
    }
  }

 private:
  enum class Mode { P2P, Shm, Hier };

  // The node's shared-memory window, or, where MPI cannot make one (an osc component that does
  // not serve MPI_Win_allocate_shared, e.g. --mca osc ^sm), the point-to-point ring for
  // everything, agreed by every rank. A transport asked for by name fails instead.
  void make_shm(const CommOptions& o) {
    std::string why;
    try {
      shm_ = std::make_unique<ShmNode>(*this, node_, o.chunk_bytes ? o.chunk_bytes : kShmBlock);
    } catch (const std::exception& e) {
      why = e.what();
    }
    int first_failed = why.empty() ? size_ : rank_;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &first_failed, 1, MPI_INT, MPI_MIN, world_));
    if (first_failed == size_) return;
    RF_CHECK(o.transport != Transport::Shm, "the ring's shm transport was asked for (RINGFLOW_RING_TRANSPORT=shm) but ",
             "rank ", first_failed, " could not make its node's MPI shared-memory window", why.empty() ? "" : ": ", why);
    if (rank_ == first_failed)
      std::fprintf(stderr, "ringflow: warning: no MPI shared-memory window (%s): the ring runs point-to-point\n",
                   why.c_str());
    shm_.reset();
    mode_ = Mode::P2P;
  }

  // in == nullptr: the data is in the shared window already (allreduce_shm).
  void allreduce(Task& t, const void* in, void* out) {
    switch (mode_) {
      case Mode::P2P: return ring_->allreduce(t, in, out, t.count, t.dtype, t.op, size_);
      case Mode::Shm: return shm_->allreduce(t, in, out, t.count, t.dtype, t.op, size_, ShmNode::Gather::All);
      case Mode::Hier: return sliced_ ? hier_sliced(t, in, out) : hier_leaders(t, in, out);
    }
  }

  // Each local rank reduces its slice over the node through shared memory, runs the cross-node
  // allreduce of that slice with its counterparts on the other nodes (which applies Avg's
  // division by the world size), and the node shares the slices back. A node's link carries
  // 2(N-1)/N of the buffer per N nodes, as a ring over the nodes alone would, spread over L
  // streams; the flat ring over all ranks sends 2(NL-1)/NL of it through every rank's link.
  void hier_sliced(Task& t, const void* in, void* out) {
    std::vector<size_t> off, len;
    shm_->slices(t.count, t.dtype, off, len);
    const size_t es = dtype_size(t.dtype);
    shm_->allreduce(t, in, out, t.count, t.dtype, t.op, 0, ShmNode::Gather::None);
    char* mine = static_cast<char*>(out) + off[local_rank_] * es;
    cross_ring_->allreduce(t, mine, mine, len[local_rank_], t.dtype, t.op, size_);
    shm_->allgatherv(t, mine, out, len, t.dtype);
  }

  // Nodes of different sizes: node sum into the leader, the leaders' ring, then the leader's
  // result to its node.
  void hier_leaders(Task& t, const void* in, void* out) {
    shm_->allreduce(t, in, out, t.count, t.dtype, t.op, 0, ShmNode::Gather::Root, 0);
    if (cross_ring_) cross_ring_->allreduce(t, out, out, t.count, t.dtype, t.op, size_);
    shm_->broadcast(t, out, t.count, t.dtype, 0);
  }

  void mpi_barrier(Task& t) {
    MPI_Request req;
    MPI_CHECK(MPI_Ibarrier(world_, &req));
    Poller poll(*this, t);
    for (int done = 0;;) {
      MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      poll.idle([] { return std::vector<int>{}; });
    }
  }

  Mode mode_ = Mode::P2P;
  std::unique_ptr<ShmNode> shm_;
  std::unique_ptr<P2PRing> ring_, cross_ring_;
  MPI_Comm cross_ = MPI_COMM_NULL;  // hierarchical: this local rank's counterparts on every node
  bool sliced_ = false;             // hierarchical over nodes of equal size: hier_sliced
};

}  // namespace

std::unique_ptr<Communicator> make_ring_communicator(const CommOptions& opts) {
  return std::make_unique<RingCommunicator>(opts);
}

}  // namespace rf::collective
#endif
