// The memory planner (Session::set_memory_reuse: node outputs share an arena by liveness) and
// the bounded plan cache: training with reuse is bitwise training without it, fetched outputs,
// Variables and bound outputs are never overwritten by a later node, an evicted plan compiles
// again and computes the same, and a cached training step allocates nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iostream>

#include "autodiff/gradients.h"
#include "autodiff/optimizer.h"
#include "models/models.h"
#include "models/trainer.h"
#include "runtime/ops.h"
#include "runtime/session.h"

using namespace rf;

namespace {

// A deterministic batch: images in [-1, 1) from an LCG, labels step through the classes.
void fill_batch(Tensor& images, Tensor& labels, uint64_t step) {
  uint64_t s = 0x9e3779b97f4a7c15ull * (step + 1);
  float* x = images.data<float>();
  for (i64 i = 0; i < images.numel(); ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x[i] = float(double(s >> 11) / double(1ull << 53) * 2.0 - 1.0);
  }
  int32_t* y = labels.data<int32_t>();
  for (i64 i = 0; i < labels.numel(); ++i) y[i] = int32_t((i + i64(step) * 3) % 10);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.numel() == b.numel() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

struct TrainRun {
  std::vector<double> losses;
  std::vector<Tensor> variables;  // every Variable (weights and momentum slots), cloned at the end
  size_t plan_bytes = 0;
};

// `steps` momentum-SGD steps of `model` in `dtype` on one CPU session.
TrainRun train_steps(const std::string& model, DType dtype, bool reuse, int steps) {
  Graph g(7);
  const Model m = build_model(g, model, dtype);
  OptimizerConfig oc;
  const TrainOp t = minimize(m.loss, oc);
  Session s(g);
  s.set_memory_reuse(reuse);
  s.run({}, {}, g.initializers());
  const i64 batch = 16;
  Tensor images(Shape{batch, 1, 28, 28}, DType::F32), labels(Shape{batch}, DType::I32);
  Tensor hyper(Shape{2}, DType::F64);
  TrainRun r;
  for (int step = 0; step < steps; ++step) {
    fill_batch(images, labels, uint64_t(step));
    hyper.data<double>()[0] = 0.05;
    hyper.data<double>()[1] = double(step + 1);
    const auto& out = s.run({m.loss, m.logits}, {{m.images, images}, {m.labels, labels}, {t.hyper, hyper}}, t.updates);
    r.losses.push_back(out[0].item());
    r.plan_bytes = s.last_plan_bytes();
  }
  for (const Node& n : g.nodes())
    if (n.op == Op::Variable) r.variables.push_back(s.variable(n.id).clone());
  return r;
}

}  // namespace

TEST(MemoryPlan, TrainingIsBitwiseTheSameWithAndWithoutReuse) {
  for (const char* model : {"mlp", "cnn"})
    for (DType dtype : {DType::F32, DType::F64}) {
      const int steps = 4;
      const TrainRun on = train_steps(model, dtype, true, steps), off = train_steps(model, dtype, false, steps);
      const std::string what = std::string(model) + " " + dtype_name(dtype);
      ASSERT_EQ(on.losses.size(), size_t(steps)) << what;
      for (int i = 0; i < steps; ++i) {
        EXPECT_TRUE(std::isfinite(on.losses[size_t(i)])) << what;
        EXPECT_EQ(std::memcmp(&on.losses[size_t(i)], &off.losses[size_t(i)], sizeof(double)), 0)
            << what << " step " << i << ": " << on.losses[size_t(i)] << " vs " << off.losses[size_t(i)];
      }
      ASSERT_EQ(on.variables.size(), off.variables.size()) << what;
      for (size_t v = 0; v < on.variables.size(); ++v)
        EXPECT_TRUE(same_bytes(on.variables[v], off.variables[v])) << what << ": Variable " << v << " differs";
      EXPECT_LT(on.plan_bytes, off.plan_bytes) << what;
    }
}

// The summary's peak_plan_bytes: the training step's plan, with and without reuse, and the same
// training either way. Prints the ratio.
TEST(MemoryPlan, SummaryReportsPeakPlanBytesAndThePlanCache) {
  for (const char* model : {"mlp", "cnn"}) {
    TrainConfig c;
    c.model = model;
    c.data = "synthetic";
    c.synthetic_train = 512;
    c.synthetic_test = 128;
    c.epochs = 1;
    c.max_steps = 3;
    c.batch = 64;
    c.device = "cpu";
    c.progress = false;
    const auto on = train(c);
    c.memory_reuse = "off";
    const auto off = train(c);
    const double b_on = on["peak_plan_bytes"].get<double>(), b_off = off["peak_plan_bytes"].get<double>();
    EXPECT_TRUE(on["memory_reuse"].get<bool>());
    EXPECT_FALSE(off["memory_reuse"].get<bool>());
    EXPECT_GT(b_on, 0) << model;
    EXPECT_LT(b_on, b_off) << model;
    EXPECT_EQ(on["final_loss"].get<double>(), off["final_loss"].get<double>()) << model;
    EXPECT_EQ(on["param_norm"].get<double>(), off["param_norm"].get<double>()) << model;
    EXPECT_EQ(on["plan_cache_capacity"].get<int64_t>(), int64_t(Session::kDefaultPlanCache));
    // The initialisers, the training step and the evaluation (128 test samples: one batch).
    EXPECT_EQ(on["plan_cache_size"].get<int64_t>(), 3) << on.dump();
    std::cout << "[ memory   ] " << model << " batch 64 f32 training step: peak_plan_bytes " << int64_t(b_on)
              << " with reuse, " << int64_t(b_off) << " without (ratio " << b_on / b_off << ")\n";
  }
}

// A chain where a naive reuse would give a fetched output's bytes, or a Variable's, to a later
// node of the same size: every value must come back as computed.
TEST(MemoryPlan, FetchesVariablesAndBoundOutputsAreNeverOverwritten) {
  Graph g;
  Value x = g.placeholder("x", DType::F64, Shape{-1, 4});
  Value w = g.variable("w", Shape{4}, DType::F64, Initializer::constant(0.5));
  Value a = ops::exp(x, "a");           // fetched; last read by b
  Value b = ops::mul_scalar(a, 2, "b");  // last read by c: its bytes are free afterwards
  Value c = ops::add_scalar(b, 1, "c");
  Value d = ops::mul(c, w, "d");         // reads the Variable
  Value e = ops::neg(d, "e");            // bound to an outside buffer
  Value f = ops::square(e, "f");
  Value r = ops::reshape(ops::add_scalar(f, 3, "g"), Shape{-1}, "r");  // a fetched view
  Value h = ops::mul_scalar(f, 0.25, "h");
  Value k = ops::add_scalar(h, -1, "k");
  Value out = ops::sum(ops::tanh(k, "l"), {}, false, "out");
  const std::vector<double> in = {0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8};
  Tensor xin = Tensor::from_vector<double>(in, Shape{2, 4});
  auto run = [&](bool reuse, Tensor* bound_e) {
    Session s(g);
    s.set_memory_reuse(reuse);
    s.run({}, {}, g.initializers());
    if (bound_e) s.bind_output(e, *bound_e);
    std::vector<Tensor> got = s.run({a, r, out, w}, {{x, xin}});  // copies of the plan's tensors
    s.run({a, r, out, w}, {{x, xin}});                           // a second run of the same plan
    return std::make_pair(got, s.last_plan_bytes());
  };
  Tensor bound_on = Tensor::zeros(Shape{2, 4}, DType::F64), bound_off = Tensor::zeros(Shape{2, 4}, DType::F64);
  const auto [on, bytes_on] = run(true, &bound_on);
  const auto [off, bytes_off] = run(false, &bound_off);
  EXPECT_LT(bytes_on, bytes_off) << "nothing was shared: the test proves nothing";
  std::vector<double> want_a, want_r, want_e;
  double want_out = 0;
  for (size_t i = 0; i < in.size(); ++i) {
    const double av = std::exp(in[i]), ev = -((av * 2 + 1) * 0.5), fv = ev * ev;
    want_a.push_back(av);
    want_e.push_back(ev);
    want_r.push_back(fv + 3);
    want_out += std::tanh(fv * 0.25 - 1);
  }
  for (const auto* got : {&on, &off}) {
    EXPECT_EQ((*got)[0].to_vector<double>(), want_a);
    EXPECT_EQ((*got)[1].to_vector<double>(), want_r);
    EXPECT_NEAR((*got)[2].item(), want_out, 1e-12);
    EXPECT_EQ((*got)[3].to_vector<double>(), std::vector<double>(4, 0.5)) << "the Variable was overwritten";
  }
  EXPECT_EQ(bound_on.to_vector<double>(), want_e);
  EXPECT_EQ(bound_off.to_vector<double>(), want_e);
  EXPECT_EQ(on[2].item(), off[2].item());
}

TEST(MemoryPlan, PlanCacheEvictsTheLeastRecentlyUsedAndRecompilesCorrectly) {
  Graph g;
  Value x = g.placeholder("x", DType::F64, Shape{-1, 3});
  Value y = ops::sum(ops::square(ops::add_scalar(x, 1)), {1});
  Session s(g);
  EXPECT_EQ(s.plan_cache_capacity(), Session::kDefaultPlanCache);
  EXPECT_THROW(s.set_plan_cache_capacity(0), Error);
  s.set_plan_cache_capacity(3);
  auto input = [](i64 n) {
    std::vector<double> v(size_t(n * 3));
    for (size_t i = 0; i < v.size(); ++i) v[i] = double(i) * 0.5 - double(n);
    return Tensor::from_vector<double>(v, Shape{n, 3});
  };
  auto check = [&](i64 n) {
    const Tensor in = input(n);
    const std::vector<double> v = in.to_vector<double>();
    const std::vector<double> got = s.run({y}, {{x, in}})[0].to_vector<double>();
    ASSERT_EQ(got.size(), size_t(n));
    for (i64 i = 0; i < n; ++i) {
      double want = 0;
      for (int j = 0; j < 3; ++j) want += (v[size_t(i * 3 + j)] + 1) * (v[size_t(i * 3 + j)] + 1);
      EXPECT_EQ(got[size_t(i)], want) << "batch " << n << " row " << i;
    }
  };
  const Tensor kept = s.run({y}, {{x, input(1)}})[0];  // outlives its plan's eviction
  const std::vector<double> kept_values = kept.to_vector<double>();
  for (i64 n = 1; n <= 8; ++n) {
    check(n);
    EXPECT_EQ(s.plans_cached(), size_t(std::min<i64>(n, 3)));
  }
  EXPECT_EQ(s.plans_compiled(), 8u);
  EXPECT_EQ(s.plans_evicted(), 5u);
  EXPECT_EQ(kept.to_vector<double>(), kept_values) << "a fetched tensor died with its evicted plan";
  check(7);  // still cached: no compilation, and 7 becomes the most recently used
  EXPECT_EQ(s.plans_compiled(), 8u);
  check(1);  // evicted long ago: compiled again (evicting 6, the least recently used)
  EXPECT_EQ(s.plans_compiled(), 9u);
  check(7);
  check(8);
  EXPECT_EQ(s.plans_compiled(), 9u);
  check(6);
  EXPECT_EQ(s.plans_compiled(), 10u);
  EXPECT_EQ(s.plans_cached(), 3u);
  s.set_plan_cache_capacity(1);  // shrinking evicts down to the new capacity
  EXPECT_EQ(s.plans_cached(), 1u);
  check(6);
  EXPECT_EQ(s.plans_compiled(), 10u);
}

// A cached training step (forward, backward, updates) allocates nothing, with the planner on.
TEST(MemoryPlan, CachedTrainingStepAllocatesNothing) {
  for (const char* model : {"mlp", "cnn"}) {
    Graph g(3);
    const Model m = build_model(g, model, DType::F32);
    const TrainOp t = minimize(m.loss, OptimizerConfig{});
    Session s(g);
    ASSERT_TRUE(s.memory_reuse());
    s.run({}, {}, g.initializers());
    Tensor images(Shape{8, 1, 28, 28}, DType::F32), labels(Shape{8}, DType::I32);
    Tensor hyper = Tensor::from_vector<double>({0.01, 1}, Shape{2});
    fill_batch(images, labels, 0);
    const std::vector<Session::Feed> feeds{{m.images, images}, {m.labels, labels}, {t.hyper, hyper}};
    const std::vector<Value> fetches{m.loss, m.logits};
    s.run(fetches, feeds, t.updates);
    s.run(fetches, feeds, t.updates);  // kernels' own first-use scratch, if any, is made by now
    Allocator& alloc = allocator_for(Device::cpu());
    const size_t before = alloc.system_allocations(), compiled = s.plans_compiled();
    for (int i = 0; i < 10; ++i) s.run(fetches, feeds, t.updates);
    EXPECT_EQ(alloc.system_allocations(), before) << model << ": a cached training step allocated memory";
    EXPECT_EQ(s.plans_compiled(), compiled);
  }
}
