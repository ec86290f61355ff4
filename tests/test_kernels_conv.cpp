// Tests of the CPU dense-algebra kernels (gemm, conv2d and its gradients, max/avg pooling)
// against naive loops written here and, for the gradients, central finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace {

using rf::i64;
namespace k = rf::kernels::cpu;
using k::ConvGeom;
using k::PoolGeom;

template <class T>
std::vector<T> random_vec(i64 n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = static_cast<T>(d(rng));
  return v;
}

ConvGeom conv_geom(i64 N, i64 C, i64 H, i64 W, i64 K, i64 R, i64 S, i64 sh, i64 sw, i64 ph, i64 pw) {
  return {N, C, H, W, K, R, S, sh, sw, ph, pw, (H + 2 * ph - R) / sh + 1, (W + 2 * pw - S) / sw + 1};
}

std::string describe(const ConvGeom& g) {
  char b[200];
  std::snprintf(b, sizeof b, "N%lld C%lld %lldx%lld K%lld %lldx%lld stride %lld,%lld pad %lld,%lld", (long long)g.N,
                (long long)g.C, (long long)g.H, (long long)g.W, (long long)g.K, (long long)g.R, (long long)g.S,
                (long long)g.stride_h, (long long)g.stride_w, (long long)g.pad_h, (long long)g.pad_w);
  return b;
}

// The input pixel under output (p, q) and tap (r, s), or false where it falls in the padding.
bool tap(const ConvGeom& g, i64 p, i64 q, i64 r, i64 s, i64& h, i64& w) {
  h = p * g.stride_h - g.pad_h + r;
  w = q * g.stride_w - g.pad_w + s;
  return h >= 0 && h < g.H && w >= 0 && w < g.W;
}

// Every (input pixel, filter tap, output pixel) triple of the convolution that falls inside the
// image: f(x index, w index, y index), flat NCHW / KCRS / NKPQ.
template <class F>
void for_each_tap(const ConvGeom& g, F&& f) {
  for (i64 n = 0; n < g.N; ++n)
    for (i64 kk = 0; kk < g.K; ++kk)
      for (i64 p = 0; p < g.P; ++p)
        for (i64 q = 0; q < g.Q; ++q)
          for (i64 c = 0; c < g.C; ++c)
            for (i64 r = 0; r < g.R; ++r)
              for (i64 s = 0; s < g.S; ++s) {
                i64 h, w;
                if (!tap(g, p, q, r, s, h, w)) continue;
                f(((n * g.C + c) * g.H + h) * g.W + w, ((kk * g.C + c) * g.R + r) * g.S + s,
                  ((n * g.K + kk) * g.P + p) * g.Q + q);
              }
}

// Naive references in double; `mag` gets the sum of |terms| of each output, which scales the
// tolerance (a float sum of n terms is off by about eps * sqrt(n) * that).
template <class T>
void ref_conv(const std::vector<T>& x, const std::vector<T>& wt, std::vector<double>& y, std::vector<double>& mag,
              const ConvGeom& g) {
  y.assign(g.N * g.K * g.P * g.Q, 0.0);
  mag.assign(y.size(), 0.0);
  for_each_tap(g, [&](i64 xi, i64 wi, i64 yi) {
    const double t = double(x[xi]) * double(wt[wi]);
    y[yi] += t;
    mag[yi] += std::fabs(t);
  });
}

template <class T>
void ref_conv_grad_input(const std::vector<T>& dy, const std::vector<T>& wt, std::vector<double>& dx,
                         std::vector<double>& mag, const ConvGeom& g) {
  dx.assign(g.N * g.C * g.H * g.W, 0.0);
  mag.assign(dx.size(), 0.0);
  for_each_tap(g, [&](i64 xi, i64 wi, i64 yi) {
    const double t = double(dy[yi]) * double(wt[wi]);
    dx[xi] += t;
    mag[xi] += std::fabs(t);
  });
}

template <class T>
void ref_conv_grad_filter(const std::vector<T>& x, const std::vector<T>& dy, std::vector<double>& dw,
                          std::vector<double>& mag, const ConvGeom& g) {
  dw.assign(g.K * g.C * g.R * g.S, 0.0);
  mag.assign(dw.size(), 0.0);
  for_each_tap(g, [&](i64 xi, i64 wi, i64 yi) {
    const double t = double(x[xi]) * double(dy[yi]);
    dw[wi] += t;
    mag[wi] += std::fabs(t);
  });
}

template <class T>
double rel_tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-13;
}

template <class T>
void expect_close(const std::vector<T>& got, const std::vector<double>& ref, const std::vector<double>& mag,
                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i) {
    const double tol = rel_tol<T>() * (mag[i] + 1e-3);
    if (!(std::fabs(double(got[i]) - ref[i]) <= tol)) {
      ++bad;
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", want " << ref[i] << " (tol " << tol << ")";
    }
  }
}

template <class T>
class ConvTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(ConvTest, Types);

// C=1 and C>1, stride 1 and 2 (also mixed), pad 0/1/2 (also mixed), non-square images and
// filters, batch 1 and 3, plus the two CNN layers and channel counts that are not multiples of
// the 8/16-lane blocks (K=12, K=24, C=9), so that every kernel path and tail runs.
std::vector<ConvGeom> geometries() {
  return {
      conv_geom(1, 1, 6, 6, 4, 3, 3, 1, 1, 1, 1),
      conv_geom(3, 1, 9, 7, 8, 5, 3, 1, 1, 2, 1),
      conv_geom(3, 3, 7, 9, 5, 5, 3, 1, 1, 2, 2),
      conv_geom(3, 4, 9, 8, 8, 3, 3, 2, 2, 1, 1),
      conv_geom(1, 2, 5, 7, 3, 5, 3, 2, 1, 0, 0),
      conv_geom(3, 9, 8, 6, 12, 3, 3, 1, 1, 1, 0),
      conv_geom(1, 16, 6, 5, 24, 3, 5, 1, 1, 0, 2),
      conv_geom(3, 10, 11, 10, 16, 5, 5, 2, 2, 2, 2),
      conv_geom(1, 8, 4, 4, 8, 1, 1, 1, 1, 1, 1),  // pad >= filter: the padded-border-only outputs
      conv_geom(3, 6, 5, 7, 4, 1, 1, 1, 1, 0, 0),  // 1x1: the image is its own column matrix
      conv_geom(2, 3, 7, 6, 5, 1, 1, 2, 2, 0, 0),
      conv_geom(3, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2),   // the CNN's first layer
      conv_geom(1, 32, 14, 14, 64, 5, 5, 1, 1, 2, 2),  // the CNN's second layer
  };
}

TYPED_TEST(ConvTest, ForwardMatchesNaive) {
  using T = TypeParam;
  uint32_t seed = 1;
  for (const ConvGeom& g : geometries()) {
    SCOPED_TRACE(describe(g));
    auto x = random_vec<T>(g.N * g.C * g.H * g.W, seed++);
    auto w = random_vec<T>(g.K * g.C * g.R * g.S, seed++);
    std::vector<T> y(g.N * g.K * g.P * g.Q, std::numeric_limits<T>::quiet_NaN());
    k::conv2d(x.data(), w.data(), y.data(), g);
    std::vector<double> ref, mag;
    ref_conv(x, w, ref, mag, g);
    expect_close(y, ref, mag, "y");
  }
}

// The fused epilogue: conv2d_bias is conv2d then bias_add(_relu), to the bit, on every path (the
// direct kernel's in-transpose epilogue, its 8x8 blocks and scalar edges, and im2col).
TYPED_TEST(ConvTest, BiasEpilogueIsBitwiseConvThenBias) {
  using T = TypeParam;
  uint32_t seed = 500;
  for (const ConvGeom& g : geometries())
    for (bool relu : {false, true}) {
      SCOPED_TRACE(describe(g) + (relu ? " relu" : ""));
      auto x = random_vec<T>(g.N * g.C * g.H * g.W, seed++);
      auto w = random_vec<T>(g.K * g.C * g.R * g.S, seed++);
      auto b = random_vec<T>(g.K, seed++);
      const size_t ny = size_t(g.N * g.K * g.P * g.Q);
      std::vector<T> want(ny, std::numeric_limits<T>::quiet_NaN()), got(ny, std::numeric_limits<T>::quiet_NaN());
      k::conv2d(x.data(), w.data(), want.data(), g);
      if (relu)
        k::bias_add_relu(want.data(), b.data(), want.data(), g.N, g.K, g.P * g.Q);
      else
        k::bias_add(want.data(), b.data(), want.data(), g.N, g.K, g.P * g.Q);
      k::conv2d_bias(x.data(), w.data(), b.data(), relu, got.data(), g);
      ASSERT_EQ(std::memcmp(got.data(), want.data(), ny * sizeof(T)), 0);
      if (relu) {
        EXPECT_TRUE(std::any_of(got.begin(), got.end(), [](T v) { return v == T(0); })) << "no ReLU cut";
      }
    }
}

TYPED_TEST(ConvTest, GradInputMatchesNaive) {
  using T = TypeParam;
  uint32_t seed = 100;
  for (const ConvGeom& g : geometries()) {
    SCOPED_TRACE(describe(g));
    auto dy = random_vec<T>(g.N * g.K * g.P * g.Q, seed++);
    auto w = random_vec<T>(g.K * g.C * g.R * g.S, seed++);
    // Garbage in dx: the kernel must overwrite, not accumulate.
    std::vector<T> dx(g.N * g.C * g.H * g.W, std::numeric_limits<T>::quiet_NaN());
    k::conv2d_grad_input(dy.data(), w.data(), dx.data(), g);
    std::vector<double> ref, mag;
    ref_conv_grad_input(dy, w, ref, mag, g);
    expect_close(dx, ref, mag, "dx");
  }
}

TYPED_TEST(ConvTest, GradFilterMatchesNaive) {
  using T = TypeParam;
  uint32_t seed = 200;
  for (const ConvGeom& g : geometries()) {
    SCOPED_TRACE(describe(g));
    auto x = random_vec<T>(g.N * g.C * g.H * g.W, seed++);
    auto dy = random_vec<T>(g.N * g.K * g.P * g.Q, seed++);
    std::vector<T> dw(g.K * g.C * g.R * g.S, std::numeric_limits<T>::quiet_NaN());
    k::conv2d_grad_filter(x.data(), dy.data(), dw.data(), g);
    std::vector<double> ref, mag;
    ref_conv_grad_filter(x, dy, ref, mag, g);
    expect_close(dw, ref, mag, "dw");
    // A second call overwrites dw (no accumulation across calls) and gives the same bits.
    std::vector<T> dw2(dw.size(), T(5));
    k::conv2d_grad_filter(x.data(), dy.data(), dw2.data(), g);
    EXPECT_EQ(dw, dw2);
  }
}

// Threads split outputs only, so the bits do not depend on the thread count (grad_filter sums
// over images, which it must not split).
TEST(ConvThreads, ResultsIndependentOfThreadCount) {
  const int saved = k::max_threads();
  for (const ConvGeom& g : {conv_geom(7, 32, 14, 14, 64, 5, 5, 1, 1, 2, 2), conv_geom(5, 1, 28, 28, 32, 5, 5, 1, 1, 2, 2),
                            conv_geom(5, 9, 9, 8, 12, 3, 3, 2, 1, 1, 0)}) {
    SCOPED_TRACE(describe(g));
    auto x = random_vec<float>(g.N * g.C * g.H * g.W, 31);
    auto w = random_vec<float>(g.K * g.C * g.R * g.S, 32);
    auto dy = random_vec<float>(g.N * g.K * g.P * g.Q, 33);
    std::vector<float> y[2], dx[2], dw[2];
    for (int i = 0; i < 2; ++i) {
      k::set_max_threads(i == 0 ? 1 : 3);
      y[i].resize(dy.size()), dx[i].resize(x.size()), dw[i].resize(w.size());
      k::conv2d(x.data(), w.data(), y[i].data(), g);
      k::conv2d_grad_input(dy.data(), w.data(), dx[i].data(), g);
      k::conv2d_grad_filter(x.data(), dy.data(), dw[i].data(), g);
    }
    k::set_max_threads(saved);
    EXPECT_EQ(y[0], y[1]);
    EXPECT_EQ(dx[0], dx[1]);
    EXPECT_EQ(dw[0], dw[1]);
  }
}

// L = sum(conv2d(x, w) * G): dL/dx and dL/dw by central differences must match the kernels.
// The convolution is linear, so the differences are exact up to rounding.
TEST(ConvGradFiniteDiff, Double) {
  for (const ConvGeom& g : {conv_geom(2, 2, 5, 6, 3, 3, 2, 2, 1, 1, 0), conv_geom(1, 8, 5, 4, 8, 3, 3, 1, 1, 1, 2)}) {
    SCOPED_TRACE(describe(g));
    auto x = random_vec<double>(g.N * g.C * g.H * g.W, 7);
    auto w = random_vec<double>(g.K * g.C * g.R * g.S, 8);
    auto G = random_vec<double>(g.N * g.K * g.P * g.Q, 9);
    std::vector<double> y(G.size());
    auto loss = [&] {
      k::conv2d(x.data(), w.data(), y.data(), g);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += y[i] * G[i];
      return l;
    };
    std::vector<double> dx(x.size()), dw(w.size());
    k::conv2d_grad_input(G.data(), w.data(), dx.data(), g);
    k::conv2d_grad_filter(x.data(), G.data(), dw.data(), g);
    const double h = 1e-5;
    for (auto [v, grad, name] : {std::tuple{&x, &dx, "dx"}, std::tuple{&w, &dw, "dw"}}) {
      for (size_t i = 0; i < v->size(); ++i) {
        const double keep = (*v)[i];
        (*v)[i] = keep + h;
        const double lp = loss();
        (*v)[i] = keep - h;
        const double lm = loss();
        (*v)[i] = keep;
        EXPECT_NEAR((*grad)[i], (lp - lm) / (2 * h), 1e-8) << name << "[" << i << "]";
      }
    }
  }
}

TEST(ConvGeomCheck, RejectsInconsistentGeometry) {
  std::vector<float> buf(4096);
  ConvGeom g = conv_geom(1, 2, 6, 6, 3, 3, 3, 1, 1, 1, 1);
  g.P = 5;  // should be 6
  EXPECT_THROW(k::conv2d(buf.data(), buf.data(), buf.data(), g), std::invalid_argument);
  g = conv_geom(1, 2, 6, 6, 3, 3, 3, 1, 1, 1, 1);
  g.stride_w = 0;
  EXPECT_THROW(k::conv2d_grad_input(buf.data(), buf.data(), buf.data(), g), std::invalid_argument);
  g = conv_geom(1, 2, 2, 2, 3, 5, 5, 1, 1, 0, 0);  // filter larger than the input
  EXPECT_THROW(k::conv2d_grad_filter(buf.data(), buf.data(), buf.data(), g), std::invalid_argument);
}

// ---- gemm ----

template <class T>
class GemmTest : public ::testing::Test {};
TYPED_TEST_SUITE(GemmTest, Types);

TYPED_TEST(GemmTest, AllTransposesWithAlphaBetaAndStrides) {
  using T = TypeParam;
  const i64 m = 7, n = 5, kd = 9;
  const T alpha = T(0.75), beta = T(-0.5);
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      SCOPED_TRACE("trans_a=" + std::to_string(ta) + " trans_b=" + std::to_string(tb));
      // Stored shapes: A is [m,k] or [k,m]; B is [k,n] or [n,k]; leading dims padded by 3.
      const i64 a_rows = ta ? kd : m, a_cols = ta ? m : kd, b_rows = tb ? n : kd, b_cols = tb ? kd : n;
      const i64 lda = a_cols + 3, ldb = b_cols + 3, ldc = n + 3;
      auto a = random_vec<T>(a_rows * lda, 11);
      auto b = random_vec<T>(b_rows * ldb, 12);
      auto c = random_vec<T>(m * ldc, 13);
      const auto c0 = c;
      k::gemm<T>(ta, tb, m, n, kd, alpha, a.data(), lda, b.data(), ldb, beta, c.data(), ldc);
      for (i64 i = 0; i < m; ++i)
        for (i64 j = 0; j < ldc; ++j) {
          if (j >= n) {  // the padding columns of C are left alone
            EXPECT_EQ(c[i * ldc + j], c0[i * ldc + j]);
            continue;
          }
          double s = 0;
          for (i64 l = 0; l < kd; ++l) {
            const double av = ta ? a[l * lda + i] : a[i * lda + l];
            const double bv = tb ? b[j * ldb + l] : b[l * ldb + j];
            s += av * bv;
          }
          const double want = double(alpha) * s + double(beta) * double(c0[i * ldc + j]);
          EXPECT_NEAR(double(c[i * ldc + j]), want, (std::is_same_v<T, float> ? 1e-5 : 1e-13)) << i << "," << j;
        }
    }
}

TYPED_TEST(GemmTest, BetaZeroIgnoresNaNInC) {
  using T = TypeParam;
  std::vector<T> a = {1, 2, 3, 4}, b = {5, 6, 7, 8}, c(4, std::numeric_limits<T>::quiet_NaN());
  k::gemm<T>(false, false, 2, 2, 2, T(1), a.data(), 2, b.data(), 2, T(0), c.data(), 2);
  EXPECT_EQ(c, (std::vector<T>{19, 22, 43, 50}));
}

TYPED_TEST(GemmTest, EmptyInnerDimensionScalesC) {
  using T = TypeParam;
  std::vector<T> c(6, std::numeric_limits<T>::quiet_NaN()), d = {1, 2, 3, 4, 5, 6};
  const T* none = nullptr;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // k == 0: the stored rows of A (not transposed) and of B (transposed) have length 0.
      const i64 lda = ta ? 2 : 0, ldb = tb ? 0 : 3;
      std::fill(c.begin(), c.end(), std::numeric_limits<T>::quiet_NaN());
      k::gemm<T>(ta, tb, 2, 3, 0, T(1), none, lda, none, ldb, T(0), c.data(), 3);
      EXPECT_EQ(c, std::vector<T>(6, T(0))) << "ta=" << ta << " tb=" << tb;
      std::vector<T> e = d;
      k::gemm<T>(ta, tb, 2, 3, 0, T(1), none, lda, none, ldb, T(0.5), e.data(), 3);
      EXPECT_EQ(e, (std::vector<T>{0.5, 1, 1.5, 2, 2.5, 3}));
    }
}

TEST(Gemm, RejectsShortLeadingDimension) {
  std::vector<float> a(64), b(64), c(64);
  EXPECT_THROW(k::gemm<float>(false, false, 4, 4, 4, 1.f, a.data(), 3, b.data(), 4, 0.f, c.data(), 4),
               std::invalid_argument);
  EXPECT_THROW(k::gemm<float>(false, true, 4, 4, 4, 1.f, a.data(), 4, b.data(), 3, 0.f, c.data(), 4),
               std::invalid_argument);
  EXPECT_THROW(k::gemm<float>(false, false, 4, 4, 4, 1.f, a.data(), 4, b.data(), 4, 0.f, c.data(), 2),
               std::invalid_argument);
}

// ---- pooling ----

PoolGeom pool_geom(i64 N, i64 C, i64 H, i64 W, i64 R, i64 S, i64 sh, i64 sw, i64 ph, i64 pw) {
  return {N, C, H, W, R, S, sh, sw, ph, pw, (H + 2 * ph - R) / sh + 1, (W + 2 * pw - S) / sw + 1};
}

// Naive max pool: first maximum in row-major window order, padding never considered.
template <class T>
void ref_max_pool(const std::vector<T>& x, std::vector<T>& y, std::vector<int32_t>& am, const PoolGeom& g) {
  y.assign(g.N * g.C * g.P * g.Q, T(0));
  am.assign(y.size(), -1);
  for (i64 pl = 0; pl < g.N * g.C; ++pl)
    for (i64 p = 0; p < g.P; ++p)
      for (i64 q = 0; q < g.Q; ++q) {
        bool any = false;
        T best = 0;
        int32_t arg = -1;
        for (i64 r = 0; r < g.R; ++r)
          for (i64 s = 0; s < g.S; ++s) {
            const i64 h = p * g.stride_h - g.pad_h + r, w = q * g.stride_w - g.pad_w + s;
            if (h < 0 || h >= g.H || w < 0 || w >= g.W) continue;
            const T v = x[pl * g.H * g.W + h * g.W + w];
            if (!any || v > best) best = v, arg = int32_t(h * g.W + w), any = true;
          }
        y[pl * g.P * g.Q + p * g.Q + q] = best;
        am[pl * g.P * g.Q + p * g.Q + q] = arg;
      }
}

std::vector<PoolGeom> pool_geometries() {
  // The first three take the 2x2/2 fast path (the wide ones with its 8-wide vector part).
  return {pool_geom(2, 3, 8, 8, 2, 2, 2, 2, 0, 0),  pool_geom(2, 3, 7, 9, 2, 2, 2, 2, 0, 0),
          pool_geom(2, 2, 6, 37, 2, 2, 2, 2, 0, 0),
          pool_geom(1, 2, 7, 6, 3, 3, 2, 2, 1, 1),  pool_geom(3, 1, 5, 8, 3, 2, 1, 2, 1, 0),
          pool_geom(1, 2, 6, 6, 3, 3, 1, 1, 1, 1), pool_geom(1, 1, 9, 9, 5, 5, 2, 2, 2, 2)};
}

template <class T>
class PoolTest : public ::testing::Test {};
TYPED_TEST_SUITE(PoolTest, Types);

TYPED_TEST(PoolTest, MaxPoolMatchesNaiveWithArgmax) {
  using T = TypeParam;
  uint32_t seed = 300;
  for (const PoolGeom& g : pool_geometries()) {
    SCOPED_TRACE(g.R * 1000 + g.stride_h * 100 + g.pad_h);
    // All negative, so a padded zero would win if padding took part.
    auto x = random_vec<T>(g.N * g.C * g.H * g.W, seed++, -2.0, -0.5);
    std::vector<T> y(g.N * g.C * g.P * g.Q);
    std::vector<int32_t> am(y.size());
    k::max_pool2d(x.data(), y.data(), am.data(), g);
    std::vector<T> ry;
    std::vector<int32_t> ram;
    ref_max_pool(x, ry, ram, g);
    EXPECT_EQ(y, ry);
    EXPECT_EQ(am, ram);
  }
}

TYPED_TEST(PoolTest, MaxPoolTiesPickFirstAndArgmaxIsPlaneLocal) {
  using T = TypeParam;
  // One plane per (n, c); every window of a 2x2/2 pool over a constant plane ties: the
  // first (top-left) element wins, and indices restart in each plane.
  const PoolGeom g = pool_geom(2, 2, 4, 22, 2, 2, 2, 2, 0, 0);
  std::vector<T> x(g.N * g.C * g.H * g.W, T(1)), y(g.N * g.C * g.P * g.Q);
  std::vector<int32_t> am(y.size());
  k::max_pool2d(x.data(), y.data(), am.data(), g);
  for (i64 pl = 0; pl < g.N * g.C; ++pl)
    for (i64 p = 0; p < g.P; ++p)
      for (i64 q = 0; q < g.Q; ++q) EXPECT_EQ(am[pl * g.P * g.Q + p * g.Q + q], int32_t(2 * p * g.W + 2 * q));
  // A NaN propagates, as in PyTorch, in the vector part and in the scalar tail of a row.
  x[1] = std::numeric_limits<T>::quiet_NaN();
  x[g.W + 2 * 3 + 1] = std::numeric_limits<T>::quiet_NaN();
  x[g.W + 2 * 10] = std::numeric_limits<T>::quiet_NaN();
  k::max_pool2d(x.data(), y.data(), am.data(), g);
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(am[0], 1);
  EXPECT_TRUE(std::isnan(y[3]));
  EXPECT_EQ(am[3], g.W + 7);
  EXPECT_TRUE(std::isnan(y[10]));
  EXPECT_EQ(am[10], g.W + 20);
  EXPECT_EQ(y[4], T(1));
  // The general window code: 3x3, stride 2, pad 1 over a constant plane picks each window's
  // first in-image element.
  const PoolGeom g3 = pool_geom(1, 1, 5, 6, 3, 3, 2, 2, 1, 1);
  std::vector<T> x3(g3.H * g3.W, T(-3)), y3(g3.P * g3.Q);
  std::vector<int32_t> am3(y3.size());
  k::max_pool2d(x3.data(), y3.data(), am3.data(), g3);
  for (i64 p = 0; p < g3.P; ++p)
    for (i64 q = 0; q < g3.Q; ++q) {
      EXPECT_EQ(y3[p * g3.Q + q], T(-3));
      EXPECT_EQ(am3[p * g3.Q + q], int32_t(std::max<i64>(2 * p - 1, 0) * g3.W + std::max<i64>(2 * q - 1, 0)));
    }
}

TYPED_TEST(PoolTest, MaxPoolGradRoutesToArgmax) {
  using T = TypeParam;
  uint32_t seed = 400;
  for (const PoolGeom& g : pool_geometries()) {
    SCOPED_TRACE(g.R * 1000 + g.stride_h * 100 + g.pad_h);
    auto x = random_vec<T>(g.N * g.C * g.H * g.W, seed++);
    auto dy = random_vec<T>(g.N * g.C * g.P * g.Q, seed++);
    std::vector<T> y(dy.size());
    std::vector<int32_t> am(dy.size());
    k::max_pool2d(x.data(), y.data(), am.data(), g);
    std::vector<T> dx(x.size(), std::numeric_limits<T>::quiet_NaN());
    k::max_pool2d_grad(dy.data(), am.data(), dx.data(), g);
    // Overlapping windows that share a maximum add their gradients there; all else is zero.
    std::vector<double> want(x.size(), 0.0);
    for (i64 pl = 0; pl < g.N * g.C; ++pl)
      for (i64 o = 0; o < g.P * g.Q; ++o) want[pl * g.H * g.W + am[pl * g.P * g.Q + o]] += dy[pl * g.P * g.Q + o];
    for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(double(dx[i]), want[i], 1e-6) << i;
  }
  // A hand-checked case: 1x1x3x3 input, 2x2 windows at stride 1, the centre is the maximum of
  // all four windows and collects all four output gradients.
  const PoolGeom g = pool_geom(1, 1, 3, 3, 2, 2, 1, 1, 0, 0);
  std::vector<T> x = {0, 1, 0, 1, 9, 1, 0, 1, 0}, y(4), dy = {1, 2, 3, 4}, dx(9);
  std::vector<int32_t> am(4);
  k::max_pool2d(x.data(), y.data(), am.data(), g);
  EXPECT_EQ(am, (std::vector<int32_t>{4, 4, 4, 4}));
  k::max_pool2d_grad(dy.data(), am.data(), dx.data(), g);
  EXPECT_EQ(dx, (std::vector<T>{0, 0, 0, 0, 10, 0, 0, 0, 0}));
}

TEST(Pool, MaxPoolGradRejectsBadArgmax) {
  const PoolGeom g = pool_geom(1, 1, 4, 4, 2, 2, 2, 2, 0, 0);
  std::vector<float> dy(4, 1.f), dx(16);
  std::vector<int32_t> am = {0, 2, 8, 16};  // 16: outside the plane
  EXPECT_THROW(k::max_pool2d_grad(dy.data(), am.data(), dx.data(), g), std::invalid_argument);
  am = {0, 2, 8, 0};  // in the plane, outside window (1, 1) (rows and columns 2-3): the CUDA
  EXPECT_THROW(k::max_pool2d_grad(dy.data(), am.data(), dx.data(), g), std::invalid_argument);  // kernels ignore it
  am = {5, 3, 12, 15};  // every index in its own window
  k::max_pool2d_grad(dy.data(), am.data(), dx.data(), g);
  EXPECT_EQ(dx, (std::vector<float>{0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1}));
}

TEST(Pool, RejectsWindowInsidePadding) {
  std::vector<float> x(64), y(64);
  std::vector<int32_t> am(64);
  PoolGeom g = pool_geom(1, 1, 4, 4, 2, 2, 1, 1, 2, 2);  // pad >= window: a corner sees only padding
  EXPECT_THROW(k::max_pool2d(x.data(), y.data(), am.data(), g), std::invalid_argument);
  EXPECT_THROW(k::avg_pool2d(x.data(), y.data(), g), std::invalid_argument);
}

TYPED_TEST(PoolTest, AvgPoolCountsPadding) {
  using T = TypeParam;
  // Ones with 3x3 windows, stride 1, pad 1: a corner window holds 4 ones out of 9 slots, an edge
  // window 6, an interior window 9 (count_include_pad=True divides by 9 everywhere).
  const PoolGeom g = pool_geom(1, 1, 4, 5, 3, 3, 1, 1, 1, 1);
  std::vector<T> x(g.H * g.W, T(1)), y(g.P * g.Q);
  k::avg_pool2d(x.data(), y.data(), g);
  EXPECT_NEAR(double(y[0]), 4.0 / 9, 1e-6);
  EXPECT_NEAR(double(y[1]), 6.0 / 9, 1e-6);
  EXPECT_NEAR(double(y[g.Q + 1]), 1.0, 1e-6);
  EXPECT_NEAR(double(y[g.P * g.Q - 1]), 4.0 / 9, 1e-6);
  // And random data against a naive average.
  uint32_t seed = 500;
  for (const PoolGeom& pg : pool_geometries()) {
    auto xr = random_vec<T>(pg.N * pg.C * pg.H * pg.W, seed++);
    std::vector<T> yr(pg.N * pg.C * pg.P * pg.Q);
    k::avg_pool2d(xr.data(), yr.data(), pg);
    for (i64 pl = 0; pl < pg.N * pg.C; ++pl)
      for (i64 p = 0; p < pg.P; ++p)
        for (i64 q = 0; q < pg.Q; ++q) {
          double s = 0;
          for (i64 r = 0; r < pg.R; ++r)
            for (i64 c = 0; c < pg.S; ++c) {
              const i64 h = p * pg.stride_h - pg.pad_h + r, w = q * pg.stride_w - pg.pad_w + c;
              if (h >= 0 && h < pg.H && w >= 0 && w < pg.W) s += xr[pl * pg.H * pg.W + h * pg.W + w];
            }
          EXPECT_NEAR(double(yr[pl * pg.P * pg.Q + p * pg.Q + q]), s / double(pg.R * pg.S), 1e-6);
        }
  }
}

// L = sum(avg_pool2d(x) * G); its gradient from avg_pool2d_grad against central differences.
TEST(PoolGradFiniteDiff, AvgPoolDouble) {
  for (const PoolGeom& g : {pool_geom(2, 2, 5, 6, 3, 3, 2, 2, 1, 1), pool_geom(1, 1, 6, 5, 2, 3, 1, 2, 1, 1)}) {
    auto x = random_vec<double>(g.N * g.C * g.H * g.W, 21);
    auto G = random_vec<double>(g.N * g.C * g.P * g.Q, 22);
    std::vector<double> y(G.size()), dx(x.size(), std::numeric_limits<double>::quiet_NaN());
    auto loss = [&] {
      k::avg_pool2d(x.data(), y.data(), g);
      double l = 0;
      for (size_t i = 0; i < y.size(); ++i) l += y[i] * G[i];
      return l;
    };
    k::avg_pool2d_grad(G.data(), dx.data(), g);
    const double h = 1e-5;
    for (size_t i = 0; i < x.size(); ++i) {
      const double keep = x[i];
      x[i] = keep + h;
      const double lp = loss();
      x[i] = keep - h;
      const double lm = loss();
      x[i] = keep;
      EXPECT_NEAR(dx[i], (lp - lm) / (2 * h), 1e-9) << i;
    }
  }
}

}  // namespace
