// Plan compilation (pruning, ordering, concrete shapes, buffers by liveness), the plan cache
// and the executor loop.
#include "runtime/session.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu.h"
#if RINGFLOW_CUDA
#include "runtime/cuda_backend.h"
#endif

namespace rf {

namespace {
bool is_update(Op op) {
  return op == Op::ApplySGD || op == Op::ApplyMomentum || op == Op::ApplyAdam || op == Op::ApplySGDSparse ||
         op == Op::ApplyMomentumSparse || op == Op::ApplyAdamSparse;
}
// How many leading inputs of an update op are Variables it mutates (the variable and its slots);
// the gradient (dense, or rows and indices) and the hyper-parameters follow.
int update_state_inputs(const Node& n) {
  const int nin = int(n.inputs.size());
  const bool sparse = n.op == Op::ApplySGDSparse || n.op == Op::ApplyMomentumSparse || n.op == Op::ApplyAdamSparse;
  return sparse ? nin - 3 : nin - 2;
}
}  // namespace

// One node of a plan with its bound tensors (pointers into Plan::values, which never moves).
struct PlanStep {
  enum class Kind : unsigned char { Kernel, Feed, Const, Var, Init, View };
  Kind kind = Kind::Kernel;
  const Node* node = nullptr;   // with a chain: the chain's last node
  FusedChain* chain = nullptr;  // a Kernel step that runs a fused chain (Session::fuse_chains)
  int nin = 0, nout = 0;
  Tensor* in[16] = {};  // Attrs::kMaxConcatInputs
  Tensor* out[4] = {};  // LayerNorm, LayerNormGrad: 3
  bool reads_exchanged = false;  // reads a bound output (an exchanged gradient): runs after the others
};

struct Plan {
  std::vector<Tensor> values;   // every output of every needed node
  Tensor arena;                 // U8: the outputs that share memory by liveness (assign_buffers)
  size_t bytes = 0;             // Session::last_plan_bytes()
  std::vector<int> base;        // node id -> index of its output 0 in values (-1: not in plan)
  std::vector<PlanStep> steps;  // init, then compute, then updates
  std::vector<std::unique_ptr<FusedChain>> chains;  // the Fused steps' chains
  size_t first_update = 0;      // steps[first_update..] are Apply* nodes
  bool writes_bound = false;    // some step writes a bound output (Session::bind_output)
  std::vector<Tensor*> fetch_slots;
  std::vector<Tensor> results;
  std::vector<Tensor> feed_staging;  // device buffers for host feeds on a CUDA plan
  uint64_t runs = 0;
#if RINGFLOW_CUDA
  std::unique_ptr<cuda::FusedUpdates> fused;  // a CUDA plan's updates, applied in groups
  void* graph = nullptr;                      // cudaGraphExec_t of the captured step
  std::vector<const void*> graph_feeds;       // each feed's buffer when it was captured
  ~Plan() { cuda::graph_destroy(graph); }
#endif
};

size_t Session::KeyHash::operator()(const std::vector<int64_t>& k) const noexcept {
  uint64_t h = 1469598103934665603ull;
  for (int64_t v : k) h = (h ^ uint64_t(v)) * 1099511628211ull;
  return size_t(h);
}

Session::Session(const Graph& graph, Device device)
    : graph_(graph), device_(device), stream_(compute_stream(device)) {}
Session::~Session() = default;

void Session::bind_output(Value v, const Tensor& buffer) {
  RF_CHECK(v.valid() && v.graph == &graph_, "bind_output: not a value of this graph");
  const Node& n = graph_.node(v);
  RF_CHECK(n.op != Op::Placeholder && n.op != Op::Const && n.op != Op::Variable && n.op != Op::Reshape &&
               n.op != Op::ReshapeLike && v.index < int(n.outputs.size()),
           "bind_output: '", n.name, "' (", op_name(n.op), ") does not compute an output of its own");
  bound_outputs_[int64_t(v.node) * 8 + v.index] = buffer;
  drop_plans();
}

void Session::drop_plans() {
  // A CUDA plan's buffers and pinned scalars may still be read by queued work: let it finish.
  // (Rare: a new binding, a switched option, an eviction, which compiles a plan anyway.)
  if (!lru_.empty()) stream_.synchronize();
  plans_.clear();
  lru_.clear();
}

void Session::set_memory_reuse(bool on) {
  memory_reuse_ = on;
  drop_plans();
}

void Session::set_plan_cache_capacity(size_t capacity) {
  RF_CHECK(capacity >= 1, "the plan cache must hold at least one plan, got a capacity of ", capacity);
  plan_capacity_ = capacity;
  if (lru_.size() > capacity) stream_.synchronize();
  while (lru_.size() > capacity) {
    plans_.erase(lru_.back().key);
    lru_.pop_back();
    ++plans_evicted_;
  }
}

Tensor& Session::variable(int node) {
  RF_CHECK(node >= 0 && node < graph_.size() && graph_.node(node).op == Op::Variable, "node ", node,
           " is not a Variable");
  if (vars_.size() < size_t(graph_.size())) vars_.resize(size_t(graph_.size()));
  VarSlot& s = vars_[size_t(node)];
  if (!s.value.defined()) {
    const Attrs& a = graph_.node(node).attrs;
    s.value = Tensor(a.shape, a.dtype, device_);
  }
  return s.value;
}

Tensor& Session::variable(const std::string& name) {
  const int id = graph_.find(name);
  RF_CHECK(id >= 0 && graph_.node(id).op == Op::Variable, "no Variable named '", name, "' in the graph");
  return variable(id);
}

bool Session::initialized(int node) const {
  return size_t(node) < vars_.size() && vars_[size_t(node)].initialized;
}

void Session::set_initialized(int node) {
  variable(node);
  vars_[size_t(node)].initialized = true;
}

void Session::run_initializer(int var_node) {
  const Node& n = graph_.node(var_node);
  const Attrs& a = n.attrs;
  Tensor& dst = variable(var_node);
  // Initial values are computed on the host in the variable's dtype and copied, so every
  // device starts from bit-identical Variables.
  Tensor host = device_.is_cpu() ? dst : Tensor(a.shape, a.dtype);
  const Shape& s = a.shape;
  i64 receptive = 1;
  for (int i = 2; i < s.rank; ++i) receptive *= s[i];
  const double fan_in = s.rank >= 2 ? double(s[1] * receptive) : double(s.rank ? s[0] : 1);
  const double fan_out = s.rank >= 2 ? double(s[0] * receptive) : double(s.rank ? s[0] : 1);
  auto fill = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    const i64 cnt = host.numel();
    switch (a.init.kind) {
      case Initializer::Kind::Zeros: kernels::cpu::fill_constant<T>(p, cnt, 0.0); break;
      case Initializer::Kind::Constant: kernels::cpu::fill_constant<T>(p, cnt, a.init.a); break;
      case Initializer::Kind::Uniform: kernels::cpu::fill_uniform<T>(p, cnt, a.init.a, a.init.b, a.seed); break;
      case Initializer::Kind::Normal: kernels::cpu::fill_normal<T>(p, cnt, a.init.a, a.init.b, a.seed); break;
      case Initializer::Kind::GlorotUniform: {
        const double lim = std::sqrt(6.0 / (fan_in + fan_out));
        kernels::cpu::fill_uniform<T>(p, cnt, -lim, lim, a.seed);
        break;
      }
      case Initializer::Kind::HeNormal:
        kernels::cpu::fill_normal<T>(p, cnt, 0.0, std::sqrt(2.0 / fan_in), a.seed);
        break;
    }
  };
  switch (a.dtype) {
    case DType::F32: fill(host.data<float>()); break;
    case DType::F64: fill(host.data<double>()); break;
    default:
      RF_CHECK(a.init.kind == Initializer::Kind::Zeros, "Variable '", n.name, "': only zeros can initialise ",
               dtype_name(a.dtype));
      host.zero();
  }
  if (!host.same_storage(dst)) dst.copy_from(host);
  vars_[size_t(var_node)].initialized = true;
}

std::unique_ptr<Plan> Session::compile(const std::vector<Value>& fetches, const std::vector<Feed>& feeds,
                                       const std::vector<Value>& targets) {
  const int N = graph_.size();
  std::vector<char> fed(size_t(N), 0), needed(size_t(N), 0);
  for (const Feed& f : feeds) {
    RF_CHECK(f.first.valid() && f.first.graph == &graph_, "a feed key is not a value of this graph");
    const Node& n = graph_.node(f.first);
    RF_CHECK(n.op == Op::Placeholder, "can only feed Placeholders; '", n.name, "' is a ", op_name(n.op));
    fed[size_t(n.id)] = 1;
  }
  std::vector<int> stack;
  for (const Value& v : fetches) {
    RF_CHECK(v.valid() && v.graph == &graph_ && v.node < N, "a fetch is not a value of this graph");
    RF_CHECK(v.index < int(graph_.node(v).outputs.size()), "fetch of output ", v.index, " of '",
             graph_.node(v).name, "', which has no such output");
    stack.push_back(v.node);
  }
  for (const Value& v : targets) {
    RF_CHECK(v.valid() && v.graph == &graph_ && v.node < N, "a target is not a node of this graph");
    stack.push_back(v.node);
  }
  while (!stack.empty()) {
    const int id = stack.back();
    stack.pop_back();
    if (needed[size_t(id)]) continue;
    needed[size_t(id)] = 1;
    if (fed[size_t(id)]) continue;
    for (const Value& in : graph_.node(id).inputs) stack.push_back(in.node);
  }

  auto plan = std::make_unique<Plan>();
  plan->base.assign(size_t(N), -1);
  std::vector<int> init_ids, compute_ids, update_ids;
  size_t nvalues = 0;
  for (int id = 0; id < N; ++id) {
    if (!needed[size_t(id)]) continue;
    const Node& n = graph_.node(id);
    plan->base[size_t(id)] = int(nvalues);
    nvalues += n.outputs.size();
    (n.op == Op::InitVariable ? init_ids : is_update(n.op) ? update_ids : compute_ids).push_back(id);
  }
  // Non-update nodes downstream of a bound output (a gradient the Reducer exchanges) run after
  // every other non-update node, once the exchange is done (RunOptions::before_exchanged_reads).
  std::vector<char> exchanged(size_t(N), 0);
  {
    std::vector<int> before, after;
    for (int id : compute_ids) {
      const Node& n = graph_.node(id);
      for (const Value& in : n.inputs)
        if (!fed[size_t(in.node)] && (exchanged[size_t(in.node)] || bound_outputs_.count(int64_t(in.node) * 8 + in.index)))
          exchanged[size_t(id)] = 1;
      (exchanged[size_t(id)] ? after : before).push_back(id);
    }
    compute_ids = std::move(before);
    compute_ids.insert(compute_ids.end(), after.begin(), after.end());
  }
  plan->values.resize(nvalues);
  std::vector<OutSpec> out_spec(nvalues);  // kernel outputs: allocated by assign_buffers

  // Concrete specs: feeds fix the unknown dimensions, then every node is inferred again.
  std::vector<std::vector<OutSpec>> specs(static_cast<size_t>(N));
  for (const Feed& f : feeds) {
    const Node& n = graph_.node(f.first);
    RF_CHECK(f.second.defined(), "feed for '", n.name, "' is an empty tensor");
    RF_CHECK(f.second.dtype() == n.attrs.dtype, "feed for '", n.name, "' is ", dtype_name(f.second.dtype()),
             ", the placeholder is ", dtype_name(n.attrs.dtype));
    const Shape& ps = n.attrs.shape;
    const Shape& fs = f.second.shape();
    bool ok = ps.rank == fs.rank;
    for (int i = 0; ok && i < ps.rank; ++i) ok = ps[i] < 0 || ps[i] == fs[i];
    RF_CHECK(ok, "feed for '", n.name, "' has shape ", fs.str(), ", the placeholder expects ", ps.str());
    specs[size_t(n.id)] = {{f.second.dtype(), fs}};
  }
  auto infer_node = [&](int id) {
    const Node& n = graph_.node(id);
    if (fed[size_t(id)]) return;
    RF_CHECK(n.op != Op::Placeholder, "placeholder '", n.name, "' must be fed");
    std::vector<OutSpec> in;
    for (const Value& v : n.inputs) in.push_back(specs[size_t(v.node)].at(size_t(v.index)));
    try {
      specs[size_t(id)] = infer_outputs(n, in);
    } catch (const Error& e) {
      fail("node '", n.name, "' (", op_name(n.op), "): ", e.what());
    }
    for (const OutSpec& s : specs[size_t(id)])
      RF_CHECK(s.shape.defined(), "node '", n.name, "' has undefined shape ", s.shape.str(),
               " after feeding: is a placeholder missing from the feeds?");
  };
  for (int id : compute_ids) infer_node(id);
  for (int id : update_ids) infer_node(id);

  auto make_step = [&](int id) {
    const Node& n = graph_.node(id);
    PlanStep st;
    st.node = &n;
    st.nin = int(n.inputs.size());
    st.nout = int(n.outputs.size());
    RF_CHECK(st.nin <= int(std::size(st.in)) && st.nout <= int(std::size(st.out)), "internal: node '", n.name,
             "' has too many inputs/outputs");
    for (int i = 0; i < st.nin; ++i)
      st.in[i] = &plan->values[size_t(plan->base[size_t(n.inputs[size_t(i)].node)] + n.inputs[size_t(i)].index)];
    for (int j = 0; j < st.nout; ++j) st.out[j] = &plan->values[size_t(plan->base[size_t(id)] + j)];
    switch (n.op) {
      case Op::Placeholder: st.kind = PlanStep::Kind::Feed; break;
      case Op::Const:
        st.kind = PlanStep::Kind::Const;
        *st.out[0] = n.attrs.value.to(device_);
        break;
      case Op::Variable:
        st.kind = PlanStep::Kind::Var;
        *st.out[0] = variable(id);
        break;
      case Op::InitVariable: st.kind = PlanStep::Kind::Init; break;
      case Op::Reshape:
      case Op::ReshapeLike: st.kind = PlanStep::Kind::View; break;
      default:
        st.kind = PlanStep::Kind::Kernel;
        for (int j = 0; j < st.nout; ++j) {
          const OutSpec& s = specs[size_t(id)][size_t(j)];
          auto bound = bound_outputs_.find(int64_t(id) * 8 + j);
          if (bound == bound_outputs_.end()) {
            out_spec[size_t(plan->base[size_t(id)] + j)] = s;
            continue;
          }
          const Tensor& b = bound->second;
          plan->writes_bound = true;
          RF_CHECK(b.dtype() == s.dtype && b.numel() == s.shape.numel() && b.device() == device_,
                   "output ", j, " of '", n.name, "' is ", dtype_name(s.dtype), s.shape.str(), " on ", device_.str(),
                   " but the bound buffer is ", dtype_name(b.dtype()), b.shape().str(), " on ", b.device().str());
          *st.out[j] = b.view(s.shape);
        }
    }
    // Apply* ops read their hyper-parameters {lr, step} on the host.
    if (is_update(n.op)) {
      const Node& h = graph_.node(n.inputs.back());
      RF_CHECK(h.op == Op::Placeholder, "node '", n.name, "': hyper must be a fed Placeholder");
      for (int i = 0; i + 1 < st.nin; ++i) {
        const Node& src = graph_.node(n.inputs[size_t(i)]);
        if (i < update_state_inputs(n))
          RF_CHECK(src.op == Op::Variable, "node '", n.name, "': input ", i, " must be a Variable, got '",
                   src.name, "'");
      }
    }
    st.reads_exchanged = exchanged[size_t(id)] != 0;
    plan->steps.push_back(st);
  };
  for (int id : init_ids) make_step(id);
  for (int id : compute_ids) make_step(id);
  plan->first_update = plan->steps.size();
  for (int id : update_ids) make_step(id);
  if (fuse_epilogues_) fuse_chains(*plan, fetches);
  assign_buffers(*plan, fetches, out_spec);

  // Feeds that live on another device than the plan are staged into plan-owned buffers.
  plan->feed_staging.resize(feeds.size());
  for (size_t i = 0; i < feeds.size(); ++i) {
    const Node& n = graph_.node(feeds[i].first);
    const bool host_hyper = std::any_of(plan->steps.begin(), plan->steps.end(), [&](const PlanStep& s) {
      return is_update(s.node->op) && s.node->inputs.back().node == n.id;
    });
    if (feeds[i].second.device() != device_ && !host_hyper)
      plan->feed_staging[i] = Tensor(feeds[i].second.shape(), feeds[i].second.dtype(), device_);
  }

#if RINGFLOW_CUDA
  if (device_.is_cuda() && plan->first_update < plan->steps.size()) {
    std::vector<cuda::FusedUpdates::Update> updates;
    for (size_t i = plan->first_update; i < plan->steps.size(); ++i) {
      const PlanStep& st = plan->steps[i];
      RF_CHECK(st.nin <= 6, "internal: update node '", st.node->name, "' has ", st.nin, " inputs");
      cuda::FusedUpdates::Update u{st.node, {}};
      std::copy(st.in, st.in + st.nin, u.in);
      updates.push_back(u);
    }
    plan->fused = std::make_unique<cuda::FusedUpdates>(device_, updates);
  }
#endif

  for (const Value& v : fetches)
    plan->fetch_slots.push_back(&plan->values[size_t(plan->base[size_t(v.node)] + v.index)]);
  plan->results.resize(fetches.size());
  for (const PlanStep& st : plan->steps)
    if (st.kind == PlanStep::Kind::Const) plan->bytes += st.out[0]->nbytes();
  for (const Tensor& t : plan->feed_staging) plan->bytes += t.defined() ? t.nbytes() : 0;
  ++plans_compiled_;
  return plan;
}

// The memory planner. Every kernel output that is not bound (bind_output) gets its buffer here,
// after fusion (a fused chain's intermediates get none). Steps run one after another in
// plan.steps order (on a CUDA device: queued in that order on the one compute stream, which
// orders them the same way, as the caching allocator's reuse already assumes), so an output is
// live from the step that writes it to the last step that reads it, and two outputs whose
// intervals do not overlap can share bytes. Intervals are inclusive: an output never shares
// with an input of its own step (no kernel here is written to run in place).
// A Reshape is a view: reading it reads its input's buffer, so its readers count for the
// buffer it views (its root).
// Exempt (a buffer of its own, never shared), because something outside the step's order reads
// them:
// - fetched outputs (and the buffers fetched views look into): the caller reads them after the
//   run, and so does RunOptions::epilogue, which queues device work after the last step;
// - bound outputs (already set: the Reducer's fusion buffers, read by the allreduce on the
//   communication thread or NCCL's stream, by the compression hook thread, or by the peers'
//   fused updates while this rank's backward goes on);
// - Variables, constants and feeds are not kernel outputs: never planned.
// Update (Apply*) steps have no outputs; what they read stays live to the end of the step, since
// a CUDA plan launches them in fused groups (cuda::FusedUpdates) in an order of its own.
// The placement is greedy by size with best fit (TFLite's GreedyBySize, Pisarchyk & Lee 2020):
// largest output first, each at the lowest-waste gap among the already placed outputs whose
// intervals overlap its own, else on top. For a chain of layers it reaches the peak of the
// largest live set (or near it) in O(n^2) for n outputs, fine for plans of a few thousand
// nodes, and it is deterministic, so every rank's plan is the same. Offsets are multiples of
// 64 B on the CPU (a cache line, what the CPU allocator gives) and 256 B on a GPU (cudaMalloc's
// alignment, which cuBLAS(Lt), cuDNN and vectorised kernels may rely on).
void Session::assign_buffers(Plan& plan, const std::vector<Value>& fetches, const std::vector<OutSpec>& out_spec) {
  const size_t nv = plan.values.size();
  auto index_of = [&](const Tensor* t) { return size_t(t - plan.values.data()); };
  // Outputs to allocate: each remaining kernel step's outputs that are not bound.
  std::vector<int> first(nv, -1), last(nv, -1);
  std::vector<size_t> root(nv);
  std::iota(root.begin(), root.end(), size_t(0));
  const int nsteps = int(plan.steps.size());
  for (int si = 0; si < nsteps; ++si) {
    const PlanStep& st = plan.steps[size_t(si)];
    const int read_until = size_t(si) >= plan.first_update ? nsteps : si;
    for (int i = 0; i < st.nin; ++i) {
      const size_t r = root[index_of(st.in[i])];
      if (first[r] >= 0) last[r] = std::max(last[r], read_until);
    }
    if (st.kind == PlanStep::Kind::View) root[index_of(st.out[0])] = root[index_of(st.in[0])];
    if (st.kind != PlanStep::Kind::Kernel) continue;
    for (int j = 0; j < st.nout; ++j) {
      const size_t v = index_of(st.out[j]);
      if (st.out[j]->defined()) continue;  // bound
      first[v] = last[v] = si;
    }
  }
  std::vector<char> exempt(nv, 0);
  for (const Value& f : fetches) exempt[root[size_t(plan.base[size_t(f.node)] + f.index)]] = 1;

  struct Item {
    size_t value, bytes, offset;
    int first, last;
  };
  std::vector<Item> items;
  const size_t align = device_.is_cuda() ? 256 : 64;
  for (size_t v = 0; v < nv; ++v) {
    if (first[v] < 0) continue;
    const OutSpec& s = out_spec[v];
    const size_t bytes = size_t(s.shape.numel()) * dtype_size(s.dtype);
    if (!memory_reuse_ || exempt[v] || bytes == 0) {
      plan.values[v] = Tensor(s.shape, s.dtype, device_);
      plan.bytes += bytes;
      continue;
    }
    items.push_back({v, (bytes + align - 1) / align * align, 0, first[v], last[v]});
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.bytes > b.bytes; });
  size_t total = 0;
  std::vector<const Item*> overlapping;
  for (size_t k = 0; k < items.size(); ++k) {
    Item& it = items[k];
    overlapping.clear();
    for (size_t p = 0; p < k; ++p)
      if (items[p].first <= it.last && it.first <= items[p].last) overlapping.push_back(&items[p]);
    std::sort(overlapping.begin(), overlapping.end(),
              [](const Item* a, const Item* b) { return a->offset < b->offset; });
    size_t best = SIZE_MAX, best_waste = SIZE_MAX, end = 0;  // end: the top of what is placed so far
    for (const Item* o : overlapping) {
      if (o->offset >= end && o->offset - end >= it.bytes && o->offset - end - it.bytes < best_waste) {
        best = end;
        best_waste = o->offset - end - it.bytes;
      }
      end = std::max(end, o->offset + o->bytes);
    }
    it.offset = best != SIZE_MAX ? best : end;
    total = std::max(total, it.offset + it.bytes);
  }
  if (total == 0) return;
  plan.arena = Tensor(Shape{i64(total)}, DType::U8, device_);
  plan.bytes += total;
  for (const Item& it : items) {
    const OutSpec& s = out_spec[it.value];
    plan.values[it.value] = plan.arena.view_bytes(it.offset, s.shape, s.dtype);
  }
}

// The remapper (FusedChain, exec.h): a MatMul or Conv2D whose only reader is a BiasAdd (as its
// x), optionally followed by a Relu that is the BiasAdd's only reader, becomes one step at the
// chain's last node. An intermediate output that is fetched or bound to a buffer is read from
// outside the plan, so its chain stays unfused there.
void Session::fuse_chains(Plan& plan, const std::vector<Value>& fetches) {
  const size_t nv = plan.values.size();
  auto value_of = [&](int node, int index) { return size_t(plan.base[size_t(node)] + index); };
  std::vector<int> uses(nv, 0), reader(nv, -1);  // reader: the step that reads a value (its last)
  for (size_t si = 0; si < plan.steps.size(); ++si)
    for (const Value& v : plan.steps[si].node->inputs) {
      const size_t i = value_of(v.node, v.index);
      ++uses[i];
      reader[i] = int(si);
    }
  for (const Value& v : fetches) uses[value_of(v.node, v.index)] += 2;
  // The step reading node's output 0 and nothing else reading it, when that step runs `op`.
  auto sole_reader = [&](const Node& node, Op op) -> PlanStep* {
    const size_t i = value_of(node.id, 0);
    if (uses[i] != 1 || bound_outputs_.count(int64_t(node.id) * 8)) return nullptr;
    PlanStep& r = plan.steps[size_t(reader[i])];
    if (r.kind != PlanStep::Kind::Kernel || r.chain || r.node->op != op || size_t(reader[i]) >= plan.first_update)
      return nullptr;
    return &r;
  };
  std::vector<char> drop(plan.steps.size(), 0);
  for (size_t si = 0; si < plan.first_update; ++si) {
    PlanStep& root = plan.steps[si];
    if (root.kind != PlanStep::Kind::Kernel || root.chain || (root.node->op != Op::MatMul && root.node->op != Op::Conv2D))
      continue;
    PlanStep* bias = sole_reader(*root.node, Op::BiasAdd);
    if (!bias || bias->node->inputs[0].node != root.node->id) continue;  // the product must be x, not the bias
    PlanStep* relu = sole_reader(*bias->node, Op::Relu);
    PlanStep& last = relu ? *relu : *bias;
    auto chain = std::make_unique<FusedChain>();
    chain->root = root.node;
    chain->bias_add = bias->node;
    chain->relu = relu ? relu->node : nullptr;
    chain->label = std::string(op_name(root.node->op)) + "+BiasAdd" + (relu ? "+Relu" : "");
    // The intermediate buffers are never written now: give them back.
    plan.values[value_of(root.node->id, 0)] = Tensor();
    if (relu) plan.values[value_of(bias->node->id, 0)] = Tensor();
    Tensor* const bias_value = bias->in[1];  // read before `last` (maybe *bias) is rewritten
    last.chain = chain.get();
    last.nin = root.nin + 1;
    std::copy(root.in, root.in + root.nin, last.in);
    last.in[root.nin] = bias_value;
    drop[si] = 1;
    if (relu) drop[size_t(bias - plan.steps.data())] = 1;
    plan.chains.push_back(std::move(chain));
  }
  size_t kept = 0, dropped = 0;
  for (size_t si = 0; si < plan.steps.size(); ++si) {
    if (drop[si]) {
      ++dropped;
      continue;
    }
    plan.steps[kept++] = plan.steps[si];
  }
  plan.steps.resize(kept);
  plan.first_update -= dropped;  // only compute steps are fused
  chains_fused_ += plan.chains.size();
}

void Session::set_fuse_epilogues(bool on) {
  fuse_epilogues_ = on;
  drop_plans();
}

Plan& Session::plan_for(const std::vector<Value>& fetches, const std::vector<Feed>& feeds,
                        const std::vector<Value>& targets) {
  std::vector<int64_t>& k = key_scratch_;
  k.clear();
  for (const Value& v : fetches) { k.push_back(v.node); k.push_back(v.index); }
  k.push_back(-1);
  for (const Value& v : targets) k.push_back(v.node);
  k.push_back(-2);
  for (const Feed& f : feeds) {
    k.push_back(f.first.node);
    k.push_back(int64_t(f.second.dtype()) | (int64_t(f.second.device().is_cuda()) << 8));
    const Shape& s = f.second.shape();
    k.push_back(s.rank);
    for (int i = 0; i < s.rank; ++i) k.push_back(s[i]);
  }
  auto it = plans_.find(k);
  if (it != plans_.end()) {
    lru_.splice(lru_.begin(), lru_, it->second);  // most recently used first; allocates nothing
    return *it->second->plan;
  }
  auto plan = compile(fetches, feeds, targets);
  if (lru_.size() >= plan_capacity_) {
    stream_.synchronize();  // a CUDA plan's queued work may still read what the evicted one frees
    plans_.erase(lru_.back().key);
    lru_.pop_back();
    ++plans_evicted_;
  }
  lru_.push_front(CachedPlan{k, std::move(plan)});
  plans_.emplace(k, lru_.begin());
  return *lru_.front().plan;
}

// A captured step replays exactly what it recorded, so everything it does must be device work at
// fixed addresses: refuse what is not, naming it.
void Session::check_graphable(const Plan& plan, const std::vector<Feed>& feeds, const RunOptions& o) const {
  RF_CHECK(device_.is_cuda(), "CUDA graphs need a CUDA device; this session runs on ", device_.str());
  RF_CHECK(!o.on_node_done && !o.before_updates && !o.before_update && !o.before_exchanged_reads && !o.timeline,
           "a CUDA graph cannot run host hooks (on_node_done, before_update(s), before_exchanged_reads, timeline) "
           "inside a step");
  for (size_t i = 0; i < feeds.size(); ++i)
    RF_CHECK(!plan.feed_staging[i].defined(), "a CUDA graph needs device feeds; '", graph_.node(feeds[i].first).name,
             "' is fed from ", feeds[i].second.device().str());
  for (const PlanStep& st : plan.steps) {
    RF_CHECK(st.kind != PlanStep::Kind::Init, "a CUDA graph cannot run initialisers ('", st.node->name, "')");
    RF_CHECK(st.node->op != Op::Dropout, "a CUDA graph would freeze Dropout's per-run counter ('", st.node->name,
             "')");
  }
}

const std::vector<Tensor>& Session::run(const std::vector<Value>& fetches, const std::vector<Feed>& feeds,
                                        const std::vector<Value>& targets, const RunOptions* options) {
  Plan& plan = plan_for(fetches, feeds, targets);
  last_plan_bytes_ = plan.bytes;
  for (size_t i = 0; i < feeds.size(); ++i) {
    const int base = plan.base[size_t(feeds[i].first.node)];
    if (base < 0) continue;  // a feed the fetches do not need (allowed, as in TensorFlow)
    Tensor& slot = plan.values[size_t(base)];
    if (plan.feed_staging[i].defined()) {
      plan.feed_staging[i].copy_from(feeds[i].second);
      slot = plan.feed_staging[i];
    } else {
      slot = feeds[i].second;
    }
  }
#if RINGFLOW_CUDA
  const bool graph = options && options->cuda_graph;
  if (graph && !plan.graph) check_graphable(plan, feeds, *options);
  if (plan.fused) plan.fused->prepare();
  if (graph && plan.graph) {
    for (size_t i = 0; i < feeds.size(); ++i)
      RF_CHECK(feeds[i].second.device().is_cpu() || feeds[i].second.raw() == plan.graph_feeds[i], "feed for '",
               graph_.node(feeds[i].first).name,
               "' is another buffer than the captured step's: a CUDA graph needs the same feed tensors every run");
    cuda::graph_launch(plan.graph, stream_.handle);
    ++plan.runs;
  } else if (graph && plan.runs >= 2) {  // two eager warm-up runs, then capture
    cuda::capture_begin(device_.index, stream_.handle);
    try {
      execute(plan, options);
      plan.graph = cuda::capture_end(device_.index, stream_.handle, &graph_kernels_);
      ++graphs_captured_;
    } catch (...) {
      cuda::capture_abort(device_.index, stream_.handle);
      throw;
    }
    for (const Feed& f : feeds) plan.graph_feeds.push_back(f.second.raw());
    cuda::graph_launch(plan.graph, stream_.handle);
  } else {
    execute(plan, options);
  }
  if (plan.fused) plan.fused->step_queued(stream_);
#else
  RF_CHECK(!options || !options->cuda_graph, "CUDA graphs need a CUDA build; this session runs on ", device_.str());
  execute(plan, options);
#endif
  return plan.results;
}

void Session::execute(Plan& plan, const RunOptions* options) {
  RF_CHECK(!(options && options->update_grads) || device_.is_cpu(),
           "RunOptions::update_grads (averaging gradients inside the update) runs on CPU sessions only, not on ",
           device_.str());
  if (plan.writes_bound && bound_write_guard_) bound_write_guard_(options);
  ExecContext ctx{device_, stream_, plan.runs++};
  if (options && options->prologue) options->prologue(stream_.handle);
#if RINGFLOW_CUDA
  if (plan.fused) plan.fused->upload(ctx);
#endif
  bool updates_began = false;
  auto begin_updates = [&] {
    if (updates_began) return;
    updates_began = true;
    if (options && options->before_updates) options->before_updates();
  };
  for (size_t si = 0; si < plan.steps.size(); ++si) {
    PlanStep& st = plan.steps[si];
    if (st.reads_exchanged && !updates_began) {
      begin_updates();
      if (options && options->before_exchanged_reads) options->before_exchanged_reads();
    }
    if (si == plan.first_update) begin_updates();
#if RINGFLOW_CUDA
    if (si == plan.first_update && plan.fused) {
      // Every update of a group runs in one launch, once the hooks of all its members ran.
      cuda::FusedUpdates& fu = *plan.fused;
      for (size_t g = 0; g < fu.groups(); ++g) {
        if (options && options->before_update)
          for (int id : fu.nodes(g)) options->before_update(id);
        if (options && options->timeline) stream_.synchronize();  // a blocking profile, as below
        const int64_t t0 = options && options->timeline ? options->timeline->now_us() : 0;
        fu.launch(g, ctx);
        if (options && options->timeline) {
          stream_.synchronize();
          options->timeline->span(graph_.node(fu.nodes(g)[0]).name, "FusedUpdate", 0, t0,
                                  options->timeline->now_us());
        }
        if (options && options->on_node_done)
          for (int id : fu.nodes(g)) options->on_node_done(id);
      }
      break;
    }
#endif
    if (si >= plan.first_update && options && options->before_update) options->before_update(st.node->id);
    ctx.grad_sources = si >= plan.first_update && options && options->update_grads
                           ? options->update_grads(st.node->id) : nullptr;
    switch (st.kind) {
      case PlanStep::Kind::Feed:
      case PlanStep::Kind::Const:
        break;
      case PlanStep::Kind::Var:
        RF_CHECK(initialized(st.node->id), "Variable '", st.node->name,
                 "' is read before it is initialised: run the graph's initializers first");
        break;
      case PlanStep::Kind::Init:
        run_initializer(st.node->attrs.var);
        break;
      case PlanStep::Kind::View: {
        Tensor& o = *st.out[0];
        const Shape shape = o.defined() ? o.shape() : Shape{};
        if (!o.defined()) {
          // First run: the view's shape is the inferred one (input numel is fixed by the plan).
          std::vector<OutSpec> in;
          for (int i = 0; i < st.nin; ++i) in.push_back({st.in[i]->dtype(), st.in[i]->shape()});
          o = st.in[0]->view(infer_outputs(*st.node, in)[0].shape);
        } else {
          o = st.in[0]->view(shape);
        }
        break;
      }
      case PlanStep::Kind::Kernel: {
        // On a CUDA device a traced run waits for each op, so its span is the op's device time
        // (a blocking profile: slower than an untraced step, and no overlap between ops).
        const bool traced = options && options->timeline;
        if (traced && device_.is_cuda()) stream_.synchronize();
        const int64_t t0 = traced ? options->timeline->now_us() : 0;
        if (st.chain) {
#if RINGFLOW_CUDA
          if (device_.is_cuda()) exec_fused_cuda(*st.chain, st.in, st.out, ctx);
          else
#endif
            exec_fused_cpu(*st.chain, st.in, st.out, ctx);
        } else {
#if RINGFLOW_CUDA
          if (device_.is_cuda()) exec_cuda(*st.node, st.in, st.out, ctx);
          else
#endif
            exec_cpu(*st.node, st.in, st.out, ctx);
        }
        if (traced) {
          if (device_.is_cuda()) stream_.synchronize();
          options->timeline->span(st.node->name, st.chain ? st.chain->label.c_str() : op_name(st.node->op), 0, t0,
                                  options->timeline->now_us());
        }
        break;
      }
    }
    if (options && options->on_node_done) {
      if (st.chain) {  // every node of the chain is done
        options->on_node_done(st.chain->root->id);
        if (st.chain->relu) options->on_node_done(st.chain->bias_add->id);
      }
      options->on_node_done(st.node->id);
    }
  }
  begin_updates();  // a plan without update nodes
  for (size_t i = 0; i < plan.fetch_slots.size(); ++i) plan.results[i] = *plan.fetch_slots[i];
  if (options && options->epilogue) options->epilogue(stream_.handle, plan.results);
}

}  // namespace rf
