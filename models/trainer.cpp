// The Trainer (trainer.h): set-up agreed across ranks, then the training loop over any
// registered model and DataSource. Throughput counts training steps only: data loading, graph
// building, initialisation and evaluation are outside the timed region.
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
#include "models/image_data.h"
#include "models/text_data.h"
#include "runtime/session.h"
#if RINGFLOW_CUDA
#include "runtime/cuda_backend.h"
#endif

namespace rf {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// More OpenMP threads than this is no machine ringflow runs on (and 100000 crashes libgomp).
constexpr int kMaxThreads = 1024;
constexpr int64_t kMaxPlanCache = 1 << 20;

}  // namespace

void validate_trainer_config(const TrainerConfig& c) {
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
  RF_CHECK(c.max_minutes >= 0 && std::isfinite(c.max_minutes), "--max-minutes must be >= 0 (0: no limit), got ",
           c.max_minutes);
  RF_CHECK(c.eval_every >= 0, "--eval-every must be >= 0 (0: each epoch's end), got ", c.eval_every);
  RF_CHECK(c.beta1 >= 0 && c.beta1 < 1, "--beta1 must be in [0, 1), got ", c.beta1);
  RF_CHECK(c.beta2 >= 0 && c.beta2 < 1, "--beta2 must be in [0, 1), got ", c.beta2);
  RF_CHECK(c.clip_norm >= 0 && std::isfinite(c.clip_norm), "--clip-grad-norm must be >= 0 (0: off), got ",
           c.clip_norm);
  RF_CHECK(c.momentum >= 0 && std::isfinite(c.momentum), "--momentum must be >= 0, got ", c.momentum);
  RF_CHECK(c.warmup_steps >= 0, "--warmup-steps must be >= 0, got ", c.warmup_steps);
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
// The model's name and its options, checked against the registry.
void check_model(const std::string& model, const std::map<std::string, std::string>& options) {
  const ModelEntry& e = models().get(model);
  for (const auto& [key, value] : options) {
    bool declared = false;
    for (const ModelOption& o : e.options) declared = declared || o.name == key;
    RF_CHECK(declared, "--", key, " is not an option of model '", model, "'");
  }
}
}  // namespace

std::string resolved_data(const TrainConfig& c) {
  if (c.data != "auto") return c.data;
  const ModelEntry* e = models().find(c.model);
  return e ? e->data : "fashion-mnist";
}

std::string resolved_data_dir(const TrainConfig& c) {
  if (!c.data_dir.empty()) return c.data_dir;
  return resolved_data(c) == "kjv" ? "data/kjv" : kFashionMnistDefaultDir;
}

void validate_config(const TrainConfig& c) {
  check_model(c.model, c.model_options);
  const std::string data = resolved_data(c);
  if (data != "kjv") check_image_source_args(data, c.synthetic_train);
  validate_trainer_config(c);
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


// The values a step (and an evaluation batch) fetches: the loss first, then what the metrics
// read, each value once.
struct Fetches {
  std::vector<Value> values;
  std::vector<int> scalar_at;              // per metric: its scalar's index (-1: a host metric)
  std::vector<std::vector<int>> fetch_at;  // per metric: its fetch values' indices
};

Fetches plan_fetches(const ModelSpec& m) {
  Fetches f;
  auto index = [&](Value v) {
    for (size_t i = 0; i < f.values.size(); ++i)
      if (f.values[i] == v) return int(i);
    f.values.push_back(v);
    return int(f.values.size()) - 1;
  };
  index(m.loss);
  for (const Metric& metric : m.metrics) {
    f.scalar_at.push_back(metric.scalar.valid() ? index(metric.scalar) : -1);
    f.fetch_at.emplace_back();
    for (Value v : metric.fetch) f.fetch_at.back().push_back(index(v));
  }
  return f;
}

Tensor on_host(const Tensor& t) { return t.device().is_cuda() ? t.to(Device::cpu()) : t; }

// Adds one batch to every metric's sums, on the host: `out` is what plan_fetches' values
// fetched (any device), `feeds` the batch's feeds by input name.
void add_metrics(const ModelSpec& m, const Fetches& f, const std::vector<Tensor>& out,
                 const std::map<std::string, const Tensor*>& feeds, int64_t rows, std::vector<MetricSum>& sums) {
  std::map<std::string, Tensor> host_feeds;  // device feeds, copied only when a host metric reads them
  std::map<std::string, const Tensor*> host_view;
  for (size_t k = 0; k < m.metrics.size(); ++k) {
    const Metric& metric = m.metrics[k];
    if (f.scalar_at[k] >= 0) {
      sums[k].sum += out[size_t(f.scalar_at[k])].item() * metric.scale * double(rows);
      sums[k].count += double(rows);
      continue;
    }
    std::vector<Tensor> fetched;
    for (int i : f.fetch_at[k]) fetched.push_back(on_host(out[size_t(i)]));
    if (host_view.empty())
      for (const auto& [name, t] : feeds) {
        if (t->device().is_cuda()) host_view[name] = &(host_feeds[name] = t->to(Device::cpu()));
        else host_view[name] = t;
      }
    const MetricSum s = metric.host(MetricBatch{fetched, host_view, rows});
    sums[k].sum += s.sum;
    sums[k].count += s.count;
  }
}

// The test loss and every metric over the test set, in batches of eval_batch (last one
// smaller). Each rank evaluates a contiguous 1/world of the set; the sums are allreduced.
struct Evaluation {
  double loss = 0;
  std::vector<double> metrics;
};
Evaluation evaluate(Session& s, const ModelSpec& m, const Fetches& f, const std::vector<int>& feed_of_input,
                    const DataSource& data, int64_t eval_batch, collective::Communicator& comm) {
  const int64_t n = data.test_size();
  const std::vector<FeedSpec> specs = data.feeds();
  std::vector<MetricSum> sums(m.metrics.size());
  double loss_sum = 0;
  const int64_t lo = n * comm.rank() / comm.size(), hi = n * (comm.rank() + 1) / comm.size();
  for (int64_t start = lo; start < hi; start += eval_batch) {
    const int64_t b = std::min(eval_batch, hi - start);
    const std::vector<Tensor> batch = data.test_batch(start, b);
    std::vector<Session::Feed> feeds;
    std::map<std::string, const Tensor*> by_name;
    for (size_t i = 0; i < m.inputs.size(); ++i) {
      const Tensor& t = batch[size_t(feed_of_input[i])];
      feeds.emplace_back(m.inputs[i].second, t);
      by_name[m.inputs[i].first] = &t;
    }
    const auto& out = s.run(f.values, feeds);
    add_metrics(m, f, out, by_name, b, sums);
    loss_sum += out[0].item() * double(b);
  }
  std::vector<double> v{loss_sum};
  for (const MetricSum& ms : sums) {
    v.push_back(ms.sum);
    v.push_back(ms.count);
  }
  comm.allreduce(v.data(), v.size(), DType::F64, collective::ReduceOp::Sum);
  Evaluation e;
  e.loss = v[0] / double(n);
  for (size_t k = 0; k < m.metrics.size(); ++k) e.metrics.push_back(v[1 + 2 * k] / v[2 + 2 * k]);
  return e;
}

#if RINGFLOW_CUDA
// A GPU step's numbers without a synchronisation: the epilogue copies the loss (its bytes) and
// each metric's {sum, count} (a scalar metric's bytes, or what its device function wrote) into
// pinned memory, 16 bytes an entry; the host reads them after the step's one wait.
class DeviceReport {
 public:
  DeviceReport(const ModelSpec& m, const Fetches& f, Device dev) : m_(m), f_(f), dev_(dev) {
    pinned_ = static_cast<char*>(cuda::host_alloc(16 * (1 + m.metrics.size())));
    for (const Metric& metric : m.metrics)
      out_.push_back(metric.scalar.valid() || !metric.device ? Tensor() : Tensor(Shape{2}, DType::F64, dev));
  }
  ~DeviceReport() { cuda::host_free(pinned_); }
  DeviceReport(const DeviceReport&) = delete;
  DeviceReport& operator=(const DeviceReport&) = delete;

  // Every metric has a device path (a scalar, or a device function).
  bool complete() const {
    for (const Metric& metric : m_.metrics)
      if (!metric.scalar.valid() && !metric.device) return false;
    return true;
  }
  // Queued after the step (RunOptions::epilogue).
  void queue(const std::vector<Tensor>& fetched, const std::map<std::string, const Tensor*>& feeds, int64_t rows) {
    cuda::copy_async(pinned_, fetched[0].raw(), fetched[0].nbytes(), dev_.index);
    for (size_t k = 0; k < m_.metrics.size(); ++k) {
      char* slot = pinned_ + 16 * (k + 1);
      if (f_.scalar_at[k] >= 0) {
        const Tensor& t = fetched[size_t(f_.scalar_at[k])];
        cuda::copy_async(slot, t.raw(), t.nbytes(), dev_.index);
      } else if (out_[k].defined()) {
        std::vector<Tensor> mine;
        for (int i : f_.fetch_at[k]) mine.push_back(fetched[size_t(i)]);
        m_.metrics[k].device(MetricBatch{mine, feeds, rows}, out_[k]);
        cuda::copy_async(slot, out_[k].raw(), 2 * sizeof(double), dev_.index);
      }
    }
  }
  // After the stream synchronisation.
  double loss(DType dt) const { return read(pinned_, dt); }
  void add_metrics(int64_t rows, std::vector<MetricSum>& sums) const {
    for (size_t k = 0; k < m_.metrics.size(); ++k) {
      const char* slot = pinned_ + 16 * (k + 1);
      if (f_.scalar_at[k] >= 0) {
        sums[k].sum += read(slot, m_.loss.graph->spec(m_.metrics[k].scalar).dtype) * m_.metrics[k].scale * double(rows);
        sums[k].count += double(rows);
      } else {
        double v[2];
        std::memcpy(v, slot, sizeof v);
        sums[k].sum += v[0];
        sums[k].count += v[1];
      }
    }
  }

 private:
  static double read(const char* p, DType dt) {
    if (dt == DType::F64) {
      double v;
      std::memcpy(&v, p, sizeof v);
      return v;
    }
    RF_CHECK(dt == DType::F32, "a reported scalar must be F32 or F64, not ", dtype_name(dt));
    float v;
    std::memcpy(&v, p, sizeof v);
    return double(v);
  }
  const ModelSpec& m_;
  const Fetches& f_;
  Device dev_;
  char* pinned_ = nullptr;
  std::vector<Tensor> out_;
};
#endif

}  // namespace

// What fit() needs from the configuration, the data and the model before training.
struct TrainerSetup {
  int threads = 1;
  int64_t local_batch = 0;
  collective::CompressSpec compress;
  Device device = Device::cpu();
  bool cuda_graph = false;  // --cuda-graph resolved: the training step runs with RunOptions::cuda_graph
  std::unique_ptr<DataSource> data;
  ModelSpec m;
  std::vector<int> feed_of_input;  // per model input: its index in data->feeds()
  TrainOp t;
  std::vector<std::pair<int, Tensor>> init;  // --init-from's Variables (host), checked against m
  DataState resume;                          // --resume: where the data order continues
  int64_t resume_step = 0;                   // --resume: steps the saved run had taken
};

namespace {

// Each model input's feed in the data source, checked by name, dtype and sample shape.
std::vector<int> match_feeds(const Graph& g, const ModelSpec& m, const DataSource& data) {
  const std::vector<FeedSpec> feeds = data.feeds();
  std::string offered;
  for (const FeedSpec& f : feeds) offered += (offered.empty() ? "" : ", ") + f.name;
  std::vector<int> out;
  for (const auto& [name, v] : m.inputs) {
    int k = -1;
    for (size_t i = 0; i < feeds.size(); ++i)
      if (feeds[i].name == name) k = int(i);
    RF_CHECK(k >= 0, "model '", m.name, "' reads input '", name, "', which data set '", data.name(),
             "' does not provide (it feeds ", offered, ")");
    const FeedSpec& f = feeds[size_t(k)];
    const OutSpec& p = g.spec(v);
    bool fits = p.dtype == f.dtype && p.shape.rank == f.sample.rank + 1;
    for (int i = 0; fits && i < f.sample.rank; ++i) fits = p.shape[i + 1] < 0 || p.shape[i + 1] == f.sample[i];
    RF_CHECK(fits, "data set '", data.name(), "' feeds '", name, "' as ", dtype_name(f.dtype), f.sample.str(),
             " per sample; model '", m.name, "' takes ", dtype_name(p.dtype), p.shape.str());
    out.push_back(k);
  }
  return out;
}

// Everything bad input can break, found before the first collective of training (throws
// rf::Error): the configuration and its combinations, the data set, the model and where it runs,
// --init-from, and on rank 0 the output paths. The model is built into g.
void set_up(const TrainerConfig& c, const std::string& model, const std::map<std::string, std::string>& options,
            const DataFactory& make_data, collective::Communicator& comm, Graph& g, TrainerSetup& s) {
  validate_trainer_config(c);
  check_model(model, options);
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
  RF_CHECK(make_data != nullptr, "no data set to train on");
  s.data = make_data();
  RF_CHECK(s.data != nullptr, "the data factory made no data set");
  RF_CHECK(c.batch <= s.data->train_size(), "--batch ", c.batch, " is larger than the training set (",
           s.data->train_size(), " samples)");
  s.data->set_order(DataOrder{comm.rank(), comm.size(), s.local_batch, c.seed, c.shuffle});
  // The model, and where it runs: --device auto falls back to the CPU for ops without a
  // CUDA kernel, which decides the collectives that can serve.
  ModelConfig mc;
  mc.dtype = c.dtype == "f64" ? DType::F64 : DType::F32;
  mc.options = options;
  s.m = build_model_spec(g, model, mc);
  s.feed_of_input = match_feeds(g, s.m, *s.data);
  OptimizerConfig oc;
  oc.kind = parse_optimizer(c.optimizer);
  oc.nesterov = c.optimizer == "nesterov";
  oc.momentum = c.momentum;
  oc.weight_decay = c.weight_decay;
  oc.beta1 = c.beta1;
  oc.beta2 = c.beta2;
  oc.clip_norm = c.clip_norm;
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
  // timeline's per-op spans need the host inside the step, and the batches must be gathered on
  // the device (a capture refuses host feeds), as must every metric be computed there.
  const bool graph_on = c.cuda_graph == "on";
  RF_CHECK(!graph_on || s.device.is_cuda(), "--cuda-graph on needs a CUDA device (--device cuda)");
  RF_CHECK(!graph_on || comm.size() == 1, "--cuda-graph on supports one replica for now");
  RF_CHECK(!graph_on || c.timeline_path.empty(),
           "--cuda-graph on cannot record a --timeline (a replayed step has no per-op spans)");
  bool device_metrics = true;
  for (const Metric& metric : s.m.metrics) device_metrics = device_metrics && (metric.scalar.valid() || metric.device);
  bool dropout = false;
  for (const Node& n : g.nodes()) dropout = dropout || n.op == Op::Dropout;
  s.cuda_graph = graph_on || (c.cuda_graph == "auto" && s.device.is_cuda() && comm.size() == 1 &&
                              c.timeline_path.empty() && s.data->has_device_batches() && device_metrics && !dropout);
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
  RF_CHECK(!c.resume || !c.init_from.empty(), "--resume continues the run saved in --init-from: pass --init-from");
  if (!c.init_from.empty()) {
    try {
      if (c.resume) {
        s.resume = read_data_state(c.init_from, &s.resume_step);
        // A run saved at the end of an epoch (its evaluation done) resumes at the next one.
        if (s.resume.position >= s.data->steps_per_epoch()) s.resume = {s.resume.epoch + 1, 0};
        RF_CHECK(s.resume.epoch < c.epochs && (c.max_steps < 0 || s.resume_step < c.max_steps), c.init_from,
                 " was saved after ", s.resume_step, " steps (epoch ", s.resume.epoch + 1,
                 "): nothing is left to train within --epochs ", c.epochs,
                 c.max_steps > 0 ? " and --max-steps " + std::to_string(c.max_steps) : std::string());
      }
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

}  // namespace

nlohmann::json Trainer::fit(const std::string& model, const std::map<std::string, std::string>& options,
                            const DataFactory& make_data) {
  const TrainerConfig& c = cfg_;
  // `comm` (ring or mpi, host memory) carries the metrics, checksums, evaluation sums and the
  // timeline, and the gradients of host replicas; replicas on GPUs reduce their gradients with
  // NCCL (`grad_comm`, made below once the device is known).
  const std::string host_backend = c.collective == "ring" || c.collective == "mpi" ? c.collective : "ring";
  auto comm = collective::make_communicator(host_backend, collective::options_from_env());
  const int rank = comm->rank(), world = comm->size();
  const bool lead = rank == 0;
  Graph g(c.seed);
  TrainerSetup setup;
  // Set-up errors are agreed on by every rank (agree_or_throw), so a bad value ends every rank
  // alike with one message instead of leaving the others waiting.
  std::string setup_error;
  try {
    set_up(c, model, options, make_data, *comm, g, setup);
  } catch (const std::exception& e) {
    setup_error = e.what();
  }
  agree_or_throw(*comm, setup_error);
  const int threads = setup.threads;
  const int64_t local_batch = setup.local_batch;
  const collective::CompressSpec& compress = setup.compress;
  const Device device = setup.device;
  DataSource& data = *setup.data;
  const ModelSpec& m = setup.m;
  const TrainOp& t = setup.t;
  const Fetches fetches = plan_fetches(m);
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

  const int64_t steps_per_epoch = data.steps_per_epoch();
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
  const size_t nm = m.metrics.size();
  // The window's loss and metric sums of every rank (one tiny allreduce, only when reporting):
  // the mean loss per step and each metric's sum / count.
  auto global_mean = [&](double loss_sum, double steps, const std::vector<MetricSum>& sums) {
    std::vector<double> v{loss_sum, steps};
    for (const MetricSum& s : sums) {
      v.push_back(s.sum);
      v.push_back(s.count);
    }
    if (world > 1) comm->allreduce(v.data(), v.size(), DType::F64, collective::ReduceOp::Sum);
    std::vector<double> values;
    for (size_t k = 0; k < sums.size(); ++k) values.push_back(v[2 + 2 * k] / v[3 + 2 * k]);
    return std::pair<double, std::vector<double>>{v[0] / v[1], values};
  };

  // The step's feeds: host batches from DataSource::next, or on a GPU the device batches.
  std::vector<Tensor> batch = data.make_batch(local_batch);
  Tensor hyper(Shape{2}, DType::F64);
  std::vector<Session::Feed> feeds;
  std::map<std::string, const Tensor*> feed_by_name;
  auto bind_feeds = [&](const std::vector<Tensor>& tensors) {
    feeds.clear();
    feed_by_name.clear();
    for (size_t i = 0; i < m.inputs.size(); ++i) {
      const Tensor& x = tensors[size_t(setup.feed_of_input[i])];
      feeds.emplace_back(m.inputs[i].second, x);
      feed_by_name[m.inputs[i].first] = &x;
    }
    feeds.emplace_back(t.hyper, hyper);
  };
  bind_feeds(batch);
#if RINGFLOW_CUDA
  std::unique_ptr<DeviceBatches> gpu;
  std::unique_ptr<DeviceReport> report;
  RunOptions gpu_options;  // the prologue (gather) and epilogue (report); the Reducer's or timeline's hooks
  if (device.is_cuda()) gpu = data.device_batches(device);
  if (gpu) {
    report = std::make_unique<DeviceReport>(m, fetches, device);
    bind_feeds(gpu->tensors());
    if (step_options) gpu_options = *step_options;
    gpu_options.prologue = [&](void* stream) { gpu->prologue(stream); };
    gpu_options.epilogue = [&](void*, const std::vector<Tensor>& fetched) {
      report->queue(fetched, feed_by_name, local_batch);
    };
    gpu_options.cuda_graph = setup.cuda_graph;
    step_options = &gpu_options;
  }
  const Stream step_stream = compute_stream(device);
#endif
  // The next batch: copied into the host feeds on the CPU, picked for the device gather on a GPU.
  auto next_batch = [&] {
#if RINGFLOW_CUDA
    if (gpu) return gpu->next();
#endif
    return data.next(batch);
  };

  Progress progress(c.progress && lead);
  double train_seconds = 0, final_loss = 0, window_loss = 0, bytes_sent = 0;
  size_t step_plan_bytes = 0;  // what the training step's plan holds for node outputs
  const int64_t first_step = setup.resume_step;  // 0 unless --resume
  int64_t step = first_step, window_steps = 0;
  std::vector<MetricSum> window(nm);
  bool evaluated = false;
  Evaluation eval;
  const DType loss_dtype = g.spec(m.loss).dtype;
  (void)loss_dtype;
  int64_t stop_at = -1;  // --max-minutes: the step the time ran out after
  for (int64_t epoch = setup.resume.epoch; epoch < c.epochs && step < total_steps && stop_at < 0; ++epoch) {
    if (epoch == setup.resume.epoch && setup.resume.position > 0)
      data.restore(setup.resume);  // --resume: mid-epoch
    else
      data.start_epoch(epoch);
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
      const auto& out = sess.run(fetches.values, feeds, t.updates, step_options);
      step_plan_bytes = sess.last_plan_bytes();
      if (timeline) timeline->span("step", "host", 2, tr0, timeline->now_us());
      double loss;
#if RINGFLOW_CUDA
      if (gpu) {  // the step's one wait, for the reported bytes
        step_stream.synchronize();
        loss = report->loss(loss_dtype);
      } else
#endif
        loss = out[0].item();
      train_seconds += seconds_since(t0);
      const size_t step_bytes = reducer ? reducer->bytes_sent_last_step() : 0;
      bytes_sent += double(step_bytes);
#if RINGFLOW_CUDA
      if (gpu && report->complete()) {
        report->add_metrics(local_batch, window);
      } else
#endif
        add_metrics(m, fetches, out, feed_by_name, local_batch, window);
      RF_CHECK(std::isfinite(loss), "loss became ", loss, " at step ", step + 1, " (epoch ", epoch + 1,
               ", rank ", rank, "): lower --lr or check the data");
      final_loss = loss;
      window_loss += loss;
      ++window_steps;
      ++step;
      ++epoch_steps;
      if (c.check_every > 0 && step % c.check_every == 0 && world > 1) collective::check_replicas(sess, *comm, step);
      const double sps = double((step - first_step) * c.batch) / std::max(train_seconds, 1e-9);
      progress.update(epoch + 1, c.epochs, step, total_steps, loss, sps,
                      double((total_steps - step) * c.batch) / std::max(sps, 1e-9));
      if (c.max_minutes > 0) {  // rank 0's clock decides, so every rank stops after the same step
        int64_t up = train_seconds >= c.max_minutes * 60 ? 1 : 0;
        if (world > 1) comm->broadcast(&up, 1, DType::I64, 0);
        if (up) stop_at = step;
      }
      if (step % c.metrics_every == 0) {
        const auto [mloss, mvalues] = global_mean(window_loss, double(window_steps), window);
        nlohmann::json line = {{"step", step}, {"epoch", epoch + 1}, {"loss", mloss}, {"train_seconds", train_seconds}};
        for (size_t k = 0; k < nm; ++k) line[m.metrics[k].name] = mvalues[k];
        line["lr"] = lr;
        line["samples_per_second"] = sps;
        line["bytes_sent_per_step"] = step_bytes;
        emit(line);
        window_loss = 0;
        window_steps = 0;
        window.assign(nm, MetricSum{});
      }
      if (c.eval_every > 0 && step % c.eval_every == 0 && step < total_steps && step != stop_at) {
        const Evaluation mid = evaluate(sess, m, fetches, setup.feed_of_input, data, c.eval_batch, *comm);
        nlohmann::json line = {{"step", step}, {"epoch", epoch + 1}, {"train_seconds", train_seconds}};
        for (size_t k = 0; k < nm; ++k) line[m.metrics[k].name] = mid.metrics[k];
        line["test_loss"] = mid.loss;
        emit(line);
      }
      if (step == stop_at) break;
    }
    eval = evaluate(sess, m, fetches, setup.feed_of_input, data, c.eval_batch, *comm);
    evaluated = true;
    nlohmann::json line = {{"step", step}, {"epoch", epoch + 1}, {"loss", global_mean(final_loss, 1, {}).first}};
    for (size_t k = 0; k < nm; ++k) line[m.metrics[k].name] = eval.metrics[k];
    line["test_loss"] = eval.loss;
    line["train_seconds"] = train_seconds;
    line["lr"] = sched.at(std::max<int64_t>(step - 1, 0));
    line["samples_per_second"] = double(epoch_steps * c.batch) / std::max(seconds_since(epoch_start), 1e-9);
    emit(line);
  }
  progress.done();
  final_loss = global_mean(final_loss, 1, {}).first;
  if (world > 1 && !c.no_gradient_exchange) collective::check_replicas(sess, *comm, step);
  // The per-step check reads each step's loss before its update; the last update, and what it did
  // to the test loss, are checked here, before anything is saved.
  const double norm = param_norm(sess, g);
  const double test_loss = evaluated ? eval.loss : 0.0;
  std::string diverged;
  if (!std::isfinite(norm) || !std::isfinite(test_loss)) {
    std::ostringstream os;
    os << "training diverged by step " << step << " (parameter norm " << norm << ", test loss " << test_loss
       << "): lower --lr" << (c.save_path.empty() ? "" : "; nothing was saved to " + c.save_path);
    diverged = os.str();
  }
  agree_or_throw(*comm, diverged);
  if (lead && !c.save_path.empty()) save_checkpoint(sess, g, c.save_path, data_state_metadata(data.state(), step));
  if (timeline) write_timeline(*timeline, c.timeline_path, *comm);

  nlohmann::json s;
  s["model"] = m.name;
  s["data"] = data.name();
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
  s["clip_grad_norm"] = c.clip_norm;
  s["seed"] = c.seed;
  s["steps"] = step;
  s["train_seconds"] = train_seconds;
  s["samples_per_second"] = double((step - first_step) * c.batch) / std::max(train_seconds, 1e-9);
  for (size_t k = 0; k < nm; ++k) s["test_" + m.metrics[k].name] = evaluated ? eval.metrics[k] : 0.0;
  s["test_loss"] = test_loss;
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

nlohmann::json train(const TrainConfig& c) {
  Trainer trainer(c);
  const TrainConfig cfg = c;
  return trainer.fit(c.model, c.model_options, [cfg] {
    const std::string data = resolved_data(cfg), dir = resolved_data_dir(cfg);
    if (data == "kjv") {
      const auto context = cfg.model_options.find("context");
      return make_kjv_source(dir, context == cfg.model_options.end() ? 128 : std::stoll(context->second),
                             cfg.data_dir.empty());
    }
    return make_image_source(data, dir, cfg.synthetic_train, cfg.synthetic_test, cfg.seed);
  });
}

}  // namespace rf
