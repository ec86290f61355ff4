// Bucket assignment, readiness tracking and launch order of the gradient Reducer.
#include "collective/reducer.h"

#include <algorithm>
#include <cstring>

namespace rf::collective {

Reducer::Reducer(Communicator& comm, Session& session, const std::vector<int>& vars, const std::vector<Value>& grads,
                 const ReducerOptions& options)
    : comm_(comm), opts_(options), timeline_(options.timeline ? options.timeline : &clock_) {
  RF_CHECK(vars.size() == grads.size() && !vars.empty(), "Reducer: ", vars.size(), " variables but ", grads.size(),
           " gradients");
  RF_CHECK(opts_.bucket_mb > 0 && opts_.first_bucket_mb > 0, "--bucket-mb must be positive, got ", opts_.bucket_mb);
  RF_CHECK(!opts_.skip_exchange || !opts_.compress.compressing(),
           "--no-gradient-exchange measures the step without any collective: it does not combine with --compress");
  const Graph& g = session.graph();
  dtype_ = g.spec(grads[0]).dtype;
  RF_CHECK(dtype_ == DType::F32 || dtype_ == DType::F64, "Reducer: gradients must be F32 or F64");

  // Reverse forward order: the backward pass produces the last layers' gradients first.
  double cap = opts_.first_bucket_mb * 1024 * 1024;
  Bucket current;
  size_t bytes = 0;
  for (size_t k = vars.size(); k-- > 0;) {
    const OutSpec& s = g.spec(grads[k]);
    RF_CHECK(s.dtype == dtype_ && s.shape.defined(), "Reducer: gradient of '", g.node(vars[k]).name,
             "' is ", dtype_name(s.dtype), s.shape.str(), ", expected a fully defined ", dtype_name(dtype_));
    const size_t b = size_t(s.shape.numel()) * dtype_size(dtype_);
    if (!current.grads.empty() && double(bytes + b) > cap) {
      buckets_.push_back(std::move(current));
      current = Bucket{};
      bytes = 0;
      cap = opts_.bucket_mb * 1024 * 1024;
    }
    current.grads.push_back(int(k));
    current.elements += size_t(s.shape.numel());
    bytes += b;
  }
  buckets_.push_back(std::move(current));

  node_buckets_.assign(size_t(g.size()), {});
  pending_.assign(buckets_.size(), 0);
  // Host sessions keep the buckets back to back in the shared window (regions at offsets).
  in_shm_ = session.device().is_cpu();
  char* window = nullptr;
  if (in_shm_) {
    size_t total = 0;
    for (const Bucket& b : buckets_) total += b.elements;
    window = static_cast<char*>(comm_.shm_buffer(std::max<size_t>(total, 1) * dtype_size(dtype_)));
    // An earlier fused Reducer's last run may still have a peer reading this rank's region (a run
    // that skipped some updates publishes no "consumed"): every rank is single-threaded, so once
    // all are here, all are done with it.
    comm_.barrier();
    std::memset(window, 0, total * dtype_size(dtype_));
  }
  size_t next_offset = 0;
  std::vector<size_t> grad_offset(vars.size(), 0);  // each gradient's first element in the window
  for (size_t bi = 0; bi < buckets_.size(); ++bi) {
    Bucket& bk = buckets_[bi];
    bk.offset = next_offset;
    next_offset += bk.elements;
    bk.buffer = in_shm_ ? Tensor::wrap(window + bk.offset * dtype_size(dtype_), Shape{i64(bk.elements)}, dtype_)
                        : Tensor::zeros(Shape{i64(bk.elements)}, dtype_, session.device());
    i64 offset = 0;
    for (int k : bk.grads) {
      const Shape& shape = g.spec(grads[size_t(k)]).shape;
      session.bind_output(grads[size_t(k)], bk.buffer.slice(offset, shape));
      grad_offset[size_t(k)] = bk.offset + size_t(offset);
      offset += shape.numel();
      node_buckets_[size_t(grads[size_t(k)].node)].push_back(int(bi));
    }
  }
  work_.resize(buckets_.size());
  launched_at_.assign(buckets_.size(), -1);
  waited_.assign(buckets_.size(), 1);  // nothing in flight yet
  for (size_t bi = 0; bi < buckets_.size(); ++bi) pending_[bi] = int(buckets_[bi].grads.size());

  // Each update node waits for the bucket of the Variable it updates (its input 0).
  std::vector<int> var_bucket(size_t(g.size()), -1);
  for (size_t bi = 0; bi < buckets_.size(); ++bi)
    for (int k : buckets_[bi].grads) var_bucket[size_t(vars[size_t(k)])] = int(bi);
  update_bucket_.assign(size_t(g.size()), -1);
  updates_left_.assign(buckets_.size(), 0);
  for (const Node& n : g.nodes())
    if ((n.op == Op::ApplySGD || n.op == Op::ApplyMomentum || n.op == Op::ApplyAdam) &&
        var_bucket[size_t(n.inputs[0].node)] >= 0) {
      update_bucket_[size_t(n.id)] = var_bucket[size_t(n.inputs[0].node)];
      ++updates_left_[size_t(update_bucket_[size_t(n.id)])];
    }

  run_options_.on_node_done = [this](int node) { on_node_done(node); };
  run_options_.before_updates = [this] { backward_done(); };
  // Nodes that read the exchanged gradients other than updates (clip_by_global_norm's): every
  // bucket first.
  run_options_.before_exchanged_reads = [this] {
    for (size_t b = 0; b < buckets_.size(); ++b) wait_bucket(b);
  };
  run_options_.before_update = [this](int node) {
    if (size_t(node) < update_bucket_.size() && update_bucket_[size_t(node)] >= 0)
      wait_bucket(size_t(update_bucket_[size_t(node)]));
  };
  run_options_.timeline = opts_.timeline;
  bytes_sent_.assign(buckets_.size(), 0);

  if (opts_.fuse != ReducerOptions::Fuse::Off && comm_.size() > 1 && !opts_.skip_exchange) {
    const std::string blocker = fuse_blocker(g, vars, grads);
    RF_CHECK(blocker.empty() || opts_.fuse == ReducerOptions::Fuse::Auto, "--fuse-update on: ", blocker);
    if (blocker.empty()) setup_fused(session, g, vars, grad_offset);
  }

  if (opts_.compress.compressing()) {
    for (size_t bi = 0; bi < buckets_.size(); ++bi) {
      std::vector<Tensor> views;
      i64 offset = 0;
      for (int k : buckets_[bi].grads) {
        const Shape& shape = g.spec(grads[size_t(k)]).shape;
        views.push_back(buckets_[bi].buffer.slice(offset, shape));
        offset += shape.numel();
      }
      compressors_.push_back(make_bucket_compressor(opts_.compress, std::move(views)));
    }
    hook_done_.assign(buckets_.size(), 1);
    hook_ = std::thread([this] { hook_loop(); });
  }
}

const char* fuse_name(ReducerOptions::Fuse f) {
  switch (f) {
    case ReducerOptions::Fuse::Auto: return "auto";
    case ReducerOptions::Fuse::On: return "on";
    case ReducerOptions::Fuse::Off: return "off";
  }
  return "?";
}

ReducerOptions::Fuse parse_fuse(const std::string& s) {
  for (auto f : {ReducerOptions::Fuse::Auto, ReducerOptions::Fuse::On, ReducerOptions::Fuse::Off})
    if (s == fuse_name(f)) return f;
  throw Error("--fuse-update must be auto, on or off, got '" + s + "'");
}

std::string peer_window_blocker(Communicator& comm) {
  if (comm.peer_window()) return "";
  return "the fused update needs every rank on one node with the ring backend's shared-memory transport (" +
         comm.name() + " has no peer window)";
}

namespace {
const char* const kConsumedWait = "fused update (peers reading the last step's gradients)";

// Variable node id -> its index in vars (-1: not a trained Variable).
std::vector<int> index_of_vars(const Graph& g, const std::vector<int>& vars) {
  std::vector<int> index_of(size_t(g.size()), -1);
  for (size_t k = 0; k < vars.size(); ++k) index_of[size_t(vars[k])] = int(k);
  return index_of;
}
}  // namespace

std::string Reducer::fuse_blocker(const Graph& g, const std::vector<int>& vars, const std::vector<Value>& grads) const {
  if (!in_shm_) return "the fused update runs on CPU sessions only";
  if (std::string why = peer_window_blocker(comm_); !why.empty()) return why;
  if (opts_.compress.compressing()) return "the fused update reads raw gradients; --compress needs the allreduce";
  if (opts_.fuse == ReducerOptions::Fuse::Auto && comm_.size() > kFuseMaxRanks)
    return std::to_string(comm_.size()) + " ranks (the fused update reads every rank's gradient on every rank)";
  const std::vector<int> index_of = index_of_vars(g, vars);
  // One window slot per gradient value: two Variables handed the same value (autodiff can) would
  // bind it twice, and one slot would never be written.
  for (size_t k = 0; k < grads.size(); ++k)
    for (size_t j = 0; j < k; ++j)
      if (grads[j].node == grads[k].node && grads[j].index == grads[k].index)
        return "'" + g.node(vars[j]).name + "' and '" + g.node(vars[k]).name + "' share one gradient value";
  std::vector<char> updated(vars.size(), 0);
  for (const Node& n : g.nodes()) {
    if (update_bucket_[size_t(n.id)] < 0) continue;
    const int k = index_of[size_t(n.inputs[0].node)];
    // A step counts its updates to know when it has read every peer's gradients: one a Variable.
    if (updated[size_t(k)])
      return "'" + g.node(vars[size_t(k)]).name + "' has more than one update op in the graph (the fused "
             "update counts one a Variable a step)";
    const Value grad = n.inputs[n.inputs.size() - 2];
    if (grad.node != grads[size_t(k)].node || grad.index != grads[size_t(k)].index)
      return "update '" + n.name + "' does not read the raw gradient of '" + g.node(vars[size_t(k)]).name + "'";
    updated[size_t(k)] = 1;
  }
  for (size_t k = 0; k < vars.size(); ++k)
    if (!updated[k])
      return "the gradient of '" + g.node(vars[k]).name + "' is not consumed by an update op (the fused update "
             "averages gradients only inside updates)";
  return "";
}

void Reducer::setup_fused(Session& session, const Graph& g, const std::vector<int>& vars,
                          const std::vector<size_t>& grad_offset) {
  peers_ = comm_.peer_window();
  const size_t es = dtype_size(dtype_);
  const std::vector<int> index_of = index_of_vars(g, vars);
  sources_.assign(size_t(g.size()), {});
  for (const Node& n : g.nodes()) {
    if (update_bucket_[size_t(n.id)] < 0) continue;
    const size_t at = grad_offset[size_t(index_of[size_t(n.inputs[0].node)])] * es;
    for (int r = 0; r < comm_.size(); ++r)
      sources_[size_t(n.id)].push_back(static_cast<const char*>(peers_->buffer(r)) + at);
    ++updates_per_step_;
  }
  updates_left_in_step_ = updates_per_step_;
  ready_at_.assign(buckets_.size(), 0);
  // The flags count from zero for this Reducer; an earlier one may have left them higher.
  comm_.barrier();
  peers_->publish(kReady, 0);
  peers_->publish(kConsumed, 0);
  comm_.barrier();
  // A run that writes the gradients without this Reducer's prologue would overwrite them while a
  // peer may still be averaging the last step's: the replicas would drift apart without a word.
  // (Its options, or a copy with hooks added, carry the prologue and update_grads.)
  guarded_ = &session;
  session.guard_bound_writes([](const RunOptions* o) {
    RF_CHECK(o && o->prologue && o->update_grads,
             "this run writes the gradient buffers of a fused Reducer without its run_options(): a peer may "
             "still be averaging them (pass Reducer::run_options() to every run that computes gradients)");
  });
  run_options_.update_grads = [this](int node) -> const std::vector<const void*>* {
    return size_t(node) < sources_.size() && !sources_[size_t(node)].empty() ? &sources_[size_t(node)] : nullptr;
  };
  // Before this step writes a gradient: every peer has read the last step's.
  run_options_.prologue = [this](void*) {
    if (step_ == 0) return;
    // A step that ran without all of its update ops never told the peers it was done reading
    // (nor read theirs): waiting would hang. Every rank ran the same plan, so every rank stops.
    bool all_waited = updates_left_in_step_ == updates_per_step_;
    for (char w : waited_) all_waited = all_waited && w;
    RF_CHECK(all_waited, "Reducer: the previous step ran without all of its update ops; with the fused update "
             "(--fuse-update) every step passed the Reducer's RunOptions must be a full training step");
    const int64_t t0 = opts_.timeline ? timeline_->now_us() : 0;
    peers_->wait(kConsumed, uint64_t(step_), kConsumedWait);
    if (opts_.timeline) opts_.timeline->span("peers done reading", "allreduce", 1, t0, timeline_->now_us());
  };
}

Reducer::~Reducer() {
  if (guarded_) guarded_->guard_bound_writes(nullptr);
  // The fused update's last step: the peers may still be reading this rank's window, which the
  // next user of shm_buffer would overwrite. Wait for them (only when this rank finished its step,
  // as the peers then will; a step abandoned by an exception leaves nothing to wait for).
  if (peers_ && step_ > 0 && peers_->flag(kConsumed) == uint64_t(step_)) {
    try {
      peers_->wait(kConsumed, uint64_t(step_), kConsumedWait);
    } catch (...) {  // never throw from a destructor
    }
  }
  if (!hook_.joinable()) return;
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  hook_.join();
}

// The compression hook thread: buckets in launch order (the same collective order on every rank).
void Reducer::hook_loop() {
  for (;;) {
    std::pair<size_t, int64_t> job;
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = queue_.front();
      queue_.pop_front();
    }
    size_t bytes = 0;
    std::string error;
    try {
      bytes = compressors_[job.first]->reduce(comm_, job.second);
    } catch (const std::exception& e) {
      error = e.what();
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      bytes_sent_[job.first] = bytes;
      if (!error.empty() && hook_error_.empty()) hook_error_ = error;
      hook_done_[job.first] = 1;
    }
    cv_.notify_all();
  }
}

size_t Reducer::bytes_sent_last_step() const {
  size_t n = 0;
  for (size_t b : bytes_sent_) n += b;
  return n;
}

size_t Reducer::bytes_per_step() const {
  size_t n = 0;
  for (const Bucket& b : buckets_) n += b.elements * dtype_size(dtype_);
  return n;
}

void Reducer::on_node_done(int node) {
  if (size_t(node) >= node_buckets_.size()) return;
  if (peers_ && update_bucket_[size_t(node)] >= 0 && --updates_left_in_step_ == 0) {
    peers_->publish(kConsumed, uint64_t(step_));  // this step's updates have read every peer's gradients
    updates_left_in_step_ = updates_per_step_;
  }
  const std::vector<int>& bs = node_buckets_[size_t(node)];
  if (bs.empty()) return;
  for (int b : bs) --pending_[size_t(b)];
  launch_ready();
}

// Buckets start in index order on every rank (the communication thread runs collectives in
// submission order, which must be the same everywhere), so a bucket that is ready early waits
// for the ones before it.
void Reducer::launch_ready() {
  while (next_launch_ < buckets_.size() && pending_[next_launch_] == 0) {
    // The executor has just written this bucket's gradients: the previous step's allreduce of
    // it must have been waited for by that step's update ops.
    RF_CHECK(waited_[next_launch_], "Reducer: the previous step ran without its update ops (bucket ", next_launch_,
             " was never waited for); pass the Reducer's RunOptions only to full training steps");
    waited_[next_launch_] = 0;
    Bucket& b = buckets_[next_launch_];
    const int64_t now = timeline_->now_us();
    if (current_.first_launch < 0) current_.first_launch = now;
    launched_at_[next_launch_] = now;
    if (opts_.skip_exchange) {
      work_[next_launch_] = Work();  // done: nothing is exchanged
    } else if (peers_) {
      ready_at_[next_launch_] = uint64_t(step_) * buckets_.size() + next_launch_ + 1;
      peers_->publish(kReady, ready_at_[next_launch_]);
      bytes_sent_[next_launch_] = size_t(comm_.size() - 1) * b.elements * dtype_size(dtype_);  // read by the peers
    } else if (!compressors_.empty()) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        hook_done_[next_launch_] = 0;
        queue_.emplace_back(next_launch_, step_);
      }
      cv_.notify_all();
    } else {
      work_[next_launch_] = in_shm_ ? comm_.allreduce_shm_async(b.elements, dtype_, ReduceOp::Avg, b.offset)
                                    : comm_.allreduce_async(b.buffer.raw(), b.buffer.raw(), b.elements, dtype_,
                                                            ReduceOp::Avg);
      bytes_sent_[next_launch_] = ring_allreduce_bytes(b.elements * dtype_size(dtype_), comm_.size());
    }
    ++next_launch_;
  }
}

void Reducer::wait_bucket(size_t b) {
  if (waited_[b]) return;
  if (peers_) {
    peers_->wait(kReady, ready_at_[b], "fused update (waiting for the peers' gradients)");
  } else if (!compressors_.empty()) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return hook_done_[b] != 0; });
    if (!hook_error_.empty()) throw Error(hook_error_);
  } else if (in_shm_) {
    work_[b].wait();
  } else {
    work_[b].wait_device();  // device buckets: the update kernels wait on the stream, the host goes on
  }
  waited_[b] = 1;
  if (opts_.timeline)
    opts_.timeline->span((peers_ ? std::string("peers ready") : compressors_.empty() ? std::string("allreduce")
                                                                                 : opts_.compress.str()) +
                             " bucket " + std::to_string(b) + " (" +
                             std::to_string(buckets_[b].elements * dtype_size(dtype_)) + " B)",
                         "allreduce", 1, launched_at_[b], timeline_->now_us());
}

// After the last gradient: every bucket has been launched. Buckets that no update node waits
// for (a plan that fetches gradients without updating) are waited here; the others are waited
// by their update nodes. Then the per-step state is reset for the next step.
void Reducer::backward_done() {
  current_.backward_done = timeline_->now_us();
  RF_CHECK(next_launch_ == buckets_.size(), "Reducer: only ", next_launch_, " of ", buckets_.size(),
           " gradient buckets were ready when the update began (a gradient was not computed by this step)");
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (updates_left_[b] == 0) wait_bucket(b);
    pending_[b] = int(buckets_[b].grads.size());
  }
  next_launch_ = 0;
  ++step_;
  last_ = current_;
  current_ = StepTimes{};
}

}  // namespace rf::collective
