// The gpt model (docs/GPT.md) against the PyTorch reference (bench/gpt/gpt_ref.py): from the
// fixture's initial weights (bench/gpt/fixture/init.safetensors) and its windows of the King James
// train text, 20 f64 training steps (Adam, warm-up then inverse square root, clip to global norm 1)
// give PyTorch's per-step losses to 1e-10 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "autodiff/optimizer.h"
#include "models/checkpoint.h"
#include "models/gpt.h"
#include "models/text_corpus.h"
#include "runtime/error.h"
#include "runtime/ops.h"
#include "runtime/session.h"

namespace {

using namespace rf;

// The King James text, staged or printed by `bible` here; empty (the test skips) without either.
std::string kjv_path() {
  const std::string staged = std::string(RF_SOURCE_DIR) + "/data/kjv/kjv.txt";
  if (std::filesystem::exists(staged)) return staged;
  const std::string made = std::string(RF_BINARY_DIR) + "/kjv_gpt_test.txt";
  if (std::filesystem::exists(made) && std::filesystem::file_size(made) == 4298239) return made;
  if (std::system(("bible gen1:1-rev22:21 > " + made + " 2>/dev/null").c_str()) != 0) return "";
  return made;
}

TEST(Gpt, FollowsPyTorchFromTheSameWeightsInF64) {
  const std::string dir = std::string(RF_SOURCE_DIR) + "/bench/gpt/fixture/";
  std::ifstream in(dir + "losses.json");
  ASSERT_TRUE(in.good()) << dir << "losses.json";
  const nlohmann::json fx = nlohmann::json::parse(in);
  const nlohmann::json& cfg = fx["config"];
  const std::string corpus_path = kjv_path();
  if (corpus_path.empty()) GTEST_SKIP() << "no King James text (scripts/install_deps.sh installs bible-kjv)";
  const TextCorpus corpus = load_text_corpus(corpus_path);

  GptConfig gc;
  gc.vocab = cfg["vocab"].get<int64_t>();
  gc.layers = cfg["layers"].get<int64_t>();
  gc.heads = cfg["heads"].get<int64_t>();
  gc.width = cfg["width"].get<int64_t>();
  gc.context = cfg["context"].get<int64_t>();
  const int64_t B = cfg["batch"].get<int64_t>(), T = gc.context;
  Graph g(1);
  const Gpt m = build_gpt(g, gc, DType::F64);
  OptimizerConfig oc;
  oc.kind = OptimizerConfig::Kind::Adam;
  oc.beta1 = cfg["adam"]["beta1"].get<double>();
  oc.beta2 = cfg["adam"]["beta2"].get<double>();
  oc.eps = cfg["adam"]["eps"].get<double>();
  oc.clip_norm = cfg["clip"].get<double>();
  const TrainOp t = minimize(m.loss, oc);
  LrSchedule sched;
  sched.kind = LrSchedule::Kind::InvSqrt;
  sched.base_lr = cfg["lr"].get<double>();
  sched.warmup_steps = cfg["warmup"].get<int64_t>();

  Session s(g);
  s.run({}, {}, g.initializers());
  for (const auto& [id, host] : read_checkpoint(g, dir + "init.safetensors")) {
    s.variable(id).copy_from(host);
    s.set_initialized(id);
  }
  Tensor tokens(Shape{B, T}, DType::I32), targets(Shape{B, T}, DType::I32), hyper(Shape{2}, DType::F64);
  const std::vector<Session::Feed> feeds{{m.tokens, tokens}, {m.targets, targets}, {t.hyper, hyper}};
  const auto& losses = fx["losses"];
  double worst = 0;
  for (size_t step = 0; step < losses.size(); ++step) {
    const auto& windows = fx["windows"][step];
    ASSERT_EQ(int64_t(windows.size()), B);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t w = windows[size_t(b)].get<int64_t>();
      for (int64_t i = 0; i < T; ++i) {
        tokens.data<int32_t>()[b * T + i] = corpus.train.at(size_t(w * T + i));
        targets.data<int32_t>()[b * T + i] = corpus.train.at(size_t(w * T + i + 1));
      }
    }
    const double lr = sched.at(int64_t(step));
    EXPECT_NEAR(lr, fx["lr"][step].get<double>(), 1e-18) << "step " << step + 1;
    hyper.data<double>()[0] = lr;
    hyper.data<double>()[1] = double(step + 1);
    const auto& out = s.run({m.loss, t.grad_norm}, feeds, t.updates);
    const double want = losses[step].get<double>(), got = out[0].item();
    const double err = std::fabs(got - want) / std::fabs(want);
    worst = std::max(worst, err);
    EXPECT_LE(err, 1e-10) << "step " << step + 1 << ": ringflow " << got << ", PyTorch " << want;
    EXPECT_LE(std::fabs(out[1].item() - fx["grad_norm"][step].get<double>()), 1e-9 * fx["grad_norm"][step].get<double>())
        << "gradient norm before clipping, step " << step + 1;
  }
  RecordProperty("worst_relative_loss_error", std::to_string(worst));
  std::printf("gpt parity: worst relative loss error over %zu steps %.3g\n", losses.size(), worst);
}

TEST(Gpt, BadConfigurationsAreOneLineErrors) {
  Graph g(1);
  GptConfig c;
  c.heads = 3;  // does not divide 128
  EXPECT_THROW(build_gpt(g, c, DType::F64), Error);
  c = GptConfig{};
  c.layers = 0;
  EXPECT_THROW(build_gpt(g, c, DType::F32), Error);
  c = GptConfig{};
  EXPECT_THROW(build_gpt(g, c, DType::I32), Error);
}

}  // namespace

namespace {

// What the training step's plan holds for node outputs (Session::last_plan_bytes), with and
// without liveness reuse, for the default gpt (L4 H4 d128 T128) at a batch of 8 windows.
size_t gpt_step_plan_bytes(bool reuse) {
  Graph g(1);
  const Gpt m = build_gpt(g, GptConfig{}, DType::F32);
  OptimizerConfig oc;
  oc.kind = OptimizerConfig::Kind::Adam;
  oc.clip_norm = 1.0;
  const TrainOp t = minimize(m.loss, oc);
  Session s(g);
  s.set_memory_reuse(reuse);
  s.run({}, {}, g.initializers());
  const int64_t B = 8, T = GptConfig{}.context;
  Tensor tokens(Shape{B, T}, DType::I32), targets(Shape{B, T}, DType::I32);
  for (int64_t i = 0; i < B * T; ++i) {
    tokens.data<int32_t>()[i] = int32_t((i * 7) % 73);
    targets.data<int32_t>()[i] = int32_t((i * 7 + 1) % 73);
  }
  const Tensor hyper = Tensor::from_vector<double>({1e-3, 1.0}, Shape{2});
  const double loss = s.run({m.loss}, {{m.tokens, tokens}, {m.targets, targets}, {t.hyper, hyper}}, t.updates)[0].item();
  EXPECT_TRUE(std::isfinite(loss));
  return s.last_plan_bytes();
}

TEST(Gpt, LivenessReuseHalvesTheTrainingStepsMemory) {
  const size_t with = gpt_step_plan_bytes(true), without = gpt_step_plan_bytes(false);
  std::printf("gpt training step, batch 8: peak_plan_bytes %zu with reuse, %zu without (%.3f)\n", with, without,
              double(with) / double(without));
  EXPECT_LE(2 * with, without) << with << " bytes with reuse, " << without << " without";
}

}  // namespace

namespace {

// `ringflow sample`: from a saved (untrained) small gpt, the prompt continued by the asked number
// of characters, the same for the same seed; a prompt byte outside the vocabulary is an error.
TEST(Gpt, SampleContinuesThePromptFromACheckpoint) {
  if (kjv_path().empty()) GTEST_SKIP() << "no King James text (scripts/install_deps.sh installs bible-kjv)";
  SampleConfig c;
  c.model.layers = 1, c.model.heads = 2, c.model.width = 16, c.model.context = 8;
  c.init_from = std::string(RF_BINARY_DIR) + "/gpt_sample_test.safetensors";
  {
    Graph g(3);
    build_gpt(g, c.model, DType::F32);
    Session s(g);
    s.run({}, {}, g.initializers());
    save_checkpoint(s, g, c.init_from);
  }
  const std::string staged = std::string(RF_SOURCE_DIR) + "/data/kjv";
  if (std::filesystem::exists(staged + "/kjv.txt")) c.data_dir = staged;
  c.prompt = "And God said";
  c.chars = 20;
  const std::string a = sample_gpt(c), b = sample_gpt(c);
  EXPECT_EQ(a.size(), c.prompt.size() + 20);
  EXPECT_EQ(a.substr(0, c.prompt.size()), c.prompt);
  EXPECT_EQ(a, b);
  c.temperature = 0;
  EXPECT_EQ(sample_gpt(c).size(), c.prompt.size() + 20);
  c.prompt = "caf\xc3\xa9";  // not ASCII: not in the vocabulary
  EXPECT_THROW(sample_gpt(c), Error);
  c.prompt = "x";
  c.model.width = 32;  // not the checkpoint's shape
  EXPECT_THROW(sample_gpt(c), Error);
  std::filesystem::remove(c.init_from);
}

}  // namespace
