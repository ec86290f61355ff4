// The model / data / trainer API: the registry (built-in models linked from the static library,
// options, errors), the command line's model flags and `ringflow models`, rf::nn layers, the
// image DataSource's order and its resumable state, and the Trainer on a model and data source
// that are not image classification (a scalar metric, no accuracy).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autodiff/optimizer.h"
#include "models/checkpoint.h"
#include "models/cli.h"
#include "models/data.h"
#include "models/dataset.h"
#include "models/image_data.h"
#include "models/nn.h"
#include "models/registry.h"
#include "models/trainer.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "runtime/session.h"

using namespace rf;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "." + std::to_string(getpid()))).string();
}

// y = x . w_true + 0.5 for x in [0, 1)^4: a regression data set with feeds "x" F32 [4] and
// "y" F32 [1], in a seeded, sharded order (the Trainer needs nothing image-like).
class RegressionSource : public DataSource {
 public:
  explicit RegressionSource(int64_t n) : n_(n) {}
  std::string name() const override { return "regression"; }
  std::vector<FeedSpec> feeds() const override {
    return {{"x", DType::F32, Shape{4}}, {"y", DType::F32, Shape{1}}};
  }
  int64_t train_size() const override { return n_; }
  int64_t test_size() const override { return 64; }
  void set_order(const DataOrder& o) override { o_ = o; }
  int64_t steps_per_epoch() const override { return n_ / o_.world / o_.batch; }
  void start_epoch(int64_t e) override { s_ = {e, 0}; }
  bool next(std::vector<Tensor>& out) override {
    if (s_.position >= steps_per_epoch()) return false;
    for (int64_t b = 0; b < o_.batch; ++b)
      sample(((s_.position * o_.batch + b) * o_.world + o_.rank + s_.epoch * 7) % n_, out, b);
    ++s_.position;
    return true;
  }
  DataState state() const override { return s_; }
  void restore(const DataState& s) override { s_ = s; }
  std::vector<Tensor> test_batch(int64_t first, int64_t count) const override {
    std::vector<Tensor> out{Tensor(Shape{count, 4}, DType::F32), Tensor(Shape{count, 1}, DType::F32)};
    for (int64_t b = 0; b < count; ++b) sample(n_ + first + b, out, b);
    return out;
  }

 private:
  static void sample(int64_t i, std::vector<Tensor>& out, int64_t b) {
    const float w[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    float y = 0.5f;
    for (int k = 0; k < 4; ++k) {
      const float x = float((i * 37 + k * 11) % 101) / 101.0f;
      out[0].data<float>()[b * 4 + k] = x;
      y += w[k] * x;
    }
    out[1].data<float>()[b] = y;
  }
  int64_t n_;
  DataOrder o_;
  DataState s_;
};

// A linear regression with a hidden layer whose width is an option; its metric is the loss in
// another unit (as a language model reports bits per character).
ModelSpec build_regression(Graph& g, const ModelConfig& c) {
  ModelSpec spec;
  const Value x = g.placeholder("x", DType::F32, Shape{-1, 4});
  const Value y = g.placeholder("y", DType::F32, Shape{-1, 1});
  const Value xc = c.dtype == DType::F32 ? x : ops::cast(x, c.dtype);
  const Value yc = c.dtype == DType::F32 ? y : ops::cast(y, c.dtype);
  const Value h = nn::linear(xc, c.get_int("hidden", 8, 1), "hidden");
  const Value p = nn::linear(h, 1, "out");
  spec.inputs = {{"x", x}, {"y", y}};
  spec.loss = ops::mean(ops::square(ops::sub(p, yc)), {}, false, "mse");
  spec.metrics.push_back(Metric::mean_of("half_mse", spec.loss, 0.5));
  return spec;
}

}  // namespace

RF_REGISTER_MODEL("test_regression", "a linear regression with one hidden layer (tests)", build_regression,
                  {{"hidden", "8", "hidden width"}});

// This file references nothing of models/models.cpp: mlp and cnn are here because the registry
// links the file that registers them (link_models), though ringflow_core is a static library.
TEST(ModelRegistry, BuiltInModelsAreLinkedAndListed) {
  const auto names = models().names();
  for (const char* n : {"mlp", "cnn", "gpt", "test_regression"})
    EXPECT_NE(std::find(names.begin(), names.end(), n), names.end()) << n;
  EXPECT_FALSE(models().get("mlp").description.empty());
  const std::string e = error_of([] { models().get("resnet"); });
  EXPECT_NE(e.find("unknown model 'resnet': expected cnn, gpt, mlp"), std::string::npos) << e;
  EXPECT_NE(error_of([] { models().add({"mlp", "again", build_regression, {}}); }).find("registered twice"),
            std::string::npos);
  std::ostringstream out;
  print_models(out);
  EXPECT_NE(out.str().find("mlp  "), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("--hidden (default 8): hidden width"), std::string::npos) << out.str();
}

TEST(ModelRegistry, SpecOfABuiltInClassifier) {
  Graph g(3);
  const ModelSpec s = build_model_spec(g, "cnn");
  EXPECT_EQ(s.name, "cnn");
  ASSERT_EQ(s.inputs.size(), 2u);
  EXPECT_EQ(s.inputs[0].first, "images");
  EXPECT_EQ(g.spec(s.input("images")).shape, (Shape{-1, 1, 28, 28}));
  ASSERT_EQ(s.metrics.size(), 1u);
  EXPECT_EQ(s.metrics[0].name, "accuracy");
  std::vector<std::string> vars;
  for (int id : s.variables) vars.push_back(g.node(id).name);
  EXPECT_EQ(vars, (std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
                                            "fc1.bias", "fc2.weight", "fc2.bias"}));
  EXPECT_EQ(g.spec(Value{&g, g.find("fc1.weight"), 0}).shape, (Shape{128, 3136}));
  EXPECT_NE(error_of([&] { s.input("tokens"); }).find("no input 'tokens'"), std::string::npos);
}

TEST(ModelRegistry, OptionsAreDeclaredAndChecked) {
  Graph g(1);
  ModelConfig c;
  c.options = {{"hidden", "5"}};
  const ModelSpec s = build_model_spec(g, "test_regression", c);
  EXPECT_EQ(g.spec(Value{&g, g.find("hidden.weight"), 0}).shape, (Shape{5, 4}));
  Graph g2(1);
  c.options = {{"hidden", "five"}};
  EXPECT_NE(error_of([&] { build_model_spec(g2, "test_regression", c); }).find("--hidden must be an integer"),
            std::string::npos);
  Graph g3(1);
  c.options = {{"hidden", "0"}};
  EXPECT_NE(error_of([&] { build_model_spec(g3, "test_regression", c); }).find("--hidden must be >= 1"),
            std::string::npos);
  Graph g4(1);
  c.options = {{"layers", "2"}};
  EXPECT_NE(error_of([&] { build_model_spec(g4, "test_regression", c); })
                .find("--layers is not an option of model 'test_regression'"),
            std::string::npos);
}

TEST(ModelRegistry, CommandLineTakesModelOptionsFromTheRegistry) {
  std::ostringstream out;
  const char* ok[] = {"ringflow", "train", "--model", "test_regression", "--hidden", "4"};
  CommandLine cl = parse_command_line(6, ok, out);
  ASSERT_TRUE(cl.train) << cl.error;
  EXPECT_EQ(cl.config.model_options, (std::map<std::string, std::string>{{"hidden", "4"}}));
  EXPECT_NO_THROW(validate_config(cl.config));
  const char* plain[] = {"ringflow", "train", "--model", "mlp"};
  EXPECT_TRUE(parse_command_line(4, plain, out).config.model_options.empty());  // defaults are the builder's
  const char* wrong[] = {"ringflow", "train", "--model", "mlp", "--hidden", "4"};
  cl = parse_command_line(6, wrong, out);
  ASSERT_TRUE(cl.train);
  EXPECT_NE(error_of([&] { validate_config(cl.config); }).find("--hidden is not an option of model 'mlp'"),
            std::string::npos);
  const char* unknown[] = {"ringflow", "train", "--model", "resnet"};
  cl = parse_command_line(4, unknown, out);
  EXPECT_EQ(cl.exit_code, 2);
  EXPECT_NE(cl.error.find("unknown model 'resnet'"), std::string::npos) << cl.error;
  const char* list[] = {"ringflow", "models"};
  cl = parse_command_line(2, list, out);
  EXPECT_TRUE(cl.list_models);
  EXPECT_FALSE(cl.train);
}

TEST(Nn, LayersFollowPyTorch) {
  Graph g(7);
  const Value x = g.placeholder("x", DType::F64, Shape{-1, 3, 8, 8});
  const Value c = nn::conv2d(x, 4, 3, "conv", 1, 1);
  EXPECT_EQ(g.spec(c).shape, (Shape{-1, 4, 8, 8}));
  EXPECT_EQ(g.spec(c).dtype, DType::F64);
  const Value y = nn::linear(ops::flatten(c), 5, "fc", /*bias=*/false);
  EXPECT_EQ(g.spec(y).shape, (Shape{-1, 5}));
  EXPECT_EQ(g.find("fc.bias"), -1);
  const Node& w = g.node(g.find("fc.weight"));
  EXPECT_EQ(w.attrs.shape, (Shape{5, 256}));
  EXPECT_EQ(w.attrs.init.kind, Initializer::Kind::Uniform);
  EXPECT_DOUBLE_EQ(w.attrs.init.b, 1.0 / 16.0);  // 1/sqrt(in)
  EXPECT_DOUBLE_EQ(g.node(g.find("conv.bias")).attrs.init.b, 1.0 / std::sqrt(27.0));
  EXPECT_EQ(g.node(g.find("conv.weight")).attrs.shape, (Shape{4, 3, 3, 3}));
  EXPECT_TRUE(nn::dropout(y, 0.0, "drop0") == y);
  const Value d = nn::dropout(y, 0.25, "drop");
  EXPECT_EQ(g.node(d).op, Op::Dropout);
  EXPECT_NE(error_of([&] { nn::linear(g.placeholder("v", DType::F32, Shape{4, -1}), 2, "bad"); }).find("unknown"),
            std::string::npos);
  Graph h(7);  // the mask's seed depends on the graph seed and the name, not on the build order
  h.placeholder("other", DType::F32, Shape{2});
  const Value d2 = nn::dropout(h.placeholder("y", DType::F64, Shape{-1, 5}), 0.25, "drop");
  EXPECT_EQ(h.node(d2).attrs.seed, g.node(d).attrs.seed);
}

// The image source yields BatchIterator's batches (the order existing runs rely on), per rank.
TEST(DataSource, ImageSourceKeepsBatchIteratorsOrder) {
  for (int rank = 0; rank < 2; ++rank) {
    auto src = make_image_source("synthetic", "", 203, 10, 5);
    src->set_order(DataOrder{rank, 2, 16, 9, true});
    const Dataset d = make_synthetic(203, 5);
    BatchIterator it(d, 16, 9, true, rank, 2);
    std::vector<Tensor> batch = src->make_batch(16);
    std::vector<float> images(16 * 784);
    std::vector<int32_t> labels(16);
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      src->start_epoch(epoch);
      it.start_epoch(epoch);
      int steps = 0;
      while (it.next(images.data(), labels.data())) {
        ASSERT_TRUE(src->next(batch));
        EXPECT_EQ(0, std::memcmp(batch[0].raw(), images.data(), images.size() * sizeof(float)));
        EXPECT_EQ(0, std::memcmp(batch[1].raw(), labels.data(), labels.size() * sizeof(int32_t)));
        ++steps;
      }
      EXPECT_FALSE(src->next(batch));
      EXPECT_EQ(steps, src->steps_per_epoch());
    }
  }
}

TEST(DataSource, StateRestoresTheOrder) {
  auto a = make_image_source("synthetic", "", 300, 10, 1);
  auto b = make_image_source("synthetic", "", 300, 10, 1);
  for (auto* s : {a.get(), b.get()}) s->set_order(DataOrder{1, 3, 8, 77, true});  // 12 batches per epoch
  a->start_epoch(4);
  std::vector<Tensor> x = a->make_batch(8), y = b->make_batch(8);
  for (int k = 0; k < 5; ++k) ASSERT_TRUE(a->next(x));
  const DataState st = a->state();
  EXPECT_EQ(st, (DataState{4, 5}));
  b->restore(st);
  EXPECT_EQ(b->state(), st);
  for (int k = 0; k < 7; ++k) {
    ASSERT_TRUE(a->next(x));
    ASSERT_TRUE(b->next(y));
    EXPECT_EQ(0, std::memcmp(x[0].raw(), y[0].raw(), x[0].nbytes())) << k;
    EXPECT_EQ(0, std::memcmp(x[1].raw(), y[1].raw(), x[1].nbytes())) << k;
  }
  EXPECT_FALSE(a->next(x));
  EXPECT_FALSE(b->next(y));
  EXPECT_NE(error_of([&] { b->restore({0, 13}); }).find("past the end of epoch 0"), std::string::npos);
}

// The Trainer on a model and data set that are not image classification: the summary and the
// metrics lines carry the model's own metric, and nothing of accuracy.
TEST(Trainer, TrainsAnyModelOnAnyDataSource) {
  const std::string metrics = temp_path("rf_regression_metrics.jsonl");
  TrainerConfig c;
  c.epochs = 3;
  c.batch = 16;
  c.lr = 0.02;
  c.device = "cpu";
  c.threads = 1;
  c.progress = false;
  c.metrics_every = 4;
  c.metrics_path = metrics;
  Trainer t(c);
  const auto fit = [&] {
    return t.fit("test_regression", {{"hidden", "6"}}, [] { return std::make_unique<RegressionSource>(256); });
  };
  const nlohmann::json s = fit();
  EXPECT_EQ(s["model"], "test_regression");
  EXPECT_EQ(s["data"], "regression");
  EXPECT_EQ(s["steps"].get<int64_t>(), 48);
  EXPECT_FALSE(s.contains("test_accuracy"));
  EXPECT_NEAR(s["test_half_mse"].get<double>(), 0.5 * s["test_loss"].get<double>(),
              1e-12 * s["test_loss"].get<double>());
  EXPECT_LT(s["final_loss"].get<double>(), 0.5);  // from ~10 at the start
  EXPECT_EQ(s["final_loss"], fit()["final_loss"]);  // bit-reproducible
  std::ifstream in(metrics);
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    EXPECT_TRUE(j.contains("half_mse") && !j.contains("accuracy")) << line;
    ++lines;
  }
  EXPECT_EQ(lines, 12 + 3);  // every 4 of 48 steps, and 3 epochs
  std::remove(metrics.c_str());
  // A model input the data set does not feed is a set-up error naming both.
  Trainer u(TrainerConfig{c});
  const std::string e = error_of([&] {
    u.fit("mlp", {}, [] { return std::make_unique<RegressionSource>(256); });
  });
  EXPECT_NE(e.find("model 'mlp' reads input 'images', which data set 'regression' does not provide (it feeds x, y)"),
            std::string::npos)
      << e;
}

// --save records where the data order stood, so a run can resume it.
TEST(Trainer, CheckpointRecordsTheDataState) {
  const std::string path = temp_path("rf_state.safetensors");
  TrainConfig c;
  c.model = "mlp";
  c.data = "synthetic";
  c.synthetic_train = 1024;
  c.synthetic_test = 64;
  c.epochs = 2;
  c.max_steps = 40;  // 32 steps per epoch: 8 into the second
  c.batch = 32;
  c.device = "cpu";
  c.progress = false;
  c.save_path = path;
  train(c);
  int64_t step = 0;
  EXPECT_EQ(read_data_state(path, &step), (DataState{1, 8}));
  EXPECT_EQ(step, 40);
  std::remove(path.c_str());
}

// --resume continues the saved run: with SGD (no optimizer slots, so the checkpoint is the whole
// state) 20 steps, a checkpoint and 30 more give the 50-step run's Variables bit for bit, across
// an epoch boundary (32 steps an epoch).
TEST(Trainer, ResumeContinuesTheRunBitForBit) {
  const std::string whole = temp_path("rf_whole.safetensors"), half = temp_path("rf_half.safetensors"),
                    rest = temp_path("rf_rest.safetensors");
  TrainConfig c;
  c.model = "mlp";
  c.data = "synthetic";
  c.synthetic_train = 1024;
  c.synthetic_test = 64;
  c.epochs = 3;
  c.batch = 32;
  c.device = "cpu";
  c.threads = 1;
  c.progress = false;
  c.optimizer = "sgd";
  c.schedule = "constant";
  c.warmup_steps = 30;  // the warm-up continues from the saved step (cosine would depend on --max-steps)
  c.max_steps = 50;
  c.save_path = whole;
  const auto a = train(c);
  c.max_steps = 20;
  c.save_path = half;
  train(c);
  c.max_steps = 50;
  c.init_from = half;
  c.resume = true;
  c.save_path = rest;
  const auto b = train(c);
  EXPECT_EQ(b["steps"].get<int64_t>(), 50);
  EXPECT_EQ(a["final_loss"].get<double>(), b["final_loss"].get<double>());
  EXPECT_EQ(a["param_norm"].get<double>(), b["param_norm"].get<double>());
  EXPECT_EQ(read_data_state(rest), read_data_state(whole));
  // Without --resume the same checkpoint starts a new run (step 1, epoch 1): another result.
  c.resume = false;
  EXPECT_NE(train(c)["param_norm"].get<double>(), a["param_norm"].get<double>());
  // Nothing left to train, or no checkpoint to resume: set-up errors.
  c.resume = true;
  c.init_from = whole;
  EXPECT_NE(error_of([&] { train(c); }).find("nothing is left to train"), std::string::npos);
  c.init_from.clear();
  EXPECT_NE(error_of([&] { train(c); }).find("--resume continues the run saved in --init-from"), std::string::npos);
  for (const std::string& p : {whole, half, rest}) std::remove(p.c_str());
}

// gradients() over a Transformer block, whose values have several consumers: summing their
// gradients adds nodes while a rule's node is in use (a reference into the graph's node storage
// dangled when that storage grew: tests/sanitizers' ASan run catches a regression here).
TEST(Nn, TransformerBlockGradientsReachEveryVariable) {
  Graph g(2);
  const Value x = g.placeholder("x", DType::F64, Shape{-1, 16});
  Value h = nn::linear(x, 16, "embed", Initializer::normal(0, 0.02));
  for (int i = 0; i < 3; ++i) h = nn::transformer_block(h, 4, 2, ops::causal_mask(g, 4, DType::F64), "h." + std::to_string(i));
  const Value loss = ops::sum(ops::square(nn::layer_norm(h, "ln_f")));
  const GradsAndVars gv = compute_gradients(loss);
  EXPECT_EQ(gv.size(), size_t(2 + 3 * 12 + 2));
  Session s(g);
  s.run({}, {}, g.initializers());
  std::vector<double> xv(8 * 16);
  for (size_t i = 0; i < xv.size(); ++i) xv[i] = std::sin(double(i));
  std::vector<Value> grads;
  for (const auto& p : gv) grads.push_back(p.first);
  const auto& out = s.run(grads, {{x, Tensor::from_vector<double>(xv, Shape{8, 16})}});
  for (size_t k = 0; k < out.size(); ++k)
    for (double v : out[k].to_vector<double>()) ASSERT_TRUE(std::isfinite(v)) << g.node(gv[k].second).name;
}
