// Tests of the CPU elementwise, reduction, layout and softmax kernels against plain reference
// loops (in double) written here and finite differences (optimizers, randomness and casts:
// test_kernels_numeric.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu.h"
#include "kernels/half.h"
#include "kernels/random.h"
#include "tests/kernel_test_util.h"

namespace {

using rf::i64;
using rf::Shape;
using rf::kernels::BinaryOp;
using rf::kernels::ScalarOp;
using rf::kernels::UnaryOp;
namespace cpu = rf::kernels::cpu;
using namespace rf::kernel_tests;



double ref_unary(UnaryOp op, double x) {
  switch (op) {
    case UnaryOp::Neg: return -x;
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Square: return x * x;
    case UnaryOp::Abs: return std::fabs(x);
    case UnaryOp::Relu: return x > 0 ? x : 0;
    case UnaryOp::Tanh: return std::tanh(x);
    case UnaryOp::Sigmoid: return 1 / (1 + std::exp(-x));
    case UnaryOp::Gelu: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case UnaryOp::Rsqrt: return 1 / std::sqrt(x);
  }
  return 0;
}

double ref_binary(BinaryOp op, double a, double b) {
  const double pi = 3.14159265358979323846;
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::ReluGrad: return b > 0 ? a : 0;
    case BinaryOp::TanhGrad: return a * (1 - b * b);
    case BinaryOp::SigmoidGrad: return a * b * (1 - b);
    case BinaryOp::GeluGrad:
      return a * (0.5 * (1 + std::erf(b / std::sqrt(2.0))) + b * std::exp(-0.5 * b * b) / std::sqrt(2 * pi));
    case BinaryOp::RsqrtGrad: return -0.5 * a * b * b * b;
  }
  return 0;
}

double ref_scalar(ScalarOp op, double x, double c) {
  switch (op) {
    case ScalarOp::Add: return x + c;
    case ScalarOp::Mul: return x * c;
    case ScalarOp::Pow: return std::pow(x, c);
    case ScalarOp::RSub: return c - x;
    case ScalarOp::RDiv: return c / x;
  }
  return 0;
}

const UnaryOp kUnaryOps[] = {UnaryOp::Neg,  UnaryOp::Exp,  UnaryOp::Log,  UnaryOp::Sqrt,    UnaryOp::Square,
                             UnaryOp::Abs,  UnaryOp::Relu, UnaryOp::Tanh, UnaryOp::Sigmoid, UnaryOp::Gelu};
const BinaryOp kBinaryOps[] = {BinaryOp::Add,      BinaryOp::Sub,      BinaryOp::Mul,         BinaryOp::Div,
                               BinaryOp::ReluGrad, BinaryOp::TanhGrad, BinaryOp::SigmoidGrad, BinaryOp::GeluGrad};
const ScalarOp kScalarOps[] = {ScalarOp::Add, ScalarOp::Mul, ScalarOp::Pow, ScalarOp::RSub, ScalarOp::RDiv};

// Prints a shape in failure messages. (Not Shape::str(): inlined at -O3 it trips a GCC 12
// -Wrestrict false positive, PR 105329.)
struct Dims {
  const Shape& s;
};
std::ostream& operator<<(std::ostream& os, Dims d) {
  os << '[';
  for (int i = 0; i < d.s.rank; ++i) os << (i ? "," : "") << d.s[i];
  return os << ']';
}

// Row-major multi-index of linear index i in shape s.
void unravel(i64 i, const Shape& s, i64* idx) {
  for (int d = s.rank - 1; d >= 0; --d) {
    idx[d] = i % s[d];
    i /= s[d];
  }
}

// Linear index in shape s of a multi-index, with size-1 dims of s broadcast (index taken as 0).
i64 ravel_broadcast(const i64* idx, const Shape& s) {
  i64 off = 0;
  for (int d = 0; d < s.rank; ++d) off = off * s[d] + (s[d] == 1 ? 0 : idx[d]);
  return off;
}

template <class T>
class KernelsT : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(KernelsT, FloatTypes);

// ---------------------------------------------------------------- elementwise

TYPED_TEST(KernelsT, UnaryMatchesReference) {
  using T = TypeParam;
  std::mt19937 g(1);
  for (UnaryOp op : kUnaryOps) {
    const bool positive = op == UnaryOp::Log || op == UnaryOp::Sqrt;
    for (i64 n : {1, 7, 1003}) {
      auto x = rand_vec<T>(n, g, 0.25, 2.0, !positive);
      std::vector<T> y(n);
      cpu::unary(op, x.data(), y.data(), n);
      for (i64 i = 0; i < n; ++i)
        ASSERT_TRUE(near<T>(y[i], ref_unary(op, x[i]))) << "op " << int(op) << " i " << i << " x " << x[i];
    }
  }
}

TYPED_TEST(KernelsT, UnaryInPlaceAndLarge) {
  using T = TypeParam;
  std::mt19937 g(2);
  const i64 n = 100003;  // above the threading threshold
  auto x = rand_vec<T>(n, g);
  auto y = x;
  Threads threads(2);
  cpu::unary(UnaryOp::Tanh, y.data(), y.data(), n);
  for (i64 i = 0; i < n; ++i) ASSERT_TRUE(near<T>(y[i], std::tanh(double(x[i])))) << i;
}

TYPED_TEST(KernelsT, BinaryMatchesReference) {
  using T = TypeParam;
  std::mt19937 g(3);
  const i64 n = 517;
  for (BinaryOp op : kBinaryOps) {
    auto a = rand_vec<T>(n, g);
    auto b = rand_vec<T>(n, g, 0.25, 0.95);  // |b| < 1 keeps TanhGrad/SigmoidGrad's "y" plausible
    std::vector<T> y(n);
    cpu::binary(op, a.data(), b.data(), y.data(), n);
    for (i64 i = 0; i < n; ++i) ASSERT_TRUE(near<T>(y[i], ref_binary(op, a[i], b[i]))) << "op " << int(op) << " " << i;
    // In place on either operand.
    auto a2 = a;
    cpu::binary(op, a2.data(), b.data(), a2.data(), n);
    auto b2 = b;
    cpu::binary(op, a.data(), b2.data(), b2.data(), n);
    for (i64 i = 0; i < n; ++i) {
      ASSERT_EQ(a2[i], y[i]);
      ASSERT_EQ(b2[i], y[i]);
    }
  }
}

template <class T>
void check_broadcast(BinaryOp op, const Shape& as, const Shape& bs, const Shape& ys, std::mt19937& g) {
  auto a = rand_vec<T>(as.numel(), g);
  auto b = rand_vec<T>(bs.numel(), g, 0.25, 0.95);
  std::vector<T> y(ys.numel(), T(-12345));
  cpu::binary_broadcast(op, a.data(), as, b.data(), bs, y.data(), ys);
  i64 idx[Shape::kMaxRank];
  for (i64 i = 0; i < ys.numel(); ++i) {
    unravel(i, ys, idx);
    const double want = ref_binary(op, a[ravel_broadcast(idx, as)], b[ravel_broadcast(idx, bs)]);
    ASSERT_TRUE(near<T>(y[i], want)) << Dims{as} << " op " << int(op) << " " << Dims{bs} << " -> " << Dims{ys}
                                     << " at " << i;
  }
}

TYPED_TEST(KernelsT, BinaryBroadcastMatchesReference) {
  using T = TypeParam;
  std::mt19937 g(4);
  struct Case {
    Shape a, b, y;
  };
  const std::vector<Case> cases = {
      {{2, 3, 4}, {1, 3, 1}, {2, 3, 4}},                    // middle axis
      {{1, 1, 4}, {2, 3, 4}, {2, 3, 4}},                    // [4] + [2,3,4], padded by the caller
      {{2, 3, 4}, {1, 1, 1}, {2, 3, 4}},                    // b scalar
      {{1, 1, 1}, {2, 3, 4}, {2, 3, 4}},                    // a scalar
      {{2, 3, 4}, {1, 3, 4}, {2, 3, 4}},                    // b repeats along leading dims
      {{1, 1, 4}, {2, 3, 4}, {2, 3, 4}},                    // a repeats along leading dims
      {{5, 7}, {1, 7}, {5, 7}},                             // bias row
      {{5, 7}, {5, 1}, {5, 7}},                             // per-row scalar
      {{2, 3, 4}, {2, 3, 4}, {2, 3, 4}},                    // same shape
      {{3, 1}, {1, 4}, {3, 4}},                             // outer product
      {{4, 3, 1}, {4, 1, 5}, {4, 3, 5}},                    // both broadcast
      {{2, 1, 3, 1, 2, 5}, {1, 4, 3, 1, 1, 5}, {2, 4, 3, 1, 2, 5}},  // rank 6
      {{2, 3, 1, 1}, {1, 1, 4, 5}, {2, 3, 4, 5}},
      {{1}, {1}, {1}},
  };
  for (const auto& c : cases)
    for (BinaryOp op : kBinaryOps) check_broadcast<T>(op, c.a, c.b, c.y, g);
}

TYPED_TEST(KernelsT, BinaryBroadcastLargeThreaded) {
  using T = TypeParam;
  std::mt19937 g(5);
  Threads threads(2);
  check_broadcast<T>(BinaryOp::Sub, {300, 257}, {300, 1}, {300, 257}, g);
  check_broadcast<T>(BinaryOp::Mul, {1000, 70}, {1, 70}, {1000, 70}, g);
  check_broadcast<T>(BinaryOp::Add, {7, 1, 90, 60}, {1, 11, 90, 1}, {7, 11, 90, 60}, g);
}

TEST(Kernels, BinaryBroadcastRejectsBadShapes) {
  float a[6] = {}, b[4] = {}, y[6] = {};
  EXPECT_THROW(cpu::binary_broadcast(BinaryOp::Add, a, Shape{2, 3}, b, Shape{1, 4}, y, Shape{2, 3}),
               std::invalid_argument);
  EXPECT_THROW(cpu::binary_broadcast(BinaryOp::Add, a, Shape{2, 3}, b, Shape{3}, y, Shape{2, 3}),
               std::invalid_argument);
  EXPECT_THROW(cpu::binary_broadcast(BinaryOp::Add, a, Shape{2, 3}, b, Shape{2, 3}, y, Shape{2, 1}),
               std::invalid_argument);
}

TYPED_TEST(KernelsT, ScalarMatchesReference) {
  using T = TypeParam;
  std::mt19937 g(6);
  const i64 n = 301;
  for (ScalarOp op : kScalarOps)
    for (double c : {1.7, -0.5, 2.0, 3.0}) {
      auto x = rand_vec<T>(n, g, 0.25, 2.0, op != ScalarOp::Pow);
      std::vector<T> y(n);
      cpu::scalar(op, x.data(), c, y.data(), n);
      // pow goes through libm in T; allow a few more ulps.
      for (i64 i = 0; i < n; ++i)
        ASSERT_TRUE(near<T>(y[i], ref_scalar(op, x[i], static_cast<T>(c)), 4.0)) << int(op) << " c " << c;
    }
}

// The *Grad ops are the derivatives of the forward ops: compare against central differences.
TEST(Kernels, GradOpsMatchFiniteDifferences) {
  std::mt19937 g(7);
  const i64 n = 200;
  const double h = 1e-5;
  auto x = rand_vec<double>(n, g, 0.1, 2.5);
  auto dy = rand_vec<double>(n, g);
  std::vector<double> xp(n), xm(n), fp(n), fm(n), fwd(n), dx(n);
  for (i64 i = 0; i < n; ++i) {
    xp[i] = x[i] + h;
    xm[i] = x[i] - h;
  }
  struct Pair {
    UnaryOp fwd;
    BinaryOp grad;
    bool grad_takes_output;
  };
  for (Pair p : {Pair{UnaryOp::Relu, BinaryOp::ReluGrad, false}, Pair{UnaryOp::Tanh, BinaryOp::TanhGrad, true},
                 Pair{UnaryOp::Sigmoid, BinaryOp::SigmoidGrad, true}, Pair{UnaryOp::Gelu, BinaryOp::GeluGrad, false}}) {
    cpu::unary(p.fwd, xp.data(), fp.data(), n);
    cpu::unary(p.fwd, xm.data(), fm.data(), n);
    cpu::unary(p.fwd, x.data(), fwd.data(), n);
    cpu::binary(p.grad, dy.data(), p.grad_takes_output ? fwd.data() : x.data(), dx.data(), n);
    for (i64 i = 0; i < n; ++i) {
      const double fd = dy[i] * (fp[i] - fm[i]) / (2 * h);
      EXPECT_NEAR(dx[i], fd, 1e-8) << "grad op " << int(p.grad) << " at x = " << x[i];
    }
  }
}

// ---------------------------------------------------------------- reductions and layout

// Summation error is bounded relative to the sum of |terms|, so the tolerance scales with it
// (per output). Elements are at least 0.25 in size, so a dropped or doubled term always fails.
template <class T>
void check_reduce(const Shape& xs, const Shape& ys, double scale, std::mt19937& g) {
  auto x = rand_vec<T>(xs.numel(), g);
  std::vector<T> y(ys.numel(), T(-7));
  cpu::reduce_sum(x.data(), xs, y.data(), ys, scale);
  std::vector<double> want(ys.numel(), 0.0), mag(ys.numel(), 0.0);
  i64 idx[Shape::kMaxRank];
  for (i64 i = 0; i < xs.numel(); ++i) {
    unravel(i, xs, idx);
    want[ravel_broadcast(idx, ys)] += x[i];
    mag[ravel_broadcast(idx, ys)] += std::fabs(double(x[i]));
  }
  const double eps = std::numeric_limits<T>::epsilon();
  for (i64 j = 0; j < ys.numel(); ++j) {
    const double tol = 64 * eps * mag[j] * scale;
    ASSERT_NEAR(y[j], want[j] * scale, tol) << Dims{xs} << " -> " << Dims{ys} << " at " << j;
  }
}

TYPED_TEST(KernelsT, ReduceSumOverEveryAxisSet) {
  using T = TypeParam;
  std::mt19937 g(8);
  for (Shape xs : {Shape{3, 4, 5, 2}, Shape{2, 3, 1, 4, 2, 3}, Shape{3, 1, 5}, Shape{1, 7}}) {
    for (int mask = 0; mask < (1 << xs.rank); ++mask) {
      Shape ys = xs;
      for (int d = 0; d < xs.rank; ++d)
        if (mask & (1 << d)) ys[d] = 1;
      check_reduce<T>(xs, ys, 1.0, g);
      check_reduce<T>(xs, ys, 0.25, g);  // e.g. a mean
    }
  }
}

TYPED_TEST(KernelsT, ReduceSumLargeShapes) {
  using T = TypeParam;
  std::mt19937 g(9);
  Threads threads(2);
  check_reduce<T>({3000, 40}, {1, 40}, 1.0, g);     // column sums
  check_reduce<T>({50, 600}, {1, 600}, 0.5, g);     // columns wider than one tile
  check_reduce<T>({40, 3000}, {40, 1}, 1.0, g);     // row sums
  check_reduce<T>({8, 64, 300}, {1, 64, 1}, 1.0, g);  // per channel
  check_reduce<T>({9, 5, 4000}, {9, 1, 4000}, 1.0, g);
  check_reduce<T>({100000}, {1}, 1.0, g);
}

// Plain sequential float accumulation of 0.1f a million times is off by ~1%; the blocked and
// pairwise sums must stay near float precision.
TEST(Kernels, ReduceSumFloatAccuracy) {
  const i64 n = 1000000;
  std::vector<float> x(n, 0.1f);
  float s = 0;
  cpu::reduce_sum(x.data(), Shape{n}, &s, Shape{1}, 1.0);
  const double exact = double(0.1f) * n;
  EXPECT_LT(std::fabs(s - exact) / exact, 2e-6) << s;

  const i64 rows = 200000;
  std::vector<float> m(rows * 3, 0.1f), cols(3);
  cpu::reduce_sum(m.data(), Shape{rows, 3}, cols.data(), Shape{1, 3}, 1.0);
  for (float c : cols) EXPECT_LT(std::fabs(c - double(0.1f) * rows) / (double(0.1f) * rows), 2e-5) << c;
}

TEST(Kernels, ReduceSumRejectsBadShapes) {
  float x[6] = {}, y[6] = {};
  EXPECT_THROW(cpu::reduce_sum(x, Shape{2, 3}, y, Shape{2}, 1.0), std::invalid_argument);
  EXPECT_THROW(cpu::reduce_sum(x, Shape{2, 3}, y, Shape{2, 2}, 1.0), std::invalid_argument);
}

template <class T>
void check_broadcast_to(const Shape& xs, const Shape& ys, double scale, std::mt19937& g) {
  auto x = rand_vec<T>(xs.numel(), g);
  std::vector<T> y(ys.numel(), T(-7));
  cpu::broadcast_to(x.data(), xs, y.data(), ys, scale);
  i64 idx[Shape::kMaxRank];
  for (i64 i = 0; i < ys.numel(); ++i) {
    unravel(i, ys, idx);
    ASSERT_TRUE(near<T>(y[i], double(x[ravel_broadcast(idx, xs)]) * scale)) << Dims{xs} << " -> " << Dims{ys};
  }
}

TYPED_TEST(KernelsT, BroadcastTo) {
  using T = TypeParam;
  std::mt19937 g(10);
  check_broadcast_to<T>({1, 3, 1}, {2, 3, 4}, 1.0, g);
  check_broadcast_to<T>({1, 1, 1}, {2, 3, 4}, 0.5, g);
  check_broadcast_to<T>({2, 3, 4}, {2, 3, 4}, 2.0, g);
  check_broadcast_to<T>({3, 1}, {3, 5}, 1.0, g);
  check_broadcast_to<T>({1, 5}, {4, 5}, 1.0, g);
  check_broadcast_to<T>({2, 1, 3, 1, 2, 1}, {2, 4, 3, 3, 2, 2}, 1.5, g);
  Threads threads(2);
  check_broadcast_to<T>({1, 300}, {500, 300}, 1.0, g);
  float x[3] = {}, y[6] = {};
  EXPECT_THROW(cpu::broadcast_to(x, Shape{3}, y, Shape{2, 3}, 1.0), std::invalid_argument);
  EXPECT_THROW(cpu::broadcast_to(x, Shape{1, 3}, y, Shape{3, 2}, 1.0), std::invalid_argument);
}

template <class T>
void check_transpose(const Shape& xs, const std::vector<int>& perm, std::mt19937& g) {
  auto x = rand_vec<T>(xs.numel(), g);
  Shape ys;
  for (int i = 0; i < xs.rank; ++i) ys.push_back(xs[perm[i]]);
  std::vector<T> y(ys.numel(), T(-7));
  cpu::transpose(x.data(), xs, perm.data(), y.data());
  i64 yi[Shape::kMaxRank], xi[Shape::kMaxRank];
  for (i64 i = 0; i < ys.numel(); ++i) {
    unravel(i, ys, yi);
    for (int d = 0; d < xs.rank; ++d) xi[perm[d]] = yi[d];
    ASSERT_EQ(y[i], x[ravel_broadcast(xi, xs)]) << Dims{xs} << " at " << i;
  }
}

TYPED_TEST(KernelsT, TransposeAllPermutations) {
  using T = TypeParam;
  std::mt19937 g(11);
  check_transpose<T>({67, 131}, {1, 0}, g);  // several 32x32 tiles plus ragged edges
  check_transpose<T>({5, 1}, {1, 0}, g);
  for (Shape xs : {Shape{3, 4, 5}, Shape{2, 3, 4, 5}, Shape{2, 1, 3, 4}, Shape{33, 2, 40, 3}}) {
    std::vector<int> perm(xs.rank);
    std::iota(perm.begin(), perm.end(), 0);
    do check_transpose<T>(xs, perm, g);
    while (std::next_permutation(perm.begin(), perm.end()));
  }
  Threads threads(2);
  check_transpose<T>({300, 500}, {1, 0}, g);
  check_transpose<T>({16, 64, 70}, {0, 2, 1}, g);
}

TEST(Kernels, TransposeRejectsBadPerm) {
  float x[6] = {}, y[6] = {};
  const int dup[2] = {0, 0}, out[2] = {0, 2};
  EXPECT_THROW(cpu::transpose(x, Shape{2, 3}, dup, y), std::invalid_argument);
  EXPECT_THROW(cpu::transpose(x, Shape{2, 3}, out, y), std::invalid_argument);
}

TYPED_TEST(KernelsT, BiasOps) {
  using T = TypeParam;
  std::mt19937 g(12);
  for (i64 inner : {1, 6}) {
    const i64 outer = 5, C = 7, n = outer * C * inner;
    auto x = rand_vec<T>(n, g);
    auto b = rand_vec<T>(C, g);
    std::vector<T> y(n), yr(n), db(C);
    cpu::bias_add(x.data(), b.data(), y.data(), outer, C, inner);
    cpu::bias_add_relu(x.data(), b.data(), yr.data(), outer, C, inner);
    cpu::bias_grad(x.data(), db.data(), outer, C, inner);
    std::vector<double> want_db(C, 0.0);
    for (i64 o = 0; o < outer; ++o)
      for (i64 c = 0; c < C; ++c)
        for (i64 i = 0; i < inner; ++i) {
          const i64 k = (o * C + c) * inner + i;
          const double v = double(x[k]) + double(b[c]);
          ASSERT_TRUE(near<T>(y[k], v));
          ASSERT_TRUE(near<T>(yr[k], v > 0 ? v : 0.0));
          want_db[c] += x[k];
        }
    for (i64 c = 0; c < C; ++c) ASSERT_TRUE(near<T>(db[c], want_db[c], 10));
  }
  // A dense layer's bias gradient at a realistic size, threaded.
  Threads threads(2);
  const i64 outer = 4096, C = 64;
  auto dy = rand_vec<T>(outer * C, g);
  std::vector<T> db(C);
  cpu::bias_grad(dy.data(), db.data(), outer, C, 1);
  for (i64 c = 0; c < C; ++c) {
    double s = 0;
    for (i64 o = 0; o < outer; ++o) s += dy[o * C + c];
    ASSERT_TRUE(near<T>(db[c], s, 200)) << c;
  }
}

// ---------------------------------------------------------------- softmax family

std::vector<double> ref_softmax_row(const double* x, i64 n) {
  const double m = *std::max_element(x, x + n);
  std::vector<double> y(n);
  double s = 0;
  for (i64 i = 0; i < n; ++i) s += (y[i] = std::exp(x[i] - m));
  for (auto& v : y) v /= s;
  return y;
}

TYPED_TEST(KernelsT, SoftmaxAndLogSoftmax) {
  using T = TypeParam;
  std::mt19937 g(13);
  const i64 rows = 7, cols = 13;
  auto x = uniform_vec<T>(rows * cols, g, -5, 5);
  for (i64 i = 0; i < cols; ++i) x[i] = static_cast<T>(1000 - i);  // must not overflow
  std::vector<T> y(rows * cols), ly(rows * cols);
  cpu::softmax(x.data(), y.data(), rows, cols);
  cpu::log_softmax(x.data(), ly.data(), rows, cols);
  for (i64 r = 0; r < rows; ++r) {
    std::vector<double> xr(x.begin() + r * cols, x.begin() + (r + 1) * cols);
    const auto want = ref_softmax_row(xr.data(), cols);
    double sum = 0;
    for (i64 i = 0; i < cols; ++i) {
      const T v = y[r * cols + i];
      ASSERT_TRUE(std::isfinite(v));
      ASSERT_TRUE(near<T>(v, want[i])) << r << "," << i;
      ASSERT_TRUE(near<T>(ly[r * cols + i], std::log(want[i]), 4)) << r << "," << i;
      ASSERT_TRUE(near<T>(std::exp(double(ly[r * cols + i])), double(v), 4));
      sum += v;
    }
    EXPECT_NEAR(sum, 1.0, 10 * Tol<T>::rel);
  }
  // Wide rows, threaded.
  Threads threads(2);
  const i64 R = 64, Cw = 3000;
  auto xw = uniform_vec<T>(R * Cw, g, -20, 20);
  std::vector<T> yw(R * Cw);
  cpu::softmax(xw.data(), yw.data(), R, Cw);
  for (i64 r = 0; r < R; ++r) {
    double s = 0;
    for (i64 i = 0; i < Cw; ++i) s += yw[r * Cw + i];
    EXPECT_NEAR(s, 1.0, 1e-5);
  }
}

// d/dx of L = sum_j w_j f(x)_j by central differences, for f = softmax or log_softmax.
TEST(Kernels, SoftmaxGradsMatchFiniteDifferences) {
  std::mt19937 g(14);
  const i64 rows = 3, cols = 6;
  const double h = 1e-6;
  auto x = uniform_vec<double>(rows * cols, g, -2, 2);
  auto w = uniform_vec<double>(rows * cols, g, -1, 1);
  for (bool log : {false, true}) {
    auto fwd = [&](const std::vector<double>& in) {
      std::vector<double> out(in.size());
      if (log) cpu::log_softmax(in.data(), out.data(), rows, cols);
      else cpu::softmax(in.data(), out.data(), rows, cols);
      return out;
    };
    auto loss = [&](const std::vector<double>& in) {
      const auto out = fwd(in);
      double l = 0;
      for (size_t i = 0; i < out.size(); ++i) l += w[i] * out[i];
      return l;
    };
    const auto y = fwd(x);
    std::vector<double> dx(rows * cols);
    if (log) cpu::log_softmax_grad(w.data(), y.data(), dx.data(), rows, cols);
    else cpu::softmax_grad(w.data(), y.data(), dx.data(), rows, cols);
    for (i64 i = 0; i < rows * cols; ++i) {
      auto xp = x, xm = x;
      xp[i] += h;
      xm[i] -= h;
      EXPECT_NEAR(dx[i], (loss(xp) - loss(xm)) / (2 * h), 1e-8) << (log ? "log_softmax" : "softmax") << " " << i;
    }
  }
}

template <class T, class L>
void check_sparse_xent(std::mt19937& g) {
  const i64 rows = 9, cols = 11;
  auto x = uniform_vec<T>(rows * cols, g, -4, 4);
  for (i64 i = 0; i < cols; ++i) x[2 * cols + i] = static_cast<T>(5000 + 3 * i);  // huge logits
  std::vector<L> labels(rows);
  for (i64 r = 0; r < rows; ++r) labels[r] = static_cast<L>((r * 7 + 3) % cols);
  std::vector<T> loss(rows), bp(rows * cols);
  cpu::sparse_xent(x.data(), labels.data(), loss.data(), bp.data(), rows, cols);
  for (i64 r = 0; r < rows; ++r) {
    std::vector<double> xr(x.begin() + r * cols, x.begin() + (r + 1) * cols);
    const double m = *std::max_element(xr.begin(), xr.end());
    double s = 0;
    for (double v : xr) s += std::exp(v - m);
    const double want_loss = m + std::log(s) - xr[labels[r]];
    ASSERT_TRUE(std::isfinite(loss[r]));
    ASSERT_TRUE(near<T>(loss[r], want_loss, 4 + std::fabs(m))) << "row " << r;
    const auto p = ref_softmax_row(xr.data(), cols);
    for (i64 i = 0; i < cols; ++i)
      ASSERT_TRUE(near<T>(bp[r * cols + i], p[i] - (i == labels[r] ? 1.0 : 0.0))) << r << "," << i;
  }
  std::vector<T> dloss(rows), dlogits(rows * cols);
  for (i64 r = 0; r < rows; ++r) dloss[r] = static_cast<T>(0.5 + r);
  cpu::sparse_xent_grad(dloss.data(), bp.data(), dlogits.data(), rows, cols);
  for (i64 i = 0; i < rows * cols; ++i) ASSERT_EQ(dlogits[i], dloss[i / cols] * bp[i]);

  auto bad = labels;
  bad[4] = static_cast<L>(cols);
  try {
    cpu::sparse_xent(x.data(), bad.data(), loss.data(), bp.data(), rows, cols);
    ADD_FAILURE() << "no throw for an out-of-range label";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("row 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("11"), std::string::npos) << msg;
  }
  bad[4] = static_cast<L>(-1);
  EXPECT_THROW(cpu::sparse_xent(x.data(), bad.data(), loss.data(), bp.data(), rows, cols), std::invalid_argument);
}

TYPED_TEST(KernelsT, SparseXent) {
  std::mt19937 g(15);
  check_sparse_xent<TypeParam, int32_t>(g);
  check_sparse_xent<TypeParam, int64_t>(g);
}

TEST(Kernels, SparseXentBackpropIsLossGradient) {
  std::mt19937 g(16);
  const i64 rows = 4, cols = 5;
  const double h = 1e-6;
  auto x = uniform_vec<double>(rows * cols, g, -3, 3);
  const std::vector<int64_t> labels = {0, 4, 2, 2};
  std::vector<double> loss(rows), bp(rows * cols), lp(rows), lm(rows), scratch(rows * cols);
  cpu::sparse_xent(x.data(), labels.data(), loss.data(), bp.data(), rows, cols);
  for (i64 i = 0; i < rows * cols; ++i) {
    auto xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    cpu::sparse_xent(xp.data(), labels.data(), lp.data(), scratch.data(), rows, cols);
    cpu::sparse_xent(xm.data(), labels.data(), lm.data(), scratch.data(), rows, cols);
    const i64 r = i / cols;
    EXPECT_NEAR(bp[i], (lp[r] - lm[r]) / (2 * h), 1e-8) << i;
  }
}

}  // namespace
