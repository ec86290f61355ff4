// The data-parallel gradient Reducer: gradients are assigned to buckets in reverse order of the
// forward pass (a small first bucket, then up to bucket_mb each, as PyTorch DDP does); each
// gradient is written by the executor straight into its slot of the bucket's fusion buffer
// (Session::bind_output, DDP's gradient_as_bucket_view). On the CPU the fusion buffers live in
// the communicator's shm_buffer, so on one node the ring reduces them straight from the peers'
// memory with no copy in or out. A bucket's allreduce (average)
// is launched on the communication thread the moment its last gradient is ready, while the
// backward pass goes on. Each update op waits only for the bucket of its own Variable, so the
// last layers' updates run while the first layers' allreduce is still in flight.
// With compression (ReducerOptions::compress) each bucket's compress / collective / decompress
// runs on a hook thread of the Reducer, bucket after bucket in launch order, still overlapping
// the backward pass.
// Fused update (ReducerOptions::fuse; the default where every rank shares one node's window and
// there are at most kFuseMaxRanks of them): no allreduce runs. A bucket's readiness is published
// to the peers (one flag store); each update op waits for its bucket on every rank and then reads
// all replicas' gradients straight from their fusion buffers, averaging them as it updates
// (RunOptions::update_grads), in rank order with the allreduce's arithmetic, so every replica
// computes the same bits. Before a step writes its gradients, every peer must have finished
// reading the last step's (a second flag). Per rank this moves L gradient copies through the
// cache instead of the shm allreduce's ~3 plus the update's 1, and needs no communication thread:
// with L <= 4 it is less memory traffic, and with ranks that fill every core it takes no
// scheduling luck (the allreduce needs both ranks' communication threads on a core at once).
// The gradient buffers then hold this rank's own gradients, not their average, and they are
// bound to every plan of the session: with the fused update, a run that computes gradients must
// pass run_options() (its prologue waits for the peers to finish reading the last step's); a run
// without it (say, to log gradient norms) would overwrite them under a peer's update, so the
// Reducer guards the session (Session::guard_bound_writes) and such a run throws.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "collective/communicator.h"
#include "collective/compress.h"
#include "runtime/session.h"
#include "runtime/timeline.h"

namespace rf::collective {

struct ReducerOptions {
  double bucket_mb = 25;      // cap of every bucket after the first
  double first_bucket_mb = 1;  // the first bucket (last layers) is small so it starts early
  Timeline* timeline = nullptr;
  CompressSpec compress;       // none: each bucket is one allreduce on the communication thread
  // Fused update (see the top of this file). Auto: where the communicator has a PeerWindow, the
  // session is on the CPU, nothing is compressed, every bucket is consumed by update ops that read
  // the raw gradient, and there are at most kFuseMaxRanks ranks. On: the same conditions, an error
  // naming the one that fails. Off: always allreduce.
  enum class Fuse : uint8_t { Auto, On, Off } fuse = Fuse::Auto;
  // Diagnostics only: buckets are never reduced (each replica trains on its own gradients and the
  // replicas drift apart), so a run measures the step without its gradient exchange: the ceiling
  // that communication can approach (bench/scaling.sh --ceiling).
  bool skip_exchange = false;
};
constexpr int kFuseMaxRanks = 4;
const char* fuse_name(ReducerOptions::Fuse f);
ReducerOptions::Fuse parse_fuse(const std::string& s);  // auto|on|off, else rf::Error
// Why comm cannot carry the fused update ("" if it can): it needs the ring's shared-memory window.
std::string peer_window_blocker(Communicator& comm);

class Reducer {
 public:
  struct Bucket {
    std::vector<int> grads;  // indices into the constructor's vars/grads, in launch order
    size_t elements = 0;
    Tensor buffer;           // fusion buffer: every gradient of the bucket, back to back
    size_t offset = 0;       // its first element within the shm buffer (CPU sessions)
  };

  // vars[i] (Variable node ids, forward order) has gradient grads[i]. All gradients must be
  // F32 or all F64. Binds the gradients into the fusion buffers of `session`, so the session's
  // plans recompile once. Collective (calls comm.shm_buffer); the Reducer then owns that buffer.
  Reducer(Communicator& comm, Session& session, const std::vector<int>& vars, const std::vector<Value>& grads,
          const ReducerOptions& options = {});
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  // The options to pass to Session::run for a training step (gradients and their updates: a
  // step whose plan leaves the updates out leaves buckets un-waited, and the next step throws).
  RunOptions& run_options() { return run_options_; }

  const std::vector<Bucket>& buckets() const { return buckets_; }
  bool fused() const { return peers_ != nullptr; }
  // Bytes of gradient this rank hands to the allreduce per step (before any compression).
  size_t bytes_per_step() const;
  // Bytes this rank sent in the last completed step, as a bandwidth-optimal ring sends them
  // (ring_allreduce_bytes / ring_allgather_bytes; 0 at world size 1), after compression.
  size_t bytes_sent_last_step() const;

  // Timings of the last step, microseconds on the timeline clock (for tests and reports).
  struct StepTimes {
    int64_t first_launch = -1;  // first bucket's allreduce launched
    int64_t backward_done = -1;  // every non-update node of the step had run
  };
  const StepTimes& last_step() const { return last_; }

 private:
  void on_node_done(int node);
  void launch_ready();
  void backward_done();
  void wait_bucket(size_t b);
  void hook_loop();
  // Fused update: why it cannot run here (empty: it can), and its set-up.
  std::string fuse_blocker(const Graph& g, const std::vector<int>& vars, const std::vector<Value>& grads) const;
  void setup_fused(Session& session, const Graph& g, const std::vector<int>& vars,
                   const std::vector<size_t>& grad_offset);

  Communicator& comm_;
  ReducerOptions opts_;
  Timeline clock_;             // used when opts_.timeline is null
  Timeline* timeline_;
  std::vector<Bucket> buckets_;
  std::vector<std::vector<int>> node_buckets_;  // node id -> buckets it completes a gradient of
  std::vector<int> update_bucket_;              // node id -> bucket an update node waits for (-1)
  std::vector<int> updates_left_;               // per bucket: update nodes not yet run this step
  std::vector<char> waited_;
  std::vector<int> pending_;                    // per bucket: gradients not yet produced
  std::vector<Work> work_;
  std::vector<int64_t> launched_at_;
  size_t next_launch_ = 0;
  DType dtype_ = DType::F32;
  bool in_shm_ = false;  // buffers are regions of comm.shm_buffer
  RunOptions run_options_;
  StepTimes current_, last_;
  std::vector<size_t> bytes_sent_;  // per bucket, its last reduction

  // Fused update: the peers' window, each update node's gradient on every rank (rank order), the
  // flag value each bucket's readiness was published as this step, and the update nodes left.
  enum PeerFlag { kReady = 0, kConsumed = 1 };
  PeerWindow* peers_ = nullptr;
  Session* guarded_ = nullptr;  // the session whose gradient runs the fused update guards
  std::vector<std::vector<const void*>> sources_;  // by node id; empty for non-update nodes
  std::vector<uint64_t> ready_at_;
  int updates_per_step_ = 0, updates_left_in_step_ = 0;

  // Compression: the hook thread and its queue of (bucket, step).
  std::vector<std::unique_ptr<BucketCompressor>> compressors_;
  int64_t step_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<size_t, int64_t>> queue_;
  std::vector<char> hook_done_;
  std::string hook_error_;
  bool stop_ = false;
  std::thread hook_;
};

}  // namespace rf::collective
