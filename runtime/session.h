// Session: runs fetches and targets of a Graph with feeds, on one device. Each (fetches, feeds,
// targets) signature is compiled once into a Plan (node order, concrete shapes, buffers); a run
// of a compiled plan allocates nothing. Plans are kept in a bounded cache (least recently used
// out first). Node outputs share memory by liveness (set_memory_reuse). Variables live in the
// Session (as in TensorFlow 1).
#pragma once
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/exec.h"
#include "runtime/graph.h"
#include "runtime/timeline.h"

namespace rf {

struct RunOptions {
  // Called after each node of the plan ran, with its id (the data-parallel layer starts a
  // bucket's allreduce when its last gradient is ready).
  std::function<void(int node)> on_node_done;
  // Called once after every other node ran and before the first update (Apply*) node, or
  // before the first node that reads an exchanged gradient (below), whichever comes first.
  std::function<void()> before_updates;
  // Called once, after before_updates, before the first node that is not an update but reads a
  // bound output (Session::bind_output), directly or through other such nodes: the gradients
  // after their data-parallel exchange (clip_by_global_norm's norm and scaling). The plan runs
  // those nodes after every other non-update node; the Reducer waits here for every bucket.
  std::function<void()> before_exchanged_reads;
  // Called before each update (Apply*) node runs, with its id: the Reducer waits there for
  // the one bucket holding that Variable's gradient, so updates overlap later allreduces.
  std::function<void(int node)> before_update;
  // CPU sessions: called for each update (Apply*) node after before_update; a non-null result
  // makes the update read its gradient as the mean of those buffers (in that order) instead of
  // its gradient input. The Reducer's fused update passes every replica's gradient, read in
  // place from the shared-memory window, so no allreduce runs at all.
  std::function<const std::vector<const void*>*(int node)> update_grads;
  // Records each kernel node's span (lane 0) when set.
  Timeline* timeline = nullptr;
  // Device work queued on the plan's stream (the cudaStream_t; null on the CPU) before the first
  // node and after the last update; the epilogue sees the fetched tensors. With cuda_graph both
  // are captured with the step, so a replayed step does not call them again.
  std::function<void(void* stream)> prologue;
  std::function<void(void* stream, const std::vector<Tensor>& fetched)> epilogue;
  // CUDA plans only: run the step as a CUDA graph. The plan's first two runs are eager (the
  // caching allocator then holds every buffer), the third is captured on the compute stream and
  // launched, later runs replay it with cudaGraphLaunch. Needs a static step: device feeds (the
  // same tensors every run), no host hooks (on_node_done, before_update(s), timeline), no
  // Dropout (its counter would be frozen), no initialisers. The optimizer's {lr, step} feed stays
  // on the host; its scalars reach the graph through pinned memory (cuda::FusedUpdates).
  bool cuda_graph = false;
};

struct Plan;

class Session {
 public:
  using Feed = std::pair<Value, Tensor>;

  explicit Session(const Graph& graph, Device device = Device::cpu());
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs what fetches and targets need and returns the fetched values. The returned tensors
  // are the plan's own buffers (fetching a Variable returns its storage; a fetched output is
  // never shared with another node's): they hold their values until the next run of the same
  // signature; clone() what must outlive it. The returned vector itself belongs to the plan: it
  // is valid until a run of another signature evicts that plan from the cache (copy the Tensors,
  // which keep their buffers alive, to hold them longer). Update ops (Apply*) run
  // after every other node of the plan, so a step reads each Variable before it is changed.
  const std::vector<Tensor>& run(const std::vector<Value>& fetches, const std::vector<Feed>& feeds = {},
                                 const std::vector<Value>& targets = {}, const RunOptions* options = nullptr);

  // A Variable's storage by name or node id (allocated on first use, on this session's device).
  Tensor& variable(const std::string& name);
  Tensor& variable(int node);
  bool initialized(int node) const;
  // Marks a Variable as initialised after its values were written directly (checkpoint load,
  // broadcast from rank 0).
  void set_initialized(int node);

  // Makes every plan write output v into `buffer` (same dtype and element count as v's shape
  // in the plan) instead of a buffer of its own, e.g. a gradient straight into its slot of a
  // fusion buffer (PyTorch DDP's gradient_as_bucket_view). Compiled plans are dropped.
  void bind_output(Value v, const Tensor& buffer);
  // Called with a run's options before any run whose plan writes a bound output: the owner of
  // the bound buffers (a fused Reducer, whose peers read them) refuses runs it does not guard.
  // Empty (the default): no check.
  void guard_bound_writes(std::function<void(const RunOptions*)> guard) { bound_write_guard_ = std::move(guard); }

  // Epilogue fusion (FusedChain in exec.h): MatMul/Conv2D -> BiasAdd [-> Relu] chains whose
  // intermediate outputs nothing else reads run as one step. On by default; switching drops the
  // compiled plans. chains_fused() counts the chains fused by every plan compiled so far.
  void set_fuse_epilogues(bool on);
  bool fuse_epilogues() const { return fuse_epilogues_; }
  size_t chains_fused() const { return chains_fused_; }

  // Memory planning (on by default): a plan's node outputs share one arena, each output's
  // bytes reused once the last step that reads it has run (liveness over the plan's execution
  // order). Fetched outputs, bound outputs (bind_output), Variables, constants and feeds keep
  // buffers of their own. Off: every output has its own buffer for the whole step. Switching
  // drops the compiled plans.
  void set_memory_reuse(bool on);
  bool memory_reuse() const { return memory_reuse_; }
  // Bytes the plan of the last run holds for node outputs: its arena plus the outputs with
  // buffers of their own (fetched outputs, constants, staged feeds); not Variables, bound
  // outputs or the caller's feeds. 0 before the first run.
  size_t last_plan_bytes() const { return last_plan_bytes_; }

  // The plan cache holds at most `capacity` signatures (>= 1; default kDefaultPlanCache); a new
  // signature beyond it evicts the least recently run plan (and its buffers, once nothing else
  // holds them). plans_cached(): how many it holds now.
  static constexpr size_t kDefaultPlanCache = 32;
  void set_plan_cache_capacity(size_t capacity);
  size_t plan_cache_capacity() const { return plan_capacity_; }
  size_t plans_cached() const { return plans_.size(); }
  size_t plans_evicted() const { return plans_evicted_; }

  Device device() const { return device_; }
  const Graph& graph() const { return graph_; }
  size_t plans_compiled() const { return plans_compiled_; }
  // Steps captured as CUDA graphs so far (RunOptions::cuda_graph; a plan is captured on its
  // third run): 0 on the CPU, or when no graphed plan has run three times. graph_kernels():
  // the kernel nodes of the last one, i.e. the kernels one replay of that step launches.
  size_t graphs_captured() const { return graphs_captured_; }
  size_t graph_kernels() const { return graph_kernels_; }

 private:
  Plan& plan_for(const std::vector<Value>& fetches, const std::vector<Feed>& feeds,
                 const std::vector<Value>& targets);
  std::unique_ptr<Plan> compile(const std::vector<Value>& fetches, const std::vector<Feed>& feeds,
                                const std::vector<Value>& targets);
  void fuse_chains(Plan& plan, const std::vector<Value>& fetches);
  void assign_buffers(Plan& plan, const std::vector<Value>& fetches, const std::vector<OutSpec>& out_spec);
  void drop_plans();
  void run_initializer(int var_node);
  void execute(Plan& plan, const RunOptions* options);
  void check_graphable(const Plan& plan, const std::vector<Feed>& feeds, const RunOptions& options) const;

  struct VarSlot {
    Tensor value;
    bool initialized = false;
  };
  struct KeyHash {
    size_t operator()(const std::vector<int64_t>& k) const noexcept;
  };

  const Graph& graph_;
  Device device_;
  Stream stream_;
  std::vector<VarSlot> vars_;  // by node id
  std::unordered_map<int64_t, Tensor> bound_outputs_;  // key: node * 8 + output index
  std::function<void(const RunOptions*)> bound_write_guard_;
  // The plan cache: lru_ holds the plans, most recently run first; plans_ finds them by key.
  struct CachedPlan {
    std::vector<int64_t> key;
    std::unique_ptr<Plan> plan;
  };
  std::list<CachedPlan> lru_;
  std::unordered_map<std::vector<int64_t>, std::list<CachedPlan>::iterator, KeyHash> plans_;
  std::vector<int64_t> key_scratch_;
  size_t plan_capacity_ = kDefaultPlanCache;
  size_t plans_compiled_ = 0;
  size_t plans_evicted_ = 0;
  bool memory_reuse_ = true;
  size_t last_plan_bytes_ = 0;
  bool fuse_epilogues_ = true;
  size_t chains_fused_ = 0;
  size_t graphs_captured_ = 0;
  size_t graph_kernels_ = 0;
};

}  // namespace rf
