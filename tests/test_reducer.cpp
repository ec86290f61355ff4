// The gradient Reducer: buckets in reverse forward order, gradients written in place into the
// fusion buffers, averaged across ranks, and the first allreduce launched before the backward
// pass ends; the fused update against allreduce-then-update. Runs at world size 1 in the plain
// suite and under mpiexec -np 2 (ctest reducer_np2).
#include <gtest/gtest.h>

#include <cmath>
#include <chrono>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

#include "autodiff/optimizer.h"
#include "collective/reducer.h"
#include "collective/replicas.h"
#include "models/models.h"
#include "runtime/session.h"

using namespace rf;
using namespace rf::collective;

namespace {
// A batch that differs per rank, so the average is not any single rank's gradient.
void fill_batch(Tensor& x, Tensor& y, int rank) {
  float* px = x.data<float>();
  for (i64 i = 0; i < x.numel(); ++i) px[i] = float((i * 37 + rank * 11) % 255) / 255.0f;
  int32_t* py = y.data<int32_t>();
  for (i64 i = 0; i < y.numel(); ++i) py[i] = int32_t((i + rank * 3) % 10);
}
// The MLP with an optimizer (default: momentum SGD 0.9), its initialised sessions and a feed
// list for batches of 16 (fill x and y, and hyper = {lr, step}, before each step), as every rank
// builds them.
struct MlpStep {
  explicit MlpStep(const OptimizerConfig& oc = {}) : t(minimize(m.loss, oc)) {}
  Graph g{3};
  Model m = build_model(g, "mlp");
  TrainOp t;
  Tensor x{Shape{16, 1, 28, 28}, DType::F32}, y{Shape{16}, DType::I32};
  Tensor hyper = Tensor::from_vector<double>({0.1, 1.0}, Shape{2});
  std::vector<Session::Feed> feeds{{m.images, x}, {m.labels, y}, {t.hyper, hyper}};
  std::unique_ptr<Session> session() {
    auto s = std::make_unique<Session>(g);
    s->run({}, {}, g.initializers());
    return s;
  }
};
constexpr const char* kNeedsTwo = "the fused update needs two ranks (ctest reducer_np2 runs this at np=2)";
constexpr const char* kNeedsOneNode =
    "the fused update needs every rank on one node; this job spans several (FuseOnNamesWhatPreventsIt covers it)";

// The ring communicator, an initialised MLP session and --fuse-update on, for the fused tests.
struct FusedOn {
  std::unique_ptr<Communicator> comm = make_communicator("ring");
  MlpStep p;
  std::unique_ptr<Session> s = p.session();
  ReducerOptions ro = [] {
    ReducerOptions o;
    o.fuse = ReducerOptions::Fuse::On;
    return o;
  }();
};
}  // namespace

TEST(Reducer, BucketsOverlapBackwardAndAverageGradients) {
  auto comm = make_communicator("ring");
  const int rank = comm->rank(), world = comm->size();
  Graph g(3);
  const Model m = build_model(g, "mlp");
  OptimizerConfig oc;
  oc.kind = OptimizerConfig::Kind::SGD;
  const TrainOp t = minimize(m.loss, oc);
  Session plain(g), dp(g);
  for (Session* s : {&plain, &dp}) s->run({}, {}, g.initializers());

  ReducerOptions ro;
  ro.bucket_mb = 0.3;  // fc1.weight (784 KiB) alone, then the rest: several buckets
  ro.first_bucket_mb = 0.05;
  ro.fuse = ReducerOptions::Fuse::Off;  // the allreduce path: the buffers end up averaged
  Reducer reducer(*comm, dp, t.vars, t.grads, ro);
  ASSERT_GE(reducer.buckets().size(), 3u);
  // Reverse forward order: the first bucket holds the last layer's gradients.
  EXPECT_EQ(g.node(t.vars[size_t(reducer.buckets()[0].grads[0])]).name, "fc3.bias");
  EXPECT_EQ(reducer.bytes_per_step(), size_t(784 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10) * 4);

  Tensor x(Shape{16, 1, 28, 28}, DType::F32), y(Shape{16}, DType::I32);
  fill_batch(x, y, rank);
  Tensor hyper = Tensor::from_vector<double>({0.0, 1.0}, Shape{2});  // lr 0: Variables stay put
  const std::vector<Session::Feed> feeds{{m.images, x}, {m.labels, y}, {t.hyper, hyper}};
  dp.run({m.loss}, feeds, t.updates, &reducer.run_options());

  const auto& times = reducer.last_step();
  EXPECT_GE(times.first_launch, 0);
  EXPECT_LT(times.first_launch, times.backward_done) << "first bucket's allreduce did not start during backward";

  // Expected: the mean over ranks of each rank's own gradient (computed without the Reducer).
  std::vector<float> expect;
  for (int r = 0; r < world; ++r) {
    fill_batch(x, y, r);
    const auto& out = plain.run(t.grads, {{m.images, x}, {m.labels, y}});
    std::vector<float> flat;
    for (const Reducer::Bucket& b : reducer.buckets())
      for (int k : b.grads) {
        const auto v = out[size_t(k)].to_vector<float>();
        flat.insert(flat.end(), v.begin(), v.end());
      }
    if (expect.empty()) expect.assign(flat.size(), 0.0f);
    for (size_t i = 0; i < flat.size(); ++i) expect[i] += flat[i] / float(world);
  }
  size_t i = 0;
  double worst = 0;
  for (const Reducer::Bucket& b : reducer.buckets())
    for (float v : b.buffer.to_vector<float>()) worst = std::max(worst, double(std::fabs(v - expect[i++])));
  EXPECT_LT(worst, 1e-6) << "averaged gradients differ from the mean of per-rank gradients";
}

// clip_by_global_norm after the exchange: the norm is that of the averaged gradient (the same
// on every rank), and the update applies the clipped average. Were the clip's nodes run before
// the buckets are reduced, each rank would clip its own gradient by its own norm.
TEST(Reducer, ClipByGlobalNormReadsTheExchangedGradients) {
  auto comm = make_communicator("ring");
  const int rank = comm->rank(), world = comm->size();
  Graph g(3);
  const Model m = build_model(g, "mlp");
  OptimizerConfig oc;
  oc.kind = OptimizerConfig::Kind::SGD;
  oc.clip_norm = 0.05;  // far below the gradient's norm: the clip acts
  const TrainOp t = minimize(m.loss, oc);
  ASSERT_TRUE(t.grad_norm.valid());
  Session plain(g), dp(g);
  for (Session* s : {&plain, &dp}) s->run({}, {}, g.initializers());
  ReducerOptions ro;
  ro.bucket_mb = 0.3;
  ro.first_bucket_mb = 0.05;
  Reducer reducer(*comm, dp, t.vars, t.grads, ro);  // fuse auto: the updates read clipped values, so allreduce
  EXPECT_FALSE(reducer.fused());

  Tensor x(Shape{16, 1, 28, 28}, DType::F32), y(Shape{16}, DType::I32);
  // Expected: the mean over ranks of each rank's own gradient, its norm, the clipped SGD step.
  std::vector<std::vector<double>> mean(t.vars.size());
  for (int r = 0; r < world; ++r) {
    fill_batch(x, y, r);
    const auto& out = plain.run(t.grads, {{m.images, x}, {m.labels, y}});
    for (size_t k = 0; k < t.vars.size(); ++k) {
      const auto v = out[k].to_vector<float>();
      mean[k].resize(v.size(), 0.0);
      for (size_t i = 0; i < v.size(); ++i) mean[k][i] += double(v[i]) / world;
    }
  }
  double sq = 0;
  for (const auto& gk : mean)
    for (double v : gk) sq += v * v;
  const double norm = std::sqrt(sq), scale = std::min(1.0, oc.clip_norm / (norm + 1e-6)), lr = 0.5;
  ASSERT_LT(scale, 0.5);
  std::vector<std::vector<float>> before;
  for (int id : t.vars) before.push_back(dp.variable(id).to_vector<float>());

  fill_batch(x, y, rank);
  Tensor hyper = Tensor::from_vector<double>({lr, 1.0}, Shape{2});
  const std::vector<Session::Feed> feeds{{m.images, x}, {m.labels, y}, {t.hyper, hyper}};
  const double got_norm = dp.run({t.grad_norm}, feeds, t.updates, &reducer.run_options())[0].item();
  EXPECT_NEAR(got_norm, norm, 1e-5 * norm) << "rank " << rank << " clipped by a norm other than the averaged gradient's";
  double worst = 0;
  for (size_t k = 0; k < t.vars.size(); ++k) {
    const auto after = dp.variable(t.vars[k]).to_vector<float>();
    for (size_t i = 0; i < after.size(); ++i)
      worst = std::max(worst, std::fabs(double(after[i]) - (double(before[k][i]) - lr * scale * mean[k][i])));
  }
  EXPECT_LT(worst, 1e-6) << "the update is not the clipped average gradient's";
}

// The fused update (each update averages every rank's gradient, read in place from the shared
// window) against allreduce-then-update on a second communicator: the same bits in every
// Variable and optimizer slot after several steps with per-rank batches, on every rank, for
// momentum SGD and for AdamW with weight decay.
class FusedVsAllreduce : public ::testing::TestWithParam<OptimizerConfig::Kind> {};
TEST_P(FusedVsAllreduce, BitIdenticalAfterSteps) {
  auto comm_a = make_communicator("ring");
  auto comm_b = make_communicator("ring");
  const int rank = comm_a->rank(), world = comm_a->size();
  if (world == 1) GTEST_SKIP() << kNeedsTwo;
  if (!comm_a->peer_window()) GTEST_SKIP() << kNeedsOneNode;
  OptimizerConfig oc;
  oc.kind = GetParam();
  if (oc.kind == OptimizerConfig::Kind::AdamW) oc.weight_decay = 0.01;
  MlpStep p(oc);
  auto sa = p.session(), sb = p.session();
  const TrainOp& t = p.t;
  ReducerOptions ro;
  ro.bucket_mb = 0.3;  // several buckets, so updates wait for each in turn
  ro.first_bucket_mb = 0.05;
  ro.fuse = ReducerOptions::Fuse::Off;
  Reducer ra(*comm_a, *sa, t.vars, t.grads, ro);
  ro.fuse = ReducerOptions::Fuse::On;
  Reducer rb(*comm_b, *sb, t.vars, t.grads, ro);
  EXPECT_FALSE(ra.fused());
  ASSERT_TRUE(rb.fused());

  for (int step = 0; step < 4; ++step) {
    fill_batch(p.x, p.y, rank + world * step);
    p.hyper.data<double>()[1] = step + 1;
    sa->run({p.m.loss}, p.feeds, t.updates, &ra.run_options());
    sb->run({p.m.loss}, p.feeds, t.updates, &rb.run_options());
  }
  for (int id : p.g.variables()) {
    const Tensor& a = sa->variable(id);
    const Tensor& b = sb->variable(id);
    ASSERT_EQ(a.numel(), b.numel());
    EXPECT_EQ(std::memcmp(a.raw(), b.raw(), size_t(a.numel()) * dtype_size(a.dtype())), 0)
        << "Variable '" << p.g.node(id).name << "' differs between the fused update and allreduce-then-update";
  }
  EXPECT_NO_THROW(check_replicas(*sb, *comm_b, 4));
  // Each rank's gradients are read by the other ranks once per step.
  EXPECT_EQ(rb.bytes_sent_last_step(), size_t(world - 1) * rb.bytes_per_step());
}
INSTANTIATE_TEST_SUITE_P(Reducer, FusedVsAllreduce,
                         ::testing::Values(OptimizerConfig::Kind::Momentum, OptimizerConfig::Kind::AdamW));

// A step that skips the updates (here: fetching gradients only) cannot hand the window back to
// the peers; the next step stops on every rank with the reason instead of waiting forever.
TEST(Reducer, FusedStepWithoutUpdatesStopsTheNextStep) {
  FusedOn f;
  auto& [comm, p, s, ro] = f;
  if (comm->size() == 1) GTEST_SKIP() << kNeedsTwo;
  if (!comm->peer_window()) GTEST_SKIP() << kNeedsOneNode;
  Reducer r(*comm, *s, p.t.vars, p.t.grads, ro);
  fill_batch(p.x, p.y, comm->rank());
  s->run({p.m.loss}, p.feeds, p.t.updates, &r.run_options());
  s->run(p.t.grads, {{p.m.images, p.x}, {p.m.labels, p.y}}, {}, &r.run_options());  // no updates
  try {
    s->run({p.m.loss}, p.feeds, p.t.updates, &r.run_options());
    FAIL() << "a step after one without updates ran";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without all of its update ops"), std::string::npos) << e.what();
  }
}

// A fused Reducer's last step: a peer may still be averaging from this rank's window when the
// Reducer goes away; the next one must not overwrite the window before it is done (rank 1's last
// updates are slowed down to make that window wide). The replicas then still agree.
TEST(Reducer, FusedReducerLetsPeersFinishBeforeItsWindowIsReused) {
  FusedOn f;
  auto& [comm, p, s, ro] = f;
  const int rank = comm->rank(), world = comm->size();
  if (world == 1) GTEST_SKIP() << kNeedsTwo;
  if (!comm->peer_window()) GTEST_SKIP() << kNeedsOneNode;
  {
    Reducer r(*comm, *s, p.t.vars, p.t.grads, ro);
    RunOptions slow = r.run_options();
    slow.before_update = [&, inner = slow.before_update](int node) {
      inner(node);
      if (rank == 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    };
    for (int step = 0; step < 2; ++step) {
      fill_batch(p.x, p.y, rank + world * step);
      s->run({p.m.loss}, p.feeds, p.t.updates, step == 1 ? &slow : &r.run_options());
    }
  }
  Reducer next(*comm, *s, p.t.vars, p.t.grads, ro);  // zeroes this rank's window
  EXPECT_NO_THROW(check_replicas(*s, *comm, 2));
}

// A run that computes the gradients without the fused Reducer's options would overwrite them
// while a peer may still be averaging them: refused on every rank, the same way.
TEST(Reducer, FusedRefusesAGradientRunWithoutItsOptions) {
  FusedOn f;
  auto& [comm, p, s, ro] = f;
  if (comm->size() == 1) GTEST_SKIP() << kNeedsTwo;
  if (!comm->peer_window()) GTEST_SKIP() << kNeedsOneNode;
  Reducer r(*comm, *s, p.t.vars, p.t.grads, ro);
  fill_batch(p.x, p.y, comm->rank());
  s->run({p.m.loss}, p.feeds, p.t.updates, &r.run_options());
  EXPECT_NO_THROW(s->run({p.m.loss}, {{p.m.images, p.x}, {p.m.labels, p.y}}));  // forward only: no gradient
  try {
    s->run(p.t.grads, {{p.m.images, p.x}, {p.m.labels, p.y}});
    FAIL() << "a gradient run without the Reducer's options was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without its run_options()"), std::string::npos) << e.what();
  }
  s->run({p.m.loss}, p.feeds, p.t.updates, &r.run_options());  // the next full step still runs
  EXPECT_NO_THROW(check_replicas(*s, *comm, 2));
}

// --fuse-update on where it cannot run says why: the mpi backend has no shared window, nor has
// the ring when the job spans several nodes (then auto leaves the exchange to the allreduce).
TEST(Reducer, FuseOnNamesWhatPreventsIt) {
  auto mpi = make_communicator("mpi");
  auto ring = make_communicator("ring");
  if (mpi->size() == 1) GTEST_SKIP() << "nothing is reduced at world size 1";
  MlpStep p;
  Session s(p.g);
  for (Communicator* comm : {mpi.get(), ring.get()}) {
    if (comm->peer_window()) continue;  // the ring on one node fuses (FusedVsAllreduce)
    ReducerOptions ro;
    ro.fuse = ReducerOptions::Fuse::On;
    try {
      Reducer r(*comm, s, p.t.vars, p.t.grads, ro);
      ADD_FAILURE() << "--fuse-update on was accepted with " << comm->name();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("one node with the ring backend"), std::string::npos) << e.what();
    }
    ro.fuse = ReducerOptions::Fuse::Auto;
    Reducer r(*comm, s, p.t.vars, p.t.grads, ro);
    EXPECT_FALSE(r.fused()) << comm->name();
  }
}

// The fused update counts one update a Variable a step: a graph with a second optimizer over the
// same Variables is refused by --fuse-update on (and left to the allreduce by auto), not fused into
// steps that each throw.
TEST(Reducer, FuseOnRefusesTwoUpdatesOfAVariable) {
  FusedOn f;
  auto& [comm, p, s, ro] = f;
  if (comm->size() == 1) GTEST_SKIP() << kNeedsTwo;
  if (!comm->peer_window()) GTEST_SKIP() << kNeedsOneNode;
  const Value first{&p.g, p.t.vars[0], 0};  // a second update op for the first Variable
  (void)p.g.add(Op::ApplySGD, {first, p.t.grads[0], p.t.hyper}, Attrs{}, "second/update");
  try {
    Reducer r(*comm, *s, p.t.vars, p.t.grads, ro);
    FAIL() << "--fuse-update on was accepted with two update ops a Variable";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than one update op"), std::string::npos) << e.what();
  }
  ro.fuse = ReducerOptions::Fuse::Auto;
  Reducer r(*comm, *s, p.t.vars, p.t.grads, ro);
  EXPECT_FALSE(r.fused());
}

TEST(Replicas, BroadcastAlignsAndCheckNamesTheDivergedVariable) {
  auto comm = make_communicator("ring");
  Graph g(7);
  Value w = g.variable("layer.weight", Shape{4, 3}, DType::F32, Initializer::normal(0, 1));
  Value b = g.variable("layer.bias", Shape{3}, DType::F32, Initializer::zeros());
  (void)w;
  (void)b;
  Session s(g);
  s.run({}, {}, g.initializers());
  // Each rank perturbs its copy, then rank 0's values are broadcast: all agree again.
  s.variable("layer.weight").data<float>()[5] += float(comm->rank());
  broadcast_variables(s, *comm);
  EXPECT_NO_THROW(check_replicas(s, *comm, 3));
  // A NaN on every rank is the training diverging, not the replicas (NaN never equals itself).
  const float kept = s.variable("layer.weight").data<float>()[2];
  s.variable("layer.weight").data<float>()[2] = std::numeric_limits<float>::quiet_NaN();
  try {
    check_replicas(s, *comm, 9);
    FAIL() << "a NaN Variable passed the replica check";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("training diverged by step 9: Variable 'layer.weight' is not finite"),
              std::string::npos)
        << e.what();
  }
  s.variable("layer.weight").data<float>()[2] = kept;
  if (comm->size() == 1) GTEST_SKIP() << "divergence needs two ranks (ctest reducer_np2 runs this at np=2)";
  if (comm->rank() == 1) s.variable("layer.bias").data<float>()[1] = 0.5f;
  try {
    check_replicas(s, *comm, 42);
    FAIL() << "diverged replicas were not detected";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step 42"), std::string::npos) << msg;
    EXPECT_NE(msg.find("layer.bias"), std::string::npos) << msg;
  }
}
