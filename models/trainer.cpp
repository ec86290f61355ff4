// The single-replica training loop. Throughput counts training steps only: data loading,
// graph building, initialisation and evaluation are outside the timed region.
#include "models/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>

#include "autodiff/optimizer.h"
#include "models/dataset.h"
#include "models/models.h"
#include "models/safetensors.h"
#include "runtime/session.h"

namespace rf {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void validate(const TrainConfig& c) {
  RF_CHECK(c.model == "mlp" || c.model == "cnn", "unknown model '", c.model, "': expected mlp or cnn");
  RF_CHECK(c.data == "fashion-mnist" || c.data == "synthetic", "unknown data set '", c.data,
           "': expected fashion-mnist or synthetic");
  RF_CHECK(c.batch > 0, "--batch must be positive, got ", c.batch);
  RF_CHECK(c.lr > 0 && std::isfinite(c.lr), "--lr must be positive, got ", c.lr);
  RF_CHECK(c.epochs > 0, "--epochs must be positive, got ", c.epochs);
  RF_CHECK(c.max_steps == -1 || c.max_steps > 0, "--max-steps must be positive, got ", c.max_steps);
  RF_CHECK(c.threads >= 1, "--threads must be >= 1, got ", c.threads);
  RF_CHECK(c.eval_batch > 0, "--eval-batch must be positive, got ", c.eval_batch);
  RF_CHECK(c.metrics_every > 0, "--metrics-every must be positive, got ", c.metrics_every);
  RF_CHECK(c.weight_decay >= 0, "--weight-decay must be >= 0, got ", c.weight_decay);
  parse_optimizer(c.optimizer);
  parse_schedule(c.schedule);
}

// Sum of squares of every trainable Variable, accumulated in double.
double param_norm(Session& s, const Graph& g) {
  double acc = 0;
  for (int id : g.variables(true)) {
    const Tensor& t = s.variable(id);
    if (t.dtype() == DType::F32)
      for (float v : t.to_vector<float>()) acc += double(v) * double(v);
    else
      for (double v : t.to_vector<double>()) acc += v * v;
  }
  return std::sqrt(acc);
}

void load_checkpoint(Session& s, const Graph& g, const std::string& path) {
  auto tensors = load_safetensors(path);
  for (int id : g.variables(true)) {
    const Node& n = g.node(id);
    auto it = tensors.find(n.name);
    RF_CHECK(it != tensors.end(), path, ": Variable '", n.name, "' is missing from the checkpoint");
    RF_CHECK(it->second.dtype == n.attrs.dtype && it->second.shape == n.attrs.shape, path, ": Variable '",
             n.name, "' is ", dtype_name(it->second.dtype), it->second.shape.str(), " in the checkpoint, the model has ",
             dtype_name(n.attrs.dtype), n.attrs.shape.str());
    Tensor host(n.attrs.shape, n.attrs.dtype);
    std::memcpy(host.raw(), it->second.bytes.data(), host.nbytes());
    s.variable(id).copy_from(host);
    s.set_initialized(id);
    tensors.erase(it);
  }
  RF_CHECK(tensors.empty(), path, ": the checkpoint has '", tensors.begin()->first,
           "', which is not a Variable of this model");
}

void save_checkpoint(Session& s, const Graph& g, const std::string& path) {
  std::vector<Tensor> host;
  std::vector<NamedTensor> named;
  for (int id : g.variables(true)) host.push_back(s.variable(id).to(Device::cpu()));
  size_t i = 0;
  for (int id : g.variables(true)) {
    const Tensor& t = host[i++];
    named.push_back({g.node(id).name, t.dtype(), t.shape(), t.raw()});
  }
  save_safetensors(path, named);
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
std::pair<double, double> evaluate(Session& s, const Model& m, const Dataset& d, int64_t eval_batch) {
  int64_t correct = 0;
  double loss_sum = 0;
  const int64_t per = d.sample_size();
  for (int64_t start = 0; start < d.n; start += eval_batch) {
    const int64_t b = std::min(eval_batch, d.n - start);
    Tensor x(Shape{b, 1, d.height, d.width}, DType::F32);
    Tensor y(Shape{b}, DType::I32);
    std::memcpy(x.raw(), d.images.data() + start * per, size_t(b * per) * sizeof(float));
    std::memcpy(y.raw(), d.labels.data() + start, size_t(b) * sizeof(int32_t));
    const auto& out = s.run({m.logits, m.loss}, {{m.images, x}, {m.labels, y}});
    correct += count_correct(out[0].to(Device::cpu()), y);
    loss_sum += out[1].item() * double(b);
  }
  return {double(correct) / double(d.n), loss_sum / double(d.n)};
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

}  // namespace

nlohmann::json train(const TrainConfig& c) {
  validate(c);
  set_num_threads(c.threads);
  const Device device = Device::parse(c.device);

  FashionMnist data;
  if (c.data == "fashion-mnist") {
    data = load_fashion_mnist(c.data_dir);
  } else {
    data.train = make_synthetic(c.synthetic_train, c.seed);
    data.test = make_synthetic(c.synthetic_test, c.seed + 1);
  }
  RF_CHECK(c.batch <= data.train.n, "--batch ", c.batch, " is larger than the training set (", data.train.n,
           " samples)");

  Graph g(c.seed);
  const Model m = build_model(g, c.model);
  OptimizerConfig oc;
  oc.kind = parse_optimizer(c.optimizer);
  oc.nesterov = c.optimizer == "nesterov";
  oc.momentum = c.momentum;
  oc.weight_decay = c.weight_decay;
  const TrainOp t = minimize(m.loss, oc);

  Session sess(g, device);
  sess.run({}, {}, g.initializers());
  if (!c.init_from.empty()) load_checkpoint(sess, g, c.init_from);

  BatchIterator it(data.train, c.batch, c.seed, c.shuffle);
  const int64_t steps_per_epoch = it.steps_per_epoch();
  const int64_t total_steps =
      c.max_steps > 0 ? std::min(c.max_steps, c.epochs * steps_per_epoch) : c.epochs * steps_per_epoch;
  LrSchedule sched;
  sched.kind = parse_schedule(c.schedule);
  sched.base_lr = c.lr;
  sched.warmup_steps = c.warmup_steps;
  sched.total_steps = total_steps;
  sched.step_size = std::max<int64_t>(1, total_steps / 3);

  std::ofstream metrics;
  if (!c.metrics_path.empty()) {
    metrics.open(c.metrics_path);
    RF_CHECK(metrics.good(), "cannot open metrics file ", c.metrics_path, " for writing");
  }
  auto emit = [&](nlohmann::json j) {
    if (metrics.is_open()) metrics << j.dump() << '\n' << std::flush;
  };

  Tensor images(Shape{c.batch, 1, data.train.height, data.train.width}, DType::F32);
  Tensor labels(Shape{c.batch}, DType::I32);
  Tensor hyper(Shape{2}, DType::F64);
  const std::vector<Session::Feed> feeds{{m.images, images}, {m.labels, labels}, {t.hyper, hyper}};
  const std::vector<Value> fetches{m.loss, m.logits};
  Tensor logits_host(Shape{c.batch, data.train.classes}, DType::F32);

  Progress progress(c.progress);
  double train_seconds = 0, final_loss = 0, window_loss = 0;
  int64_t step = 0, window_steps = 0, window_correct = 0;
  nlohmann::json eval_json;
  for (int64_t epoch = 0; epoch < c.epochs && step < total_steps; ++epoch) {
    it.start_epoch(epoch);
    const auto epoch_start = Clock::now();
    int64_t epoch_steps = 0;
    while (step < total_steps && it.next(images.data<float>(), labels.data<int32_t>())) {
      const double lr = sched.at(step);
      hyper.data<double>()[0] = lr;
      hyper.data<double>()[1] = double(step + 1);
      const auto t0 = Clock::now();
      const auto& out = sess.run(fetches, feeds, t.updates);
      const double loss = out[0].item();
      train_seconds += seconds_since(t0);
      logits_host.copy_from(out[1]);
      window_correct += count_correct(logits_host, labels);
      RF_CHECK(std::isfinite(loss), "loss became ", loss, " at step ", step + 1, " (epoch ", epoch + 1,
               "): lower --lr or check the data");
      final_loss = loss;
      window_loss += loss;
      ++window_steps;
      ++step;
      ++epoch_steps;
      const double sps = double(step * c.batch) / std::max(train_seconds, 1e-9);
      progress.update(epoch + 1, c.epochs, step, total_steps, loss, sps,
                      double((total_steps - step) * c.batch) / std::max(sps, 1e-9));
      if (step % c.metrics_every == 0) {
        emit({{"step", step}, {"epoch", epoch + 1}, {"loss", window_loss / double(window_steps)},
              {"accuracy", double(window_correct) / double(window_steps * c.batch)}, {"lr", lr},
              {"samples_per_second", sps}});
        window_loss = 0;
        window_steps = 0;
        window_correct = 0;
      }
    }
    const auto [acc, test_loss] = evaluate(sess, m, data.test, c.eval_batch);
    eval_json = {{"test_accuracy", acc}, {"test_loss", test_loss}};
    emit({{"step", step}, {"epoch", epoch + 1}, {"loss", final_loss}, {"accuracy", acc}, {"test_loss", test_loss},
          {"lr", sched.at(std::max<int64_t>(step - 1, 0))},
          {"samples_per_second", double(epoch_steps * c.batch) / std::max(seconds_since(epoch_start), 1e-9)}});
  }
  progress.done();
  if (!c.save_path.empty()) save_checkpoint(sess, g, c.save_path);

  nlohmann::json s;
  s["model"] = c.model;
  s["data"] = c.data;
  s["device"] = device.str();
  s["world_size"] = 1;
  s["threads"] = c.threads;
  s["optimizer"] = c.optimizer;
  s["batch"] = c.batch;
  s["lr"] = c.lr;
  s["seed"] = c.seed;
  s["steps"] = step;
  s["train_seconds"] = train_seconds;
  s["samples_per_second"] = double(step * c.batch) / std::max(train_seconds, 1e-9);
  s["test_accuracy"] = eval_json.value("test_accuracy", 0.0);
  s["test_loss"] = eval_json.value("test_loss", 0.0);
  s["final_loss"] = final_loss;
  s["param_norm"] = param_norm(sess, g);
  return s;
}

}  // namespace rf
