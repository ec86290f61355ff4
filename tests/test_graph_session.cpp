// Graph building, shape inference errors, Session feeds/fetches/targets, the plan cache,
// Variables and their initialisation, and steady-state allocation.
#include <gtest/gtest.h>

#include <cmath>

#include "autodiff/gradients.h"
#include "runtime/ops.h"
#include "runtime/session.h"

using namespace rf;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
// Feeding a placeholder that the fetches do not need is allowed (as in TensorFlow) and ignored;
// it used to index the plan's values at -1.
TEST(Session, AFeedTheFetchesDoNotNeedIsIgnored) {
  Graph g;
  const Value a = g.placeholder("a", DType::F32, Shape{2});
  const Value b = g.placeholder("b", DType::F32, Shape{2});
  const Value y = ops::mul_scalar(a, 2.0);
  (void)ops::add(a, b);
  Session s(g);
  const auto& out = s.run({y}, {{a, Tensor::from_vector<float>({1, 2}, Shape{2})}, {b, Tensor::from_vector<float>({5, 6}, Shape{2})}});
  EXPECT_EQ(out[0].to_vector<float>(), (std::vector<float>{2, 4}));
}

}  // namespace

TEST(Graph, ShapeInferenceAtAddTime) {
  Graph g;
  Value x = g.placeholder("x", DType::F32, Shape{-1, 784});
  Value w = g.variable("w", Shape{256, 784}, DType::F32, Initializer::zeros());
  Value y = ops::matmul(x, w, false, true);
  EXPECT_EQ(g.spec(y).shape, (Shape{-1, 256}));
  Value s = ops::sum(y, {1}, true);
  EXPECT_EQ(g.spec(s).shape, (Shape{-1, 1}));
  Value r = ops::reshape(ops::flatten(g.placeholder("img", DType::F32, Shape{-1, 1, 28, 28})), Shape{-1, 28, 28});
  EXPECT_EQ(g.spec(r).shape, (Shape{-1, 28, 28}));
}

TEST(Graph, BadShapeIsAnErrorNamingTheNode) {
  Graph g;
  Value a = g.placeholder("a", DType::F32, Shape{4, 3});
  Value b = g.placeholder("b", DType::F32, Shape{5, 2});
  const std::string msg = error_of([&] { ops::matmul(a, b, false, false, "bad_mm"); });
  EXPECT_NE(msg.find("bad_mm"), std::string::npos) << msg;
  EXPECT_NE(msg.find("inner dimensions"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { ops::add(a, b, "bad_add"); }).find("bad_add"), std::string::npos);
  EXPECT_NE(error_of([&] { ops::reshape(a, Shape{5, -1}, "bad_reshape"); }).find("bad_reshape"), std::string::npos);
}

TEST(Graph, DuplicateNamesAndForeignValuesAreRejected) {
  Graph g, h;
  g.placeholder("x", DType::F32, Shape{2});
  EXPECT_THROW(g.placeholder("x", DType::F32, Shape{2}), Error);
  Value y = h.placeholder("y", DType::F32, Shape{2});
  EXPECT_THROW(g.add(Op::Neg, {y}), Error);
  EXPECT_THROW(g.add(Op::Add, {g.placeholder("z", DType::F32, Shape{2})}), Error);  // input count
}

TEST(Session, FeedsAndFetches) {
  Graph g;
  Value x = g.placeholder("x", DType::F64, Shape{-1, 3});
  Value c = g.constant(Tensor::from_vector<double>({1, 2, 3}, Shape{3}));
  Value y = ops::mul(ops::add(x, c), ops::add_scalar(x, 1.0));
  Session s(g);
  Tensor in = Tensor::from_vector<double>({0, 1, 2, 3, 4, 5}, Shape{2, 3});
  const auto& out = s.run({y}, {{x, in}});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].shape(), (Shape{2, 3}));
  const std::vector<double> v = out[0].to_vector<double>();
  const std::vector<double> want = {(0 + 1) * 1.0, (1 + 2) * 2.0, (2 + 3) * 3.0, (3 + 1) * 4.0, (4 + 2) * 5.0, (5 + 3) * 6.0};
  for (size_t i = 0; i < 6; ++i) EXPECT_DOUBLE_EQ(v[i], want[i]);
}

TEST(Session, MissingFeedWrongShapeAndWrongDtypeAreErrors) {
  Graph g;
  Value x = g.placeholder("x", DType::F32, Shape{-1, 3});
  Value y = ops::relu(x);
  Session s(g);
  EXPECT_NE(error_of([&] { s.run({y}); }).find("'x' must be fed"), std::string::npos);
  EXPECT_NE(error_of([&] { s.run({y}, {{x, Tensor(Shape{2, 4}, DType::F32)}}); }).find("expects [?,3]"),
            std::string::npos);
  EXPECT_NE(error_of([&] { s.run({y}, {{x, Tensor(Shape{2, 3}, DType::F64)}}); }).find("F64"), std::string::npos);
  EXPECT_NE(error_of([&] { s.run({y}, {{y, Tensor(Shape{2, 3}, DType::F32)}}); }).find("Placeholders"),
            std::string::npos);
}

TEST(Session, PlanIsCachedPerSignatureAndRunsWithoutAllocating) {
  Graph g;
  Value x = g.placeholder("x", DType::F32, Shape{-1, 8});
  Value w = g.variable("w", Shape{8, 8}, DType::F32, Initializer::glorot_uniform());
  Value y = ops::sum(ops::tanh(ops::matmul(x, w)));
  Session s(g);
  s.run({}, {}, g.initializers());
  Tensor a = Tensor::zeros(Shape{4, 8}, DType::F32), b = Tensor::zeros(Shape{5, 8}, DType::F32);
  s.run({y}, {{x, a}});
  const size_t compiled = s.plans_compiled();
  Allocator& alloc = allocator_for(Device::cpu());
  const size_t before = alloc.system_allocations();
  for (int i = 0; i < 10; ++i) s.run({y}, {{x, a}});
  EXPECT_EQ(alloc.system_allocations(), before) << "a cached plan allocated memory";
  EXPECT_EQ(s.plans_compiled(), compiled);
  s.run({y}, {{x, b}});  // new batch size: a new plan
  EXPECT_EQ(s.plans_compiled(), compiled + 1);
  s.run({y}, {{x, a}});
  EXPECT_EQ(s.plans_compiled(), compiled + 1);
}

TEST(Session, ReadingAnUninitialisedVariableNamesIt) {
  Graph g;
  Value w = g.variable("layer.weight", Shape{2, 2}, DType::F32, Initializer::constant(3));
  Value y = ops::square(w);
  Session s(g);
  const std::string msg = error_of([&] { s.run({y}); });
  EXPECT_NE(msg.find("layer.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("initialis"), std::string::npos) << msg;
  s.run({}, {}, g.initializers());
  EXPECT_EQ(s.run({y})[0].to_vector<float>(), std::vector<float>(4, 9.0f));
}

TEST(Session, InitialisersAreSeededByNameAndDeterministic) {
  auto values = [](uint64_t seed, bool extra_first) {
    Graph g(seed);
    if (extra_first) g.variable("other", Shape{10}, DType::F32, Initializer::normal(0, 1));
    Value w = g.variable("w", Shape{64, 32}, DType::F32, Initializer::he_normal());
    Session s(g);
    s.run({}, {}, g.initializers());
    return s.run({w})[0].to_vector<float>();
  };
  const auto a = values(7, false), b = values(7, true), c = values(8, false);
  EXPECT_EQ(a, b) << "creation order changed a variable's initial values";
  EXPECT_NE(a, c);
  double sq = 0;
  for (float v : a) sq += double(v) * v;
  const double stddev = std::sqrt(sq / double(a.size()));
  EXPECT_NEAR(stddev, std::sqrt(2.0 / 32), 0.02);  // he_normal: sqrt(2 / fan_in)
}

TEST(Session, TargetsRunUpdatesAfterEveryRead) {
  // w is read by y (fetched) and updated in the same run: the fetch sees the old value.
  Graph g;
  Value w = g.variable("w", Shape{3}, DType::F64, Initializer::constant(1.0));
  Value loss = ops::sum(ops::square(w));
  auto grads = gradients(loss, {w});
  Value hyper = g.placeholder("hyper", DType::F64, Shape{2});
  Attrs a;
  Value upd = g.add(Op::ApplySGD, {w, grads[0], hyper}, a);
  Session s(g);
  s.run({}, {}, g.initializers());
  Tensor h = Tensor::from_vector<double>({0.25, 1}, Shape{2});
  const double before = s.run({loss}, {{hyper, h}}, {upd})[0].item();
  EXPECT_DOUBLE_EQ(before, 3.0);
  // w <- w - 0.25 * 2w = 0.5
  EXPECT_EQ(s.variable("w").to_vector<double>(), std::vector<double>(3, 0.5));
}

TEST(Session, MatMulWithAnEmptyInnerDimensionIsZeros) {
  // [3, 0] x [0, 4]: a sum over nothing, as in NumPy and PyTorch; BLAS wants ld >= 1 for the
  // empty rows, which the kernel must not pass on as an error.
  for (bool tb : {false, true}) {
    Graph g;
    Value x = g.placeholder("x", DType::F32, Shape{3, 0});
    Value w = g.placeholder("w", DType::F32, tb ? Shape{4, 0} : Shape{0, 4});
    Value y = ops::matmul(x, w, false, tb);
    const auto grads = gradients(ops::sum(y), {x, w});
    Session s(g);
    const Tensor xe(Shape{3, 0}, DType::F32), we(tb ? Shape{4, 0} : Shape{0, 4}, DType::F32);
    const auto& got = s.run({y, grads[0], grads[1]}, {{x, xe}, {w, we}});
    EXPECT_EQ(got[0].shape(), (Shape{3, 4}));
    EXPECT_EQ(got[0].to_vector<float>(), std::vector<float>(12, 0.f)) << "tb=" << tb;
    EXPECT_EQ(got[1].shape(), (Shape{3, 0}));
    EXPECT_EQ(got[2].numel(), 0);
  }
}

TEST(Session, BoundOutputsAreWrittenInPlace) {
  // Two gradients written straight into slots of one flat buffer, as the Reducer's buckets do.
  Graph g;
  Value x = g.placeholder("x", DType::F64, Shape{-1, 3});
  Value w = g.variable("w", Shape{3, 2}, DType::F64, Initializer::constant(0.5));
  Value b = g.variable("b", Shape{2}, DType::F64, Initializer::constant(0.25));
  Value loss = ops::sum(ops::square(ops::bias_add(ops::matmul(x, w), b)));
  const auto grads = gradients(loss, {w, b});
  Session plain(g), bound(g);
  for (Session* s : {&plain, &bound}) s->run({}, {}, g.initializers());
  Tensor flat = Tensor::zeros(Shape{8}, DType::F64);
  bound.bind_output(grads[0], flat.slice(0, Shape{6}));
  bound.bind_output(grads[1], flat.slice(6, Shape{2}));
  Tensor in = Tensor::from_vector<double>({1, 2, 3, -1, 0.5, 2}, Shape{2, 3});
  const auto want_w = plain.run({grads[0]}, {{x, in}})[0].to_vector<double>();
  const auto want_b = plain.run({grads[1]}, {{x, in}})[0].to_vector<double>();
  const auto& got = bound.run({grads[0], grads[1]}, {{x, in}});
  EXPECT_TRUE(got[0].same_storage(flat));
  std::vector<double> expect = want_w;
  expect.insert(expect.end(), want_b.begin(), want_b.end());
  EXPECT_EQ(flat.to_vector<double>(), expect);
  bound.bind_output(grads[0], Tensor::zeros(Shape{5}, DType::F64));
  EXPECT_THROW(bound.run({grads[0]}, {{x, in}}), Error);  // the size is checked when the plan compiles
  EXPECT_THROW(bound.bind_output(x, flat), Error);         // a placeholder computes nothing
}
