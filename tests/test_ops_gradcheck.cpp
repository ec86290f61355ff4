// Per-op tests of every differentiable forward op: the forward value against a plain reference
// computed here with straightforward loops in double precision, and the gradient built by
// gradients() against central finite differences of the same graph, all in float64 on the CPU.
//
// The shared machinery is check_op(): it feeds random F64 Placeholders (std::mt19937, fixed
// seed), builds the op, forms loss = sum(out * R) with a fixed random Const R (so every output
// element matters), runs {out, loss, d loss / d inputs} once and then the loss alone at
// x +- h for every element of every differentiated input, reusing one Session (the plan of the
// loss-only signature is compiled once and cached).
//
// Non-smooth points are avoided by the input distributions (see In below):
//   Relu        inputs are +-[0.05, 1] (never within 0.05 >> h of the kink at 0);
//   MaxPool2D   inputs are a shuffled grid with spacing 0.05 >> 2h, so no two elements of a window
//               tie and a perturbation of h never changes the argmax;
//   Log, Sqrt, PowScalar, Div's denominator   kept in [0.5, 2] (or +-[0.5, 2]) away from 0.
// Every other op is smooth everywhere.
#include <gtest/gtest.h>

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "autodiff/gradients.h"
#include "runtime/error.h"
#include "runtime/graph.h"
#include "runtime/ops.h"
#include "runtime/session.h"
#include "tests/gradcheck_util.h"

namespace {

using namespace rf_gradcheck;

// ---------------------------------------------------------------------------------------------
// Per-op tests
// ---------------------------------------------------------------------------------------------

TEST(OpsGradcheck, MatMulAllTransposeCombinations) {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const Shape as = ta ? Shape{4, 3} : Shape{3, 4}, bs = tb ? Shape{5, 4} : Shape{4, 5};
      check_op("MatMul ta=" + std::to_string(ta) + " tb=" + std::to_string(tb), {U(as), U(bs)},
               [=](const Values& x) { return ops::matmul(x[0], x[1], ta, tb); }, Shape{3, 5},
               [=](const std::vector<Vec>& v) { return ref_matmul(v[0], as, v[1], bs, ta, tb); });
    }
}

// Add, Sub, Mul, Div on one pair of shapes; Div's denominator is kept in +-[0.5, 2].
void check_binary_family(const Shape& as, const Shape& bs, const Shape& ys) {
  struct B {
    const char* name;
    Value (*build)(Value, Value, const std::string&);
    double (*f)(double, double);
  };
  const B table[] = {
      {"Add", ops::add, [](double a, double b) { return a + b; }},
      {"Sub", ops::sub, [](double a, double b) { return a - b; }},
      {"Mul", ops::mul, [](double a, double b) { return a * b; }},
      {"Div", ops::div, [](double a, double b) { return a / b; }},
  };
  for (const B& op : table) {
    const In b = std::string(op.name) == "Div" ? NonZero(bs, 0.5, 2.0) : U(bs);
    check_op(std::string(op.name) + " " + as.str() + " op " + bs.str(), {U(as), b},
             [=](const Values& x) { return op.build(x[0], x[1], ""); }, ys,
             [=](const std::vector<Vec>& v) { return ref_binary(v[0], as, v[1], bs, ys, op.f); });
  }
}

TEST(OpsGradcheck, BinarySameShape) { check_binary_family({2, 3, 4}, {2, 3, 4}, {2, 3, 4}); }
TEST(OpsGradcheck, BinaryBroadcastRightOperand) {
  check_binary_family({2, 3, 4}, {3, 1}, {2, 3, 4});
  check_binary_family({2, 3, 4}, {4}, {2, 3, 4});
  check_binary_family({2, 3, 4}, {}, {2, 3, 4});  // a scalar operand
}
TEST(OpsGradcheck, BinaryBroadcastLeftOperandAndBoth) {
  check_binary_family({3, 1}, {2, 3, 4}, {2, 3, 4});
  check_binary_family({2, 1, 4}, {1, 3, 1}, {2, 3, 4});  // both operands broadcast
}

TEST(OpsGradcheck, Unary) {
  struct U1 {
    const char* name;
    Value (*build)(Value, const std::string&);
    double (*f)(double);
    In in;
  };
  const Shape s{3, 4, 5};
  const U1 table[] = {
      {"Neg", ops::neg, [](double x) { return -x; }, U(s)},
      {"Exp", ops::exp, [](double x) { return std::exp(x); }, U(s, -2, 2)},
      {"Log", ops::log, [](double x) { return std::log(x); }, Pos(s)},      // positive inputs
      {"Sqrt", ops::sqrt, [](double x) { return std::sqrt(x); }, Pos(s)},   // positive inputs
      {"Square", ops::square, [](double x) { return x * x; }, U(s, -2, 2)},
      {"Relu", ops::relu, [](double x) { return x > 0 ? x : 0.0; }, NonZero(s)},  // |x| >= 0.05
      {"Tanh", ops::tanh, [](double x) { return std::tanh(x); }, U(s, -3, 3)},
      {"Sigmoid", ops::sigmoid, sigmoid_ref, U(s, -4, 4)},
      {"Gelu", ops::gelu, gelu_ref, U(s, -3, 3)},
  };
  for (const U1& op : table)
    check_op(op.name, {op.in}, [=](const Values& x) { return op.build(x[0], ""); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], op.f); });
}

TEST(OpsGradcheck, ScalarOps) {
  const Shape s{4, 6};
  for (double c : {0.5, -1.25}) {
    check_op("AddScalar " + std::to_string(c), {U(s)}, [=](const Values& x) { return ops::add_scalar(x[0], c); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return x + c; }); });
    check_op("MulScalar " + std::to_string(c), {U(s)}, [=](const Values& x) { return ops::mul_scalar(x[0], c); }, s,
             [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return x * c; }); });
  }
  for (double c : {2.0, 3.0, 2.5, 0.5, -1.5})  // positive inputs: every exponent is smooth there
    check_op("PowScalar " + std::to_string(c), {Pos(s)}, [=](const Values& x) { return ops::pow_scalar(x[0], c); },
             s, [=](const std::vector<Vec>& v) { return ref_unary(v[0], [=](double x) { return std::pow(x, c); }); });
}

TEST(OpsGradcheck, SoftmaxAndLogSoftmax) {
  for (const Shape& s : {Shape{3, 5}, Shape{2, 3, 4}, Shape{7}}) {
    check_op("Softmax " + s.str(), {U(s, -3, 3)}, [](const Values& x) { return ops::softmax(x[0]); }, s,
             [=](const std::vector<Vec>& v) { return ref_softmax(v[0], s.dim(-1), false); });
    check_op("LogSoftmax " + s.str(), {U(s, -3, 3)}, [](const Values& x) { return ops::log_softmax(x[0]); }, s,
             [=](const std::vector<Vec>& v) { return ref_softmax(v[0], s.dim(-1), true); });
  }
}

TEST(OpsGradcheck, SparseSoftmaxXent) {
  const i64 N = 4, C = 5;
  for (DType lt : {DType::I32, DType::I64}) {
    const std::string tag = std::string(" labels ") + rf::dtype_name(lt);
    const std::vector<In> ins{U({N, C}, -3, 3), Labels({N}, int(C), lt)};
    // loss[r] = logsumexp(x[r]) - x[r, label[r]]
    check_op("SparseSoftmaxXent loss" + tag, ins,
             [](const Values& x) { return ops::sparse_softmax_cross_entropy(x[0], x[1]); }, Shape{N},
             [=](const std::vector<Vec>& v) {
               const Vec ls = ref_softmax(v[0], C, true);
               Vec y(static_cast<size_t>(N));
               for (i64 r = 0; r < N; ++r) y[size_t(r)] = -ls[size_t(r * C + i64(v[1][size_t(r)]))];
               return y;
             });
    // backprop[r] = softmax(x[r]) - onehot(label[r]) (forward value only: not differentiable)
    check_op("SparseSoftmaxXent backprop" + tag, ins,
             [](const Values& x) {
               const Value l = ops::sparse_softmax_cross_entropy(x[0], x[1]);
               return Value{l.graph, l.node, 1};
             },
             Shape{N, C},
             [=](const std::vector<Vec>& v) {
               Vec y = ref_softmax(v[0], C, false);
               for (i64 r = 0; r < N; ++r) y[size_t(r * C + i64(v[1][size_t(r)]))] -= 1.0;
               return y;
             },
             Opts{.grad = false});
  }
}

TEST(OpsGradcheck, SumAndMean) {
  const Shape xs{2, 3, 4};
  struct R {
    std::vector<int> axes;
    bool keepdims;
    Shape out;
  };
  const R cases[] = {
      {{}, false, Shape{}},          {{}, true, Shape{1, 1, 1}},     {{1}, false, Shape{2, 4}},
      {{1}, true, Shape{2, 1, 4}},   {{0, 2}, false, Shape{3}},      {{0, 2}, true, Shape{1, 3, 1}},
      {{-1}, false, Shape{2, 3}},    {{2, 0}, true, Shape{1, 3, 1}}, {{0, 1, 2}, false, Shape{}},
  };
  for (const R& c : cases)
    for (bool mean : {false, true}) {
      std::string axes;
      for (int a : c.axes) axes += std::to_string(a) + ",";
      check_op(std::string(mean ? "Mean" : "Sum") + " axes={" + axes + "} keepdims=" + std::to_string(c.keepdims),
               {U(xs)},
               [=](const Values& x) {
                 return mean ? ops::mean(x[0], c.axes, c.keepdims) : ops::sum(x[0], c.axes, c.keepdims);
               },
               c.out, [=](const std::vector<Vec>& v) { return ref_reduce(v[0], xs, c.axes, mean); });
    }
}

TEST(OpsGradcheck, Reshape) {
  const Shape xs{2, 3, 4};
  for (const auto& [target, out] : std::vector<std::pair<Shape, Shape>>{
           {Shape{6, 4}, Shape{6, 4}}, {Shape{4, -1}, Shape{4, 6}}, {Shape{24}, Shape{24}}, {Shape{2, 2, 3, 2}, Shape{2, 2, 3, 2}}})
    // A copy to capture: clang before 16 cannot capture a structured binding.
    check_op("Reshape to " + target.str(), {U(xs)}, [to = target](const Values& x) { return ops::reshape(x[0], to); }, out,
             [](const std::vector<Vec>& v) { return v[0]; });
  // A reshape in the middle of a chain (the view feeds a kernel and receives a kernel's gradient).
  check_op("Exp(Reshape(Square))", {U(xs)},
           [](const Values& x) { return ops::exp(ops::reshape(ops::square(x[0]), Shape{3, 8})); }, Shape{3, 8},
           [](const std::vector<Vec>& v) { return ref_unary(v[0], [](double x) { return std::exp(x * x); }); });
}

TEST(OpsGradcheck, TransposeRank3) {
  const Shape xs{2, 3, 4};
  for (const std::vector<int>& perm : {std::vector<int>{2, 0, 1}, {1, 2, 0}, {0, 2, 1}, {2, 1, 0}, {0, 1, 2}}) {
    Shape ys;
    for (int p : perm) ys.push_back(xs[p]);
    check_op("Transpose perm " + std::to_string(perm[0]) + std::to_string(perm[1]) + std::to_string(perm[2]), {U(xs)},
             [=](const Values& x) { return ops::transpose(x[0], perm); }, ys,
             [=](const std::vector<Vec>& v) { return ref_transpose(v[0], xs, perm); });
  }
}

TEST(OpsGradcheck, BiasAdd) {
  for (const Shape& xs : {Shape{3, 4}, Shape{2, 3, 4, 5}, Shape{2, 3, 5}}) {
    const Shape bs{xs[1]};
    check_op("BiasAdd " + xs.str(), {U(xs), U(bs)}, [](const Values& x) { return ops::bias_add(x[0], x[1]); }, xs,
             [=](const std::vector<Vec>& v) { return ref_bias_add(v[0], xs, v[1]); });
  }
}

TEST(OpsGradcheck, Conv2D) {
  struct C {
    Shape xs, ws;
    int stride, pad;
  };
  const C cases[] = {
      {{2, 3, 5, 5}, {4, 3, 3, 3}, 1, 0},
      {{2, 3, 5, 5}, {4, 3, 3, 3}, 1, 1},
      {{2, 3, 6, 5}, {2, 3, 3, 3}, 2, 1},  // H != W, stride 2
      {{1, 2, 5, 6}, {3, 2, 3, 2}, 1, 2},  // non-square filter, pad 2
      {{2, 2, 7, 7}, {3, 2, 3, 3}, 2, 2},
      {{2, 3, 4, 4}, {2, 3, 1, 1}, 1, 0},  // 1x1
  };
  for (const C& c : cases) {
    const Shape ys{c.xs[0], c.ws[0], out_dim(c.xs[2], c.ws[2], c.stride, c.pad), out_dim(c.xs[3], c.ws[3], c.stride, c.pad)};
    check_op("Conv2D x" + c.xs.str() + " w" + c.ws.str() + " stride " + std::to_string(c.stride) + " pad " +
                 std::to_string(c.pad),
             {U(c.xs), U(c.ws)}, [=](const Values& x) { return ops::conv2d(x[0], x[1], c.stride, c.pad); }, ys,
             [=](const std::vector<Vec>& v) { return ref_conv(v[0], c.xs, v[1], c.ws, c.stride, c.pad); });
  }
}

struct PoolCase {
  Shape xs;
  int k, stride, pad;
};
const PoolCase kPoolCases[] = {
    {{2, 2, 5, 5}, 3, 2, 1},  // stride < kernel, padding
    {{2, 2, 5, 5}, 2, 1, 0},  // stride < kernel
    {{1, 3, 6, 5}, 3, 1, 1},  // H != W
    {{2, 2, 6, 6}, 2, 2, 0},  // non-overlapping
    {{1, 2, 7, 7}, 4, 3, 2},  // pad = kernel / 2
};
Shape pool_out(const PoolCase& c) {
  return {c.xs[0], c.xs[1], out_dim(c.xs[2], c.k, c.stride, c.pad), out_dim(c.xs[3], c.k, c.stride, c.pad)};
}
std::string pool_name(const char* op, const PoolCase& c) {
  return std::string(op) + " x" + c.xs.str() + " k" + std::to_string(c.k) + " s" + std::to_string(c.stride) + " p" +
         std::to_string(c.pad);
}

// Inputs are Distinct (a shuffled grid of spacing 0.05, half of it negative): no ties within a
// window, and windows that overlap the padding with only negative values show that padding is
// not read as 0.
TEST(OpsGradcheck, MaxPool2D) {
  for (const PoolCase& c : kPoolCases) {
    check_op(pool_name("MaxPool2D", c), {Distinct(c.xs)},
             [=](const Values& x) { return ops::max_pool2d(x[0], c.k, c.stride, c.pad); }, pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Max); });
    check_op(pool_name("MaxPool2D argmax", c), {Distinct(c.xs)},
             [=](const Values& x) {
               const Value y = ops::max_pool2d(x[0], c.k, c.stride, c.pad);
               return Value{y.graph, y.node, 1};
             },
             pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Argmax); },
             Opts{.fwd_tol = 0, .grad = false});
  }
}

TEST(OpsGradcheck, AvgPool2D) {
  for (const PoolCase& c : kPoolCases)
    check_op(pool_name("AvgPool2D", c), {U(c.xs)},
             [=](const Values& x) { return ops::avg_pool2d(x[0], c.k, c.stride, c.pad); }, pool_out(c),
             [=](const std::vector<Vec>& v) { return ref_pool(v[0], c.xs, c.k, c.stride, c.pad, PoolOut::Avg); });
}

// Dropout draws a new mask every run (the plan's run counter), so finite differences across runs
// do not apply: the gradient is checked against the mask output of the same run
// (d sum(y * R) / dx = R * mask), and the forward against y = x * mask.
TEST(OpsGradcheck, Dropout) {
  const double rate = 0.3;
  const Shape s{8, 50};
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(-1, 1);
  Vec xv(size_t(s.numel())), r(size_t(s.numel()));
  for (double& v : xv) v = u(rng);
  for (double& v : r) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value y = ops::dropout(x, rate, 99);
  const Value mask{y.graph, y.node, 1};
  const Value loss = ops::sum(ops::mul(y, g.constant(rf::Tensor::from_vector<double>(r, s))));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  rf::Session sess(g);
  const auto& res = sess.run({y, mask, gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}});
  const Vec yv = res[0].to_vector<double>(), mv = res[1].to_vector<double>(), dv = res[2].to_vector<double>();
  const double keep = 1.0 / (1.0 - rate);
  size_t dropped = 0, odd = 0;
  for (double m : mv) {
    if (m == 0) ++dropped;
    else if (std::fabs(m - keep) > 1e-12 * keep) ++odd;
  }
  EXPECT_EQ(odd, 0u) << "mask values must be 0 or 1/(1-rate)";
  const double frac = double(dropped) / double(mv.size());
  EXPECT_NEAR(frac, rate, 0.1) << dropped << " of " << mv.size() << " dropped";
  Vec want_y(xv.size()), want_d(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) { want_y[i] = xv[i] * mv[i]; want_d[i] = r[i] * mv[i]; }
  expect_close(yv, want_y, 1e-12, "dropout forward = x * mask");
  expect_close(dv, want_d, 1e-12, "dropout gradient = R * mask");
}

// Cast F64 -> F32 -> F64: the value and the gradient are each rounded through float once, so both
// are checked exactly (finite differences at h = 1e-6 would be dominated by float rounding).
TEST(OpsGradcheck, CastRoundTrip) {
  const Shape s{3, 4};
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> u(-1, 1);
  Vec xv(size_t(s.numel())), r(size_t(s.numel()));
  for (double& v : xv) v = u(rng);
  for (double& v : r) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value y = ops::cast(ops::cast(x, DType::F32), DType::F64);
  ASSERT_EQ(g.spec(y).dtype, DType::F64);
  const Value loss = ops::sum(ops::mul(y, g.constant(rf::Tensor::from_vector<double>(r, s))));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  ASSERT_EQ(g.spec(gr[0]).dtype, DType::F64);
  rf::Session sess(g);
  const auto& res = sess.run({y, gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}});
  const Vec yv = res[0].to_vector<double>(), dv = res[1].to_vector<double>();
  for (size_t i = 0; i < xv.size(); ++i) {
    EXPECT_EQ(yv[i], double(float(xv[i]))) << i;
    EXPECT_EQ(dv[i], double(float(r[i]))) << i;
  }
}

// ---------------------------------------------------------------------------------------------
// The gradient-check table: for every op, the test that checks it against finite differences
// in f64 (a forward op: its value and its gradient; a backward op: the forward op's test, whose
// gradient it computes), or, after "-", why it has none. A switch with no default compiled with
// -Werror=switch: an op without a row does not compile, and GradcheckTable.EveryRowNamesATest
// fails when a row names a test that does not exist.
// ---------------------------------------------------------------------------------------------

const char* gradcheck_row(rf::Op op) {
  using rf::Op;
  switch (op) {
    case Op::Placeholder:
    case Op::Const:
    case Op::Variable: return "-a source: the gradient stops here";
    case Op::InitVariable: return "-no output";
    case Op::MatMul: return "OpsGradcheck.MatMulAllTransposeCombinations";
    case Op::Add:
    case Op::Sub:
    case Op::Mul:
    case Op::Div:
    case Op::SumLike: return "OpsGradcheck.BinaryBroadcastLeftOperandAndBoth";
    case Op::Neg:
    case Op::Exp:
    case Op::Log:
    case Op::Sqrt:
    case Op::Square:
    case Op::Relu:
    case Op::Tanh:
    case Op::Sigmoid:
    case Op::Gelu:
    case Op::ReluGrad:
    case Op::TanhGrad:
    case Op::SigmoidGrad:
    case Op::GeluGrad: return "OpsGradcheck.Unary";
    case Op::AddScalar:
    case Op::MulScalar:
    case Op::PowScalar: return "OpsGradcheck.ScalarOps";
    case Op::Softmax:
    case Op::LogSoftmax:
    case Op::SoftmaxGrad:
    case Op::LogSoftmaxGrad: return "OpsGradcheck.SoftmaxAndLogSoftmax";
    case Op::SparseSoftmaxXent:
    case Op::SparseSoftmaxXentGrad: return "OpsGradcheck.SparseSoftmaxXent";
    case Op::Rsqrt:
    case Op::RsqrtGrad: return "OpsGradcheck.MaskRsqrt";
    case Op::Where: return "OpsGradcheck.MaskWhereBroadcast";
    case Op::Compare: return "-not differentiable (U8 output); values: OpsGradcheck.MaskCompare";
    case Op::MaskedSoftmax: return "OpsGradcheck.MaskedSoftmax";
    case Op::Sum:
    case Op::Mean:
    case Op::BroadcastLike: return "OpsGradcheck.SumAndMean";
    case Op::Reshape:
    case Op::ReshapeLike: return "OpsGradcheck.Reshape";
    case Op::Transpose: return "OpsGradcheck.TransposeRank3";
    case Op::BiasAdd:
    case Op::BiasAddGrad: return "OpsGradcheck.BiasAdd";
    case Op::Conv2D:
    case Op::Conv2DGradInput:
    case Op::Conv2DGradFilter: return "OpsGradcheck.Conv2D";
    case Op::MaxPool2D:
    case Op::MaxPool2DGrad: return "OpsGradcheck.MaxPool2D";
    case Op::AvgPool2D:
    case Op::AvgPool2DGrad: return "OpsGradcheck.AvgPool2D";
    case Op::BatchMatMul: return "OpsGradcheck.BatchMatMulTransposesAndBroadcasting";
    case Op::LayerNorm:
    case Op::LayerNormGrad: return "OpsGradcheck.LayerNorm";
    case Op::Slice: return "OpsGradcheck.SliceAlongEveryAxis";
    case Op::Concat: return "OpsGradcheck.ConcatAndSplit";
    case Op::Pad: return "OpsGradcheck.PadAlongEveryAxis";
    case Op::Dropout: return "OpsGradcheck.Dropout";
    case Op::Cast: return "OpsGradcheck.CastRoundTrip";
    case Op::Gather: return "OpsGradcheck.GatherI32AndI64Duplicates";
    case Op::ScatterAdd: return "OpsGradcheck.ScatterAdd";
    case Op::ApplySGDSparse:
    case Op::ApplyMomentumSparse:
    case Op::ApplyAdamSparse: return "-an update: no output to differentiate (values: SparseUpdates.*)";
    case Op::ApplySGD:
    case Op::ApplyMomentum:
    case Op::ApplyAdam: return "-an update: no output to differentiate (values: Optimizers.*)";
    case Op::COUNT: break;
  }
  return nullptr;
}

TEST(GradcheckTable, EveryRowNamesATest) {
  std::set<std::string> tests;
  const testing::UnitTest& ut = *testing::UnitTest::GetInstance();
  for (int i = 0; i < ut.total_test_suite_count(); ++i) {
    const testing::TestSuite& suite = *ut.GetTestSuite(i);
    for (int j = 0; j < suite.total_test_count(); ++j)
      tests.insert(std::string(suite.name()) + "." + suite.GetTestInfo(j)->name());
  }
  for (int i = 0; i < int(rf::Op::COUNT); ++i) {
    const rf::Op op = rf::Op(i);
    const char* row = gradcheck_row(op);
    ASSERT_NE(row, nullptr) << rf::op_name(op);
    if (row[0] == '-') continue;
    EXPECT_TRUE(tests.count(row)) << rf::op_name(op) << ": its gradcheck row names " << row
                                  << ", which is not a test in this binary";
  }
}

// ---------------------------------------------------------------------------------------------
// gradients() behaviour
// ---------------------------------------------------------------------------------------------

// y = x*x + x: x reaches the loss through Mul (twice) and Add; the contributions must be summed.
TEST(Gradients, SumsContributionsOfSeveralConsumers) {
  const Shape s{3, 4};
  Vec xv(size_t(s.numel()));
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-2, 2);
  for (double& v : xv) v = u(rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value loss = ops::sum(ops::add(ops::mul(x, x), x));
  const Values gr = rf::gradients(loss, {x});
  ASSERT_TRUE(gr[0].valid());
  rf::Session sess(g);
  const Vec dv = sess.run({gr[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)}})[0].to_vector<double>();
  Vec want(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) want[i] = 2 * xv[i] + 1;
  expect_close(dv, want, 1e-12, "d sum(x*x + x) / dx = 2x + 1");
}

TEST(Gradients, ThroughOpWithoutRuleThrowsNamingTheOp) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  const Value rg = g.add(rf::Op::ReluGrad, {x, ops::relu(x)});
  const Value loss = ops::sum(rg);
  try {
    rf::gradients(loss, {x});
    FAIL() << "gradients() through a ReluGrad node did not throw";
  } catch (const rf::Error& e) {
    EXPECT_NE(std::string(e.what()).find("ReluGrad"), std::string::npos) << e.what();
  }
}

size_t count_op(const rf::Graph& g, rf::Op op) {
  size_t n = 0;
  for (const rf::Node& node : g.nodes()) n += node.op == op;
  return n;
}

// Two convolutions over a data placeholder x: loss = sum(conv(relu(conv(x, w1)), w2)).
struct TwoConvs {
  rf::Graph g;
  Value x, w1, w2, loss;
  TwoConvs() {
    x = g.placeholder("x", DType::F64, Shape{2, 3, 6, 6});
    w1 = g.placeholder("w1", DType::F64, Shape{4, 3, 3, 3});
    w2 = g.placeholder("w2", DType::F64, Shape{2, 4, 3, 3});
    loss = ops::sum(ops::conv2d(ops::relu(ops::conv2d(x, w1, 1, 1)), w2, 1, 1));
  }
};

// The input gradient of a data placeholder that is not asked for is never built.
TEST(Gradients, UnrequestedPlaceholderGradientIsNotBuilt) {
  {
    TwoConvs t;
    const Values gr = rf::gradients(t.loss, {t.w2});
    ASSERT_TRUE(gr[0].valid());
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradInput), 0u);
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradFilter), 1u);
    EXPECT_EQ(count_op(t.g, rf::Op::ReluGrad), 0u);
  }
  {
    TwoConvs t;
    const Values gr = rf::gradients(t.loss, {t.w1, t.w2});
    ASSERT_TRUE(gr[0].valid() && gr[1].valid());
    // One GradFilter per weight and one GradInput (into conv 2's input); none into x.
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradInput), 1u);
    EXPECT_EQ(count_op(t.g, rf::Op::Conv2DGradFilter), 2u);
  }
}

// gradients() may be called more than once on one loss (as tf.gradients can), e.g. once per
// parameter group; each call adds its own backward nodes.
TEST(Gradients, CanBeCalledTwiceOnOneLoss) {
  TwoConvs t;
  Values g2, g12;
  ASSERT_NO_THROW(g2 = rf::gradients(t.loss, {t.w2}));
  ASSERT_NO_THROW(g12 = rf::gradients(t.loss, {t.w1, t.w2}));
  ASSERT_TRUE(g2[0].valid() && g12[1].valid());
  std::mt19937 rng(5);
  std::vector<rf::Session::Feed> feeds;
  for (const Value& v : {t.x, t.w1, t.w2}) {
    const Shape s = t.g.spec(v).shape;
    feeds.push_back({v, rf::Tensor::from_vector<double>(generate(U(s), rng), s)});
  }
  rf::Session sess(t.g);
  const auto& res = sess.run({g2[0], g12[1]}, feeds);
  expect_close(res[0].to_vector<double>(), res[1].to_vector<double>(), 1e-12, "d loss / d w2 of both calls");
}

TEST(Gradients, NonScalarLossThrows) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  EXPECT_THROW(rf::gradients(ops::square(x), {x}), rf::Error);
  EXPECT_THROW(rf::gradients(ops::sum(x, {1}), {x}), rf::Error);              // [2]
  EXPECT_THROW(rf::gradients(ops::sum(x, {}, /*keepdims=*/true), {x}), rf::Error);  // [1, 1]
  EXPECT_NO_THROW(rf::gradients(ops::sum(x), {x}));
}

TEST(Gradients, UnrelatedInputGetsInvalidValue) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  const Value z = g.placeholder("z", DType::F64, Shape{2, 3});
  const Values gr = rf::gradients(ops::sum(ops::exp(x)), {x, z});
  EXPECT_TRUE(gr[0].valid());
  EXPECT_FALSE(gr[1].valid());
}

// tf.gradients(ys, xs, grad_ys): the vector-Jacobian products of several ys, summed; ones by default.
TEST(Gradients, SeveralYsWithGradYsSumTheirVectorJacobianProducts) {
  const Shape s{3, 4};
  std::mt19937 rng(11);
  const Vec xv = generate(U(s), rng), vv = generate(U(s), rng);
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, s);
  const Value v = g.placeholder("v", DType::F64, s);
  const Value y1 = ops::mul(x, x), y2 = ops::exp(x);  // non-scalar ys
  const Values with_v = rf::gradients(Values{y1, y2}, {x}, {v, ops::mul_scalar(v, 2.0)});
  const Values with_ones = rf::gradients(Values{y1, ops::sum(y2)}, {x});
  ASSERT_TRUE(with_v[0].valid() && with_ones[0].valid());
  rf::Session sess(g);
  const auto& res = sess.run({with_v[0], with_ones[0]}, {{x, rf::Tensor::from_vector<double>(xv, s)},
                                                         {v, rf::Tensor::from_vector<double>(vv, s)}});
  Vec want_v(xv.size()), want_ones(xv.size());
  for (size_t i = 0; i < xv.size(); ++i) {
    want_v[i] = 2 * xv[i] * vv[i] + std::exp(xv[i]) * 2 * vv[i];
    want_ones[i] = 2 * xv[i] + std::exp(xv[i]);
  }
  expect_close(res[0].to_vector<double>(), want_v, 1e-12, "grad_ys given");
  expect_close(res[1].to_vector<double>(), want_ones, 1e-12, "grad_ys default (ones)");
}

TEST(Gradients, GradYsMustMatchTheYs) {
  rf::Graph g;
  const Value x = g.placeholder("x", DType::F64, Shape{2, 3});
  const Value y = ops::square(x);
  EXPECT_THROW(rf::gradients(Values{y}, {x}, {g.placeholder("w", DType::F64, Shape{3, 2})}), rf::Error);
  EXPECT_THROW(rf::gradients(Values{y}, {x}, {g.placeholder("f", DType::F32, Shape{2, 3})}), rf::Error);
  EXPECT_THROW(rf::gradients(Values{y, y}, {x}, {x}), rf::Error);  // one grad_ys for two ys
  EXPECT_THROW(rf::gradients(Values{}, {x}), rf::Error);
}

}  // namespace
