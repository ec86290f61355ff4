// The single-replica training loop. Throughput counts training steps only: data loading,
// graph building, initialisation and evaluation are outside the timed region.
#include "models/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include "autodiff/optimizer.h"
#include "collective/communicator.h"
#include "collective/reducer.h"
#include "collective/replicas.h"
#include "models/checkpoint.h"
#include "models/dataset.h"
#include "models/models.h"
#include "runtime/session.h"
#if RINGFLOW_CUDA
#include "runtime/cuda_backend.h"
#endif

namespace rf {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A synthetic set of more samples than this would not fit in memory as floats (7.8 GB).
constexpr int64_t kMaxSynthetic = 2'500'000;
// More OpenMP threads than this is no machine ringflow runs on (and 100000 crashes libgomp).
constexpr int kMaxThreads = 1024;
constexpr int64_t kMaxPlanCache = 1 << 20;

}  // namespace

void validate_config(const TrainConfig& c) {
  RF_CHECK(c.model == "mlp" || c.model == "cnn", "unknown model '", c.model, "': expected mlp or cnn");
  RF_CHECK(c.data == "fashion-mnist" || c.data == "synthetic", "unknown data set '", c.data,
           "': expected fashion-mnist or synthetic");
  RF_CHECK(c.dtype == "f32" || c.dtype == "f64", "unknown dtype '", c.dtype, "': expected f32 or f64");
  RF_CHECK(c.batch > 0, "--batch must be positive, got ", c.batch);
  RF_CHECK(c.lr > 0 && std::isfinite(c.lr), "--lr must be positive, got ", c.lr);
  RF_CHECK(c.epochs > 0, "--epochs must be positive, got ", c.epochs);
  RF_CHECK(c.max_steps == -1 || c.max_steps > 0, "--max-steps must be positive, got ", c.max_steps);
  RF_CHECK(c.threads >= 0 && c.threads <= kMaxThreads, "--threads must be in [0, ", kMaxThreads, "], got ", c.threads);
  RF_CHECK(c.eval_batch > 0, "--eval-batch must be positive, got ", c.eval_batch);
  RF_CHECK(c.metrics_every > 0, "--metrics-every must be positive, got ", c.metrics_every);
  collective::parse_fuse(c.fuse_update);  // throws on anything but auto|on|off
  RF_CHECK(c.fuse_epilogues == "on" || c.fuse_epilogues == "off", "--fuse-epilogues must be on or off, got '",
           c.fuse_epilogues, "'");
  RF_CHECK(c.memory_reuse == "on" || c.memory_reuse == "off", "--memory-reuse must be on or off, got '",
           c.memory_reuse, "'");
  RF_CHECK(c.plan_cache >= 0 && c.plan_cache <= kMaxPlanCache, "--plan-cache must be in [0, ", kMaxPlanCache,
           "] (0: the default), got ", c.plan_cache);
  RF_CHECK(c.cuda_graph == "auto" || c.cuda_graph == "on" || c.cuda_graph == "off",
           "--cuda-graph must be auto, on or off, got '", c.cuda_graph, "'");
  RF_CHECK(!c.no_gradient_exchange || c.check_every == 0,
           "--no-gradient-exchange lets the replicas drift apart: it does not combine with --check-every");
  RF_CHECK(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "--weight-decay must be >= 0, got ", c.weight_decay);
  RF_CHECK(c.momentum >= 0 && std::isfinite(c.momentum), "--momentum must be >= 0, got ", c.momentum);
  RF_CHECK(c.warmup_steps >= 0, "--warmup-steps must be >= 0, got ", c.warmup_steps);
  RF_CHECK(c.data != "synthetic" || (c.synthetic_train > 0 && c.synthetic_train <= kMaxSynthetic),
           "--synthetic-train must be in [1, ", kMaxSynthetic, "], got ", c.synthetic_train);
  RF_CHECK(c.compress_momentum == 0 || c.optimizer == "sgd",
           "--compress-momentum is the optimizer's momentum (DGC's correction): use it with --optimizer sgd, not ",
           c.optimizer);
  const std::pair<const char*, const std::string*> outputs[] = {
      {"--metrics", &c.metrics_path}, {"--timeline", &c.timeline_path}, {"--save", &c.save_path}};
  for (size_t i = 0; i < 3; ++i)
    for (size_t j = i + 1; j < 3; ++j)
      RF_CHECK(outputs[i].second->empty() || *outputs[i].second != *outputs[j].second, outputs[i].first, " and ",
               outputs[j].first, " name the same file ", *outputs[i].second);
  RF_CHECK(c.bucket_mb > 0, "--bucket-mb must be positive, got ", c.bucket_mb);
  RF_CHECK(c.check_every >= 0, "--check-every must be >= 0, got ", c.check_every);
  collective::parse_compress(c.compress);
  RF_CHECK(c.compress_warmup >= 0, "--compress-warmup must be >= 0, got ", c.compress_warmup);
  RF_CHECK(c.compress_momentum >= 0 && c.compress_momentum < 1, "--compress-momentum must be in [0, 1), got ",
           c.compress_momentum);
  RF_CHECK(c.collective == "auto" || c.collective == "ring" || c.collective == "mpi" || c.collective == "nccl",
           "unknown collective '", c.collective, "': expected auto, ring, mpi or nccl");
  parse_optimizer(c.optimizer);
  parse_schedule(c.schedule);
}

namespace {

// Why no file can be written at `path` ("" when one can): a directory in its place, a missing
// parent, or whatever creating (and removing) a probe file next to it says. A file written by
// rename (`replaced`: checkpoints, the timeline) must not replace a device, FIFO or socket.
std::string output_problem(const std::string& path, bool replaced = true) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return "it is a directory";
  // rename() replaces a symlink itself, never its target: only a device, FIFO or socket in the
  // path's own place is refused.
  const fs::file_status own = fs::symlink_status(path, ec);
  if (replaced && fs::exists(own) && !fs::is_symlink(own) && !fs::is_regular_file(own))
    return "it exists and is not a regular file";
  // A stream written in place (metrics): an existing file, FIFO or device only has to take writes.
  if (!replaced && fs::exists(fs::status(path, ec)))
    return ::access(path.c_str(), W_OK) == 0 ? "" : std::strerror(errno);
  const fs::path parent = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  if (!fs::is_directory(parent, ec)) return "no directory " + parent.string();
  const std::string probe = path + ".probe." + std::to_string(::getpid());
  std::FILE* f = std::fopen(probe.c_str(), "wb");
  if (!f) return std::strerror(errno);
  std::fclose(f);
  std::remove(probe.c_str());
  return "";
}

void check_writable(const std::string& path, const char* flag, bool replaced = true) {
  const std::string why = output_problem(path, replaced);
  RF_CHECK(why.empty(), "cannot write ", flag, " ", path, ": ", why);
}

// Every rank's set-up outcome, agreed: where any rank failed, every rank throws the lowest
// failing rank's message as a JobError (printed by rank 0 only).
void agree_or_throw(collective::Communicator& comm, const std::string& error) {
  if (comm.size() == 1) {
    if (!error.empty()) throw JobError(error, true);
    return;
  }
  int64_t first = error.empty() ? comm.size() : comm.rank();
  comm.allreduce(&first, 1, DType::I64, collective::ReduceOp::Min);
  if (first == comm.size()) return;
  int64_t len = comm.rank() == first ? int64_t(error.size()) : 0;
  comm.broadcast(&len, 1, DType::I64, int(first));
  std::string msg = comm.rank() == first ? error : std::string(size_t(len), '\0');
  if (len > 0) comm.broadcast(msg.data(), size_t(len), DType::U8, int(first));
  throw JobError(first == 0 ? msg : "rank " + std::to_string(first) + ": " + msg, comm.rank() == 0);
}

// Gathers every rank's trace to rank 0, which writes one file with the ranks as pids.
void write_timeline(const Timeline& tl, const std::string& path, collective::Communicator& comm) {
  const std::string mine = tl.json();
  std::vector<size_t> counts(size_t(comm.size()));
  size_t n = mine.size();
  comm.allgather(&n, counts.data(), 1, DType::I64);
  size_t total = 0;
  for (size_t k : counts) total += k;
  std::string all(total, '\0');
  comm.allgatherv(mine.data(), all.data(), counts, DType::U8);
  if (comm.rank() != 0) return;
  nlohmann::json merged = {{"traceEvents", nlohmann::json::array()}, {"displayTimeUnit", "ms"}};
  size_t off = 0;
  for (size_t k : counts) {
    const nlohmann::json part_json = nlohmann::json::parse(all.substr(off, k));
    for (const auto& e : part_json["traceEvents"]) merged["traceEvents"].push_back(e);
    off += k;
  }
  const std::string part = path + ".tmp." + std::to_string(::getpid());
  bool written = false;
  {
    std::ofstream out(part);
    out << merged.dump() << '\n';
    written = out.good();
  }
  const int code = written && std::rename(part.c_str(), path.c_str()) != 0 ? errno : 0;
  if (!written || code) {
    std::remove(part.c_str());  // no half-written file stays behind
    fail("cannot write --timeline ", path, ": ", written ? std::strerror(code) : output_problem(path));
  }
}

// Rows of logits [B, C] whose largest entry is at the label.
int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const i64 b = logits.shape()[0], k = logits.shape()[1];
  const float* l = logits.data<float>();
  const int32_t* y = labels.data<int32_t>();
  int64_t correct = 0;
  for (i64 i = 0; i < b; ++i) correct += std::max_element(l + i * k, l + (i + 1) * k) - (l + i * k) == y[i];
  return correct;
}

// Test accuracy and mean loss over a data set, in batches of eval_batch (last one smaller).
// Each rank evaluates a contiguous 1/world of the set; the sums are allreduced.
std::pair<double, double> evaluate(Session& s, const Model& m, const Dataset& d, int64_t eval_batch,
                                   collective::Communicator& comm) {
  int64_t correct = 0;
  double loss_sum = 0;
  const int64_t per = d.sample_size();
  const int64_t lo = d.n * comm.rank() / comm.size(), hi = d.n * (comm.rank() + 1) / comm.size();
  for (int64_t start = lo; start < hi; start += eval_batch) {
    const int64_t b = std::min(eval_batch, hi - start);
    Tensor x(Shape{b, 1, d.height, d.width}, DType::F32);
    Tensor y(Shape{b}, DType::I32);
    std::memcpy(x.raw(), d.images.data() + start * per, size_t(b * per) * sizeof(float));
    std::memcpy(y.raw(), d.labels.data() + start, size_t(b) * sizeof(int32_t));
    const auto& out = s.run({m.logits, m.loss}, {{m.images, x}, {m.labels, y}});
    correct += count_correct(out[0].to(Device::cpu()), y);
    loss_sum += out[1].item() * double(b);
  }
  double sums[2] = {double(correct), loss_sum};
  comm.allreduce(sums, 2, DType::F64, collective::ReduceOp::Sum);
  return {sums[0] / double(d.n), sums[1] / double(d.n)};
}

#if RINGFLOW_CUDA
// Training input on a CUDA device: the training set is uploaded once; each step copies only the
// batch's indices (pinned memory, cudaMemcpyAsync) and gathers images and labels on the device
// (the prologue). The epilogue computes the loss and the accuracy count on the device and copies
// those 16 bytes into pinned memory: the host's one wait per step is the stream synchronisation
// after the run. Both are stream work at fixed addresses, so a captured step replays them.
struct GpuBatches {
  GpuBatches(const Dataset& d, int64_t batch, Device device)
      : dev(device),
        all_images(Shape{d.n, d.channels, d.height, d.width}, DType::F32, dev),
        all_labels(Shape{d.n}, DType::I32, dev),
        idx(Shape{batch}, DType::I32, dev),
        images(Shape{batch, d.channels, d.height, d.width}, DType::F32, dev),
        labels(Shape{batch}, DType::I32, dev),
        stats(Shape{2}, DType::F64, dev),
        idx_host(static_cast<int32_t*>(cuda::host_alloc(size_t(batch) * sizeof(int32_t)))),
        stats_host(static_cast<double*>(cuda::host_alloc(2 * sizeof(double)))) {
    copy_bytes(all_images.raw(), dev, d.images.data(), Device::cpu(), all_images.nbytes());
    copy_bytes(all_labels.raw(), dev, d.labels.data(), Device::cpu(), all_labels.nbytes());
    options.prologue = [this](void*) {
      cuda::copy_async(idx.raw(), idx_host, idx.nbytes(), dev.index);
      cuda::gather_batch(all_images, all_labels, idx, images, labels);
    };
    options.epilogue = [this](void*, const std::vector<Tensor>& fetched) {  // fetched: {loss, logits}
      cuda::step_stats(fetched[0], fetched[1], labels, stats);
      cuda::copy_async(stats_host, stats.raw(), 2 * sizeof(double), dev.index);
    };
  }
  ~GpuBatches() {
    cuda::host_free(idx_host);
    cuda::host_free(stats_host);
  }
  GpuBatches(const GpuBatches&) = delete;
  GpuBatches& operator=(const GpuBatches&) = delete;

  Device dev;
  Tensor all_images, all_labels, idx;
  Tensor images, labels;  // the step's feeds
  Tensor stats;
  int32_t* idx_host;   // pinned: written by the host before each step (BatchIterator::next_indices)
  double* stats_host;  // pinned: {loss, correct}, valid once the stream is synchronised
  RunOptions options;  // the prologue and epilogue; the caller adds its own hooks
};
#endif

class Progress {
 public:
  explicit Progress(bool on) : on_(on), tty_(isatty(2)) {}
  void update(int64_t epoch, int64_t epochs, int64_t step, int64_t total, double loss, double sps, double eta) {
    if (!on_) return;
    const double now = seconds_since(start_);
    if (now - last_ < (tty_ ? 0.25 : 10.0)) return;
    last_ = now;
    std::fprintf(stderr, "%sepoch %lld/%lld step %lld/%lld loss %.4f %.0f samples/s ETA %.0fs%s",
                 tty_ ? "\r" : "", (long long)epoch, (long long)epochs, (long long)step, (long long)total, loss, sps,
                 eta, tty_ ? "   " : "\n");
    std::fflush(stderr);
  }
  void done() {
    if (on_ && tty_) std::fprintf(stderr, "\n");
  }

 private:
  bool on_, tty_;
  Clock::time_point start_ = Clock::now();
  double last_ = -1e9;
};

}  // namespace

// What train() needs from the configuration, the data and the model before training.
struct Setup {
  int threads = 1;
  int64_t local_batch = 0;
  collective::CompressSpec compress;
  Device device = Device::cpu();
  bool cuda_graph = false;  // --cuda-graph resolved: the training step runs with RunOptions::cuda_graph
  FashionMnist data;
  Model m;
  TrainOp t;
  std::vector<std::pair<int, Tensor>> init;  // --init-from's Variables (host), checked against m
};

// Everything bad input can break, found before the first collective of training (throws
// rf::Error): flags and their combinations, the data set, the model and where it runs,
// --init-from, and on rank 0 the output paths. The model is built into g.
void set_up(const TrainConfig& c, collective::Communicator& comm, Graph& g, Setup& s) {
  // Default: this node's cores shared evenly by the ranks on it.
  s.threads = c.threads > 0 ? c.threads : std::max(1, int(std::thread::hardware_concurrency()) / comm.local_size());
  set_num_threads(s.threads);
  RF_CHECK(c.batch % comm.size() == 0, "--batch ", c.batch, " does not split evenly over ", comm.size(), " ranks");
  s.local_batch = c.batch / comm.size();
  s.compress = collective::parse_compress(c.compress);
  s.compress.warmup_steps = c.compress_warmup;
  s.compress.momentum = c.compress_momentum;
  s.compress.seed = c.seed;
  RF_CHECK(!s.compress.compressing() || c.dtype == "f32", "--compress ", c.compress, " needs --dtype f32");
  RF_CHECK(comm.size() > 1 || collective::parse_fuse(c.fuse_update) != collective::ReducerOptions::Fuse::On,
           "--fuse-update on needs 2 or more ranks (one replica exchanges no gradients)");
  s.device = Device::parse(c.device);
  if (s.device.is_cuda() && comm.size() > 1) s.device = Device::cuda(comm.local_rank() % cuda_device_count());
  if (c.data == "fashion-mnist") {
    s.data = load_fashion_mnist(c.data_dir);
    for (const Dataset* d : {&s.data.train, &s.data.test})
      RF_CHECK(d->channels == 1 && d->height == 28 && d->width == 28, "the images in ", c.data_dir, " are ",
               d->height, "x", d->width, "; the models take Fashion-MNIST's 28x28");
  } else {
    s.data.train = make_synthetic(c.synthetic_train, c.seed);
    s.data.test = make_synthetic(c.synthetic_test, c.seed + 1);
  }
  RF_CHECK(c.batch <= s.data.train.n, "--batch ", c.batch, " is larger than the training set (", s.data.train.n,
           " samples)");
  // The model, and where it runs: --device auto falls back to the CPU for ops without a
  // CUDA kernel, which decides the collectives that can serve.
  s.m = build_model(g, c.model, c.dtype == "f64" ? DType::F64 : DType::F32);
  OptimizerConfig oc;
  oc.kind = parse_optimizer(c.optimizer);
  oc.nesterov = c.optimizer == "nesterov";
  oc.momentum = c.momentum;
  oc.weight_decay = c.weight_decay;
  s.t = minimize(s.m.loss, oc);
  if (s.device.is_cuda() && c.device == "auto") {
    for (const Node& n : g.nodes())
      if (!cuda_has_kernel(n.op)) {
        if (comm.rank() == 0)
          std::fprintf(stderr, "ringflow: note: no CUDA kernel for %s yet, so --device auto trains on the CPU\n",
                       op_name(n.op));
        s.device = Device::cpu();
        break;
      }
  }
  // --cuda-graph auto: wherever `on` is accepted. The Reducer's hooks (several replicas) and the
  // timeline's per-op spans need the host inside the step; the models have no Dropout or host feed.
  const bool graph_on = c.cuda_graph == "on";
  RF_CHECK(!graph_on || s.device.is_cuda(), "--cuda-graph on needs a CUDA device (--device cuda)");
  RF_CHECK(!graph_on || comm.size() == 1, "--cuda-graph on supports one replica for now");
  RF_CHECK(!graph_on || c.timeline_path.empty(),
           "--cuda-graph on cannot record a --timeline (a replayed step has no per-op spans)");
  s.cuda_graph = graph_on || (c.cuda_graph == "auto" && s.device.is_cuda() && comm.size() == 1 &&
                              c.timeline_path.empty());
  if (comm.size() > 1 && s.device.is_cuda()) {
    RF_CHECK(c.collective == "auto" || c.collective == "nccl", "--collective ", c.collective,
             " reduces host memory; replicas on GPUs use --collective nccl (or auto)");
  } else {
    RF_CHECK(c.collective != "nccl" || comm.size() == 1, "--collective nccl needs CUDA devices (--device cuda)");
  }
  const auto fuse = collective::parse_fuse(c.fuse_update);
  RF_CHECK(fuse != collective::ReducerOptions::Fuse::On || !s.compress.compressing(),
           "--fuse-update on averages full-precision gradients in place: it does not combine with --compress");
  RF_CHECK(fuse != collective::ReducerOptions::Fuse::On || !s.device.is_cuda(),
           "--fuse-update on is for CPU replicas on one node (GPU replicas reduce with NCCL)");
  RF_CHECK(fuse != collective::ReducerOptions::Fuse::On || !c.no_gradient_exchange,
           "--fuse-update on fuses the gradient exchange that --no-gradient-exchange skips: pass one of them");
  if (fuse == collective::ReducerOptions::Fuse::On && comm.size() > 1) {
    const std::string why = collective::peer_window_blocker(comm);
    RF_CHECK(why.empty(), "--fuse-update on: ", why);
  }
  if (!c.init_from.empty()) {
    try {
      s.init = read_checkpoint(g, c.init_from);
    } catch (const Error& e) {
      fail("--init-from: ", e.what());
    }
  }
  if (comm.rank() == 0) {  // rank 0 writes every output file: each one is known writable before training
    if (!c.metrics_path.empty()) check_writable(c.metrics_path, "--metrics", false);  // a stream: a FIFO will do
    if (!c.timeline_path.empty()) check_writable(c.timeline_path, "--timeline");
    if (!c.save_path.empty()) check_writable(c.save_path, "--save");
  }
}

nlohmann::json train(const TrainConfig& c) {
  // Set-up errors are agreed on by every rank (agree_or_throw), so a bad value ends every rank
  // alike with one message instead of leaving the others waiting.
  std::string setup_error;
  try {
    validate_config(c);
  } catch (const std::exception& e) {
    setup_error = e.what();
  }
  // `comm` (ring or mpi, host memory) carries the metrics, checksums, evaluation sums and the
  // timeline, and the gradients of host replicas; replicas on GPUs reduce their gradients with
  // NCCL (`grad_comm`, made below once the device is known).
  const std::string host_backend = c.collective == "ring" || c.collective == "mpi" ? c.collective : "ring";
  auto comm = collective::make_communicator(host_backend, collective::options_from_env());
  const int rank = comm->rank(), world = comm->size();
  const bool lead = rank == 0;
  Graph g(c.seed);
  Setup setup;
  if (setup_error.empty()) {
    try {
      set_up(c, *comm, g, setup);
    } catch (const std::exception& e) {
      setup_error = e.what();
    }
  }
  agree_or_throw(*comm, setup_error);
  const int threads = setup.threads;
  const int64_t local_batch = setup.local_batch;
  const collective::CompressSpec& compress = setup.compress;
  const Device device = setup.device;
  const FashionMnist& data = setup.data;
  const Model& m = setup.m;
  const TrainOp& t = setup.t;
  std::ofstream metrics;
  if (lead && !c.metrics_path.empty()) {  // probed by set_up; opened (and truncated) only now
    metrics.open(c.metrics_path);
    RF_CHECK(metrics.good(), "cannot open --metrics ", c.metrics_path, " for writing");
  }

  std::unique_ptr<collective::Communicator> nccl;
  if (world > 1 && device.is_cuda()) nccl = collective::make_communicator("nccl", collective::options_from_env());
  collective::Communicator& grad_comm = nccl ? *nccl : *comm;

  Session sess(g, device);
  sess.set_fuse_epilogues(c.fuse_epilogues == "on");
  sess.set_memory_reuse(c.memory_reuse == "on");
  if (c.plan_cache > 0) sess.set_plan_cache_capacity(size_t(c.plan_cache));
  sess.run({}, {}, g.initializers());
  for (const auto& [id, host] : setup.init) {  // --init-from: read and checked in set_up
    sess.variable(id).copy_from(host);
    sess.set_initialized(id);
  }
  setup.init.clear();
  if (world > 1) collective::broadcast_variables(sess, grad_comm);

  std::unique_ptr<Timeline> timeline;
  if (!c.timeline_path.empty()) timeline = std::make_unique<Timeline>(rank);
  std::unique_ptr<collective::Reducer> reducer;
  RunOptions traced;  // single replica: only the timeline hook
  RunOptions* step_options = nullptr;
  if (world > 1) {
    collective::ReducerOptions ro;
    ro.bucket_mb = c.bucket_mb;
    ro.first_bucket_mb = std::min(1.0, c.bucket_mb);
    ro.timeline = timeline.get();
    ro.compress = compress;
    ro.fuse = collective::parse_fuse(c.fuse_update);
    ro.skip_exchange = c.no_gradient_exchange;
    reducer = std::make_unique<collective::Reducer>(grad_comm, sess, t.vars, t.grads, ro);
    step_options = &reducer->run_options();
  } else if (timeline) {
    traced.timeline = timeline.get();
    step_options = &traced;
  }

  BatchIterator it(data.train, local_batch, c.seed, c.shuffle, rank, world);
  const int64_t steps_per_epoch = it.steps_per_epoch();
  int64_t all_epochs = 0;  // epochs * steps_per_epoch, saturated (--epochs may be huge with --max-steps)
  if (__builtin_mul_overflow(c.epochs, steps_per_epoch, &all_epochs)) all_epochs = std::numeric_limits<int64_t>::max();
  const int64_t total_steps = c.max_steps > 0 ? std::min(c.max_steps, all_epochs) : all_epochs;
  LrSchedule sched;
  sched.kind = parse_schedule(c.schedule);
  sched.base_lr = c.lr;
  sched.warmup_steps = c.warmup_steps;
  sched.total_steps = total_steps;
  sched.step_size = std::max<int64_t>(1, total_steps / 3);

  auto emit = [&](nlohmann::json j) {
    if (!metrics.is_open()) return;
    errno = 0;
    metrics << j.dump() << '\n' << std::flush;
    RF_CHECK(metrics.good(), "cannot write --metrics ", c.metrics_path, ": ",
             errno ? std::strerror(errno) : "the stream failed");
  };
  // Loss and accuracy sums of every rank (one tiny allreduce, only when reporting).
  auto global_mean = [&](double loss_sum, double correct, double steps) {
    double v[3] = {loss_sum, correct, steps};
    if (world > 1) comm->allreduce(v, 3, DType::F64, collective::ReduceOp::Sum);
    return std::pair<double, double>{v[0] / v[2], v[1] / (v[2] * double(local_batch))};
  };

  Tensor images(Shape{local_batch, 1, data.train.height, data.train.width}, DType::F32);
  Tensor labels(Shape{local_batch}, DType::I32);
  Tensor hyper(Shape{2}, DType::F64);
  std::vector<Session::Feed> feeds{{m.images, images}, {m.labels, labels}, {t.hyper, hyper}};
  const std::vector<Value> fetches{m.loss, m.logits};
  Tensor logits_host(Shape{local_batch, data.train.classes}, DType::F32);
#if RINGFLOW_CUDA
  std::unique_ptr<GpuBatches> gpu;
  if (device.is_cuda()) {
    gpu = std::make_unique<GpuBatches>(data.train, local_batch, device);
    feeds = {{m.images, gpu->images}, {m.labels, gpu->labels}, {t.hyper, hyper}};
    if (step_options) {
      gpu->options.on_node_done = step_options->on_node_done;
      gpu->options.before_updates = step_options->before_updates;
      gpu->options.before_update = step_options->before_update;
      gpu->options.timeline = step_options->timeline;
    }
    gpu->options.cuda_graph = setup.cuda_graph;
    step_options = &gpu->options;
  }
  const Stream step_stream = compute_stream(device);
#endif
  // The next batch: copied into images/labels on the CPU, its indices for the gather on a GPU.
  auto next_batch = [&] {
#if RINGFLOW_CUDA
    if (gpu) return it.next_indices(gpu->idx_host);
#endif
    return it.next(images.data<float>(), labels.data<int32_t>());
  };

  Progress progress(c.progress && lead);
  double train_seconds = 0, final_loss = 0, window_loss = 0, bytes_sent = 0;
  size_t step_plan_bytes = 0;  // what the training step's plan holds for node outputs
  int64_t step = 0, window_steps = 0, window_correct = 0;
  nlohmann::json eval_json;
  for (int64_t epoch = 0; epoch < c.epochs && step < total_steps; ++epoch) {
    it.start_epoch(epoch);
    const auto epoch_start = Clock::now();
    int64_t epoch_steps = 0;
    while (step < total_steps) {
      const int64_t tb0 = timeline ? timeline->now_us() : 0;
      if (!next_batch()) break;
      if (timeline) timeline->span("next batch", "host", 2, tb0, timeline->now_us());
      const double lr = sched.at(step);
      hyper.data<double>()[0] = lr;
      hyper.data<double>()[1] = double(step + 1);
      const auto t0 = Clock::now();
      const int64_t tr0 = timeline ? timeline->now_us() : 0;
      const auto& out = sess.run(fetches, feeds, t.updates, step_options);
      step_plan_bytes = sess.last_plan_bytes();
      if (timeline) timeline->span("step", "host", 2, tr0, timeline->now_us());
      double loss;
#if RINGFLOW_CUDA
      if (gpu) {  // the step's one wait, for 16 bytes: {loss, correct}
        step_stream.synchronize();
        loss = gpu->stats_host[0];
      } else
#endif
        loss = out[0].item();
      train_seconds += seconds_since(t0);
      const size_t step_bytes = reducer ? reducer->bytes_sent_last_step() : 0;
      bytes_sent += double(step_bytes);
#if RINGFLOW_CUDA
      if (gpu) {
        window_correct += int64_t(gpu->stats_host[1]);
      } else
#endif
      {
        logits_host.copy_from(out[1]);
        window_correct += count_correct(logits_host, labels);
      }
      RF_CHECK(std::isfinite(loss), "loss became ", loss, " at step ", step + 1, " (epoch ", epoch + 1,
               ", rank ", rank, "): lower --lr or check the data");
      final_loss = loss;
      window_loss += loss;
      ++window_steps;
      ++step;
      ++epoch_steps;
      if (c.check_every > 0 && step % c.check_every == 0 && world > 1) collective::check_replicas(sess, *comm, step);
      const double sps = double(step * c.batch) / std::max(train_seconds, 1e-9);
      progress.update(epoch + 1, c.epochs, step, total_steps, loss, sps,
                      double((total_steps - step) * c.batch) / std::max(sps, 1e-9));
      if (step % c.metrics_every == 0) {
        const auto [mloss, macc] = global_mean(window_loss, double(window_correct), double(window_steps));
        emit({{"step", step}, {"epoch", epoch + 1}, {"loss", mloss}, {"accuracy", macc}, {"lr", lr},
              {"samples_per_second", sps}, {"bytes_sent_per_step", step_bytes}});
        window_loss = 0;
        window_steps = 0;
        window_correct = 0;
      }
    }
    const auto [acc, test_loss] = evaluate(sess, m, data.test, c.eval_batch, *comm);
    eval_json = {{"test_accuracy", acc}, {"test_loss", test_loss}};
    emit({{"step", step}, {"epoch", epoch + 1}, {"loss", global_mean(final_loss, 0, 1).first}, {"accuracy", acc},
          {"test_loss", test_loss}, {"lr", sched.at(std::max<int64_t>(step - 1, 0))},
          {"samples_per_second", double(epoch_steps * c.batch) / std::max(seconds_since(epoch_start), 1e-9)}});
  }
  progress.done();
  final_loss = global_mean(final_loss, 0, 1).first;
  if (world > 1 && !c.no_gradient_exchange) collective::check_replicas(sess, *comm, step);
  // The per-step check reads each step's loss before its update; the last update, and what it did
  // to the test loss, are checked here, before anything is saved.
  const double norm = param_norm(sess, g);
  const double test_loss = eval_json.is_object() ? eval_json.value("test_loss", 0.0) : 0.0;
  std::string diverged;
  if (!std::isfinite(norm) || !std::isfinite(test_loss)) {
    std::ostringstream os;
    os << "training diverged by step " << step << " (parameter norm " << norm << ", test loss " << test_loss
       << "): lower --lr" << (c.save_path.empty() ? "" : "; nothing was saved to " + c.save_path);
    diverged = os.str();
  }
  agree_or_throw(*comm, diverged);
  if (lead && !c.save_path.empty()) save_checkpoint(sess, g, c.save_path);
  if (timeline) write_timeline(*timeline, c.timeline_path, *comm);

  nlohmann::json s;
  s["model"] = c.model;
  s["data"] = c.data;
  s["device"] = device.str();
  s["world_size"] = world;
  s["collective"] = world > 1 ? grad_comm.name() : "none";
  s["fused_update"] = reducer && reducer->fused();
  if (c.no_gradient_exchange) s["gradient_exchange"] = false;  // a diagnostic run: replicas diverged
  s["threads"] = threads;
  s["dtype"] = c.dtype;
  s["optimizer"] = c.optimizer;
  s["batch"] = c.batch;
  s["lr"] = c.lr;
  s["seed"] = c.seed;
  s["steps"] = step;
  s["train_seconds"] = train_seconds;
  s["samples_per_second"] = double(step * c.batch) / std::max(train_seconds, 1e-9);
  s["test_accuracy"] = eval_json.is_object() ? eval_json.value("test_accuracy", 0.0) : 0.0;
  s["test_loss"] = eval_json.is_object() ? eval_json.value("test_loss", 0.0) : 0.0;
  s["final_loss"] = final_loss;
  s["param_norm"] = norm;
  s["compress"] = world > 1 ? compress.str() : "none";  // one replica exchanges no gradients
  s["cuda_graph"] = sess.graphs_captured() > 0;  // what ran: a replayed step (auto resolved, 3+ steps)
  if (sess.graphs_captured() > 0) s["cuda_graph_kernels"] = sess.graph_kernels();  // per training step
  s["chains_fused"] = sess.chains_fused();
  s["memory_reuse"] = sess.memory_reuse();
  s["peak_plan_bytes"] = step_plan_bytes;  // the training step's plan (Session::last_plan_bytes)
  s["plan_cache_size"] = sess.plans_cached();
  s["plan_cache_capacity"] = sess.plan_cache_capacity();
  // What this rank sent per step (mean over the run), as a bandwidth-optimal ring sends it, and
  // what the uncompressed allreduce would send.
  s["bytes_sent_per_step"] = step > 0 ? bytes_sent / double(step) : 0.0;
  s["uncompressed_bytes_per_step"] =
      reducer ? collective::ring_allreduce_bytes(reducer->bytes_per_step(), world) : size_t(0);
  s["rank"] = rank;
  return s;
}

}  // namespace rf
