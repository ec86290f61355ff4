// Optimizer update ops through the graph against closed-form values, and LR schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "autodiff/optimizer.h"
#include "runtime/ops.h"
#include "runtime/session.h"

using namespace rf;

namespace {
// loss = sum(c * w) has the constant gradient c, so every update has a closed form.
struct Fixture {
  Graph g;
  Value w;
  TrainOp t;
  std::unique_ptr<Session> s;
  Fixture(OptimizerConfig cfg, double w0, double grad) {
    w = g.variable("w", Shape{2}, DType::F64, Initializer::constant(w0));
    Value c = g.constant(Tensor::from_vector<double>({grad, grad}, Shape{2}));
    t = minimize(ops::sum(ops::mul(c, w)), cfg);
    s = std::make_unique<Session>(g);
    s->run({}, {}, g.initializers());
  }
  double step(double lr, int t1) {
    Tensor h = Tensor::from_vector<double>({lr, double(t1)}, Shape{2});
    s->run({}, {{t.hyper, h}}, t.updates);
    return s->variable("w").to_vector<double>()[0];
  }
};
}  // namespace

TEST(Optimizers, SgdWithWeightDecay) {
  OptimizerConfig c;
  c.kind = OptimizerConfig::Kind::SGD;
  c.weight_decay = 0.1;
  Fixture f(c, 1.0, 0.5);
  // g' = 0.5 + 0.1 * 1 = 0.6; w = 1 - 0.1 * 0.6
  EXPECT_NEAR(f.step(0.1, 1), 0.94, 1e-15);
}

TEST(Optimizers, MomentumAndNesterov) {
  OptimizerConfig c;
  c.kind = OptimizerConfig::Kind::Momentum;
  c.momentum = 0.9;
  Fixture f(c, 1.0, 1.0);
  // v1 = 1, w1 = 1 - 0.1; v2 = 1.9, w2 = w1 - 0.19; v3 = 2.71, w3 = w2 - 0.271
  EXPECT_NEAR(f.step(0.1, 1), 0.9, 1e-15);
  EXPECT_NEAR(f.step(0.1, 2), 0.71, 1e-15);
  EXPECT_NEAR(f.step(0.1, 3), 0.439, 1e-14);
  c.nesterov = true;
  Fixture n(c, 1.0, 1.0);
  // v1 = 1, step g + mu v1 = 1.9; v2 = 1.9, step 1 + 0.9*1.9 = 2.71
  EXPECT_NEAR(n.step(0.1, 1), 1 - 0.19, 1e-15);
  EXPECT_NEAR(n.step(0.1, 2), 1 - 0.19 - 0.271, 1e-14);
}

TEST(Optimizers, AdamAndAdamW) {
  OptimizerConfig c;
  c.kind = OptimizerConfig::Kind::Adam;
  c.eps = 1e-8;
  Fixture f(c, 1.0, 2.0);
  // Constant gradient: mhat = g, vhat = g^2 at every t, so each step moves lr * g/(|g| + eps).
  const double d = 0.01 * 2.0 / (2.0 + 1e-8);
  EXPECT_NEAR(f.step(0.01, 1), 1 - d, 1e-12);
  EXPECT_NEAR(f.step(0.01, 2), 1 - 2 * d, 1e-12);
  c.kind = OptimizerConfig::Kind::AdamW;
  c.weight_decay = 0.5;
  Fixture w(c, 1.0, 2.0);
  // Decoupled: w *= 1 - lr*wd, then the Adam step.
  EXPECT_NEAR(w.step(0.01, 1), 1.0 * (1 - 0.005) - d, 1e-12);
}

TEST(Optimizers, UnknownNamesAreErrors) {
  EXPECT_THROW(parse_optimizer("rmsprop"), Error);
  EXPECT_THROW(parse_schedule("linear"), Error);
  EXPECT_EQ(parse_optimizer("adamw"), OptimizerConfig::Kind::AdamW);
}

TEST(Schedules, ConstantStepCosineWarmup) {
  LrSchedule s;
  s.base_lr = 1.0;
  EXPECT_DOUBLE_EQ(s.at(0), 1.0);
  EXPECT_DOUBLE_EQ(s.at(1000), 1.0);
  s.kind = LrSchedule::Kind::Step;
  s.step_size = 10;
  s.gamma = 0.5;
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 0.5);
  EXPECT_DOUBLE_EQ(s.at(25), 0.25);
  s.kind = LrSchedule::Kind::Cosine;
  s.total_steps = 100;
  EXPECT_DOUBLE_EQ(s.at(0), 1.0);
  EXPECT_NEAR(s.at(50), 0.5, 1e-12);
  EXPECT_NEAR(s.at(100), 0.0, 1e-12);
  s.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(55), 0.5, 1e-12);
}

// The Transformer schedule: base * min(t / W, sqrt(W / t)) at the 1-based step t = step + 1.
TEST(Schedules, WarmupThenInverseSquareRoot) {
  LrSchedule s;
  s.kind = parse_schedule("invsqrt");
  s.base_lr = 1e-3;
  s.warmup_steps = 200;
  for (int64_t step : {0, 1, 99, 198, 199, 200, 799, 20000}) {
    const double t = double(step + 1);
    EXPECT_NEAR(s.at(step), 1e-3 * std::min(t / 200, std::sqrt(200 / t)), 1e-18) << step;
  }
  EXPECT_DOUBLE_EQ(s.at(199), 1e-3);  // the peak, where the two branches meet
  EXPECT_DOUBLE_EQ(s.at(799), 0.5e-3);
  s.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(s.at(0), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(3), 0.5e-3);
}

// compute_gradients / apply_gradients (TF1's split of minimize) and clip_by_global_norm with
// torch's rule: g * min(1, c / (norm + 1e-6)).
TEST(Optimizers, ComputeClipAndApplyGradients) {
  for (double clip : {0.1, 100.0}) {  // acting, and not
    Graph g(5);
    const Value x = g.placeholder("x", DType::F64, Shape{3});
    const Value a = g.variable("a", Shape{3}, DType::F64, Initializer::constant(0.5));
    const Value b = g.variable("b", Shape{3}, DType::F64, Initializer::constant(-1.0));
    const Value frozen = g.variable("frozen", Shape{3}, DType::F64, Initializer::constant(2.0));
    const Value loss = ops::sum(ops::mul(ops::mul(ops::add(ops::mul(a, x), b), x), frozen));  // sum(frozen*(a*x+b)*x)
    const GradsAndVars gv = compute_gradients(loss, {a.node, b.node});
    ASSERT_EQ(gv.size(), 2u);
    EXPECT_EQ(gv[1].second, b.node);
    const ClippedGrads c = clip_by_global_norm({gv[0].first, gv[1].first}, clip);
    OptimizerConfig oc;
    oc.kind = OptimizerConfig::Kind::SGD;
    const TrainOp t = apply_gradients({{c.grads[0], a.node}, {c.grads[1], b.node}}, oc);
    Session s(g);
    s.run({}, {}, g.initializers());
    const std::vector<double> xv{1.0, -2.0, 3.0};
    const auto& out = s.run({c.norm, c.scale}, {{x, Tensor::from_vector<double>(xv, Shape{3})},
                                                {t.hyper, Tensor::from_vector<double>({0.1, 1.0}, Shape{2})}},
                            t.updates);
    // d/da = frozen * x^2, d/db = frozen * x.
    double sq = 0;
    for (double v : xv) sq += 4 * v * v * v * v + 4 * v * v;
    const double norm = std::sqrt(sq), scale = std::min(1.0, clip / (norm + 1e-6));
    EXPECT_NEAR(out[0].item(), norm, 1e-12);
    EXPECT_NEAR(out[1].item(), scale, 1e-15);
    const auto av = s.variable(a.node).to_vector<double>(), bv = s.variable(b.node).to_vector<double>();
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_NEAR(av[i], 0.5 - 0.1 * scale * 2 * xv[i] * xv[i], 1e-14);
      EXPECT_NEAR(bv[i], -1.0 - 0.1 * scale * 2 * xv[i], 1e-14);
    }
    EXPECT_EQ(s.variable(frozen.node).to_vector<double>()[0], 2.0);  // not in var_list: not updated
  }
}

TEST(Optimizers, ComputeGradientsNamesAVariableTheLossIgnores) {
  Graph g(5);
  const Value a = g.variable("a", Shape{2}, DType::F64, Initializer::constant(1));
  g.variable("unused", Shape{2}, DType::F64, Initializer::constant(1));
  try {
    compute_gradients(ops::sum(ops::square(a)));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unused"), std::string::npos) << e.what();
  }
  EXPECT_THROW(clip_by_global_norm({a}, 0), Error);
}
