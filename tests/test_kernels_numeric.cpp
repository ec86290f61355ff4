// Tests of the CPU optimizer, random-number and cast kernels against closed forms, reference
// loops written here, moments and exhaustive 16-bit tables.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <omp.h>

#include <atomic>
#include <thread>

#include "kernels/cpu.h"
#include "kernels/half.h"
#include "kernels/random.h"
#include "kernels/parallel.h"
#include "tests/kernel_test_util.h"

namespace {

using rf::i64;
using rf::Shape;
using rf::kernels::BinaryOp;
using rf::kernels::ScalarOp;
using rf::kernels::UnaryOp;
namespace cpu = rf::kernels::cpu;
using namespace rf::kernel_tests;

template <class T>
class KernelsNumT : public ::testing::Test {};
using FloatTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(KernelsNumT, FloatTypes);

// ---------------------------------------------------------------- threads

// --threads holds for every thread that runs a kernel, not only the one that set it: OpenMP's
// omp_set_num_threads is per thread, and a thread started later (the compression hook, the
// communication thread) used to get a team of one thread per core.
TEST(KernelThreads, TheBudgetHoldsOnThreadsStartedLater) {
  for (const int budget : {1, 3}) {
    const Threads scope(budget);
    int seen = -1, omp_seen = -1, team = 0;
    std::thread other([&] {
      seen = cpu::max_threads();
      omp_seen = omp_get_max_threads();
      std::atomic<int> widest{0};
      cpu::parallel_range(i64(1) << 20, 1, [&](i64, i64) {
        const int t = omp_get_num_threads();
        for (int w = widest.load(); t > w && !widest.compare_exchange_weak(w, t);) {
        }
      });
      team = widest.load();
    });
    other.join();
    EXPECT_EQ(seen, budget);
    EXPECT_EQ(omp_seen, budget);
    EXPECT_EQ(team, budget);
  }
}

// ---------------------------------------------------------------- optimizers

// An update reading the mean of several gradient buffers (GradIn with count > 1: the Reducer's
// fused update) equals the same update of one buffer holding ((g0 + g1) + g2) / 3 formed in T,
// bit for bit, for every optimizer; n spans several of the kernel's tiles and a ragged end, and
// (the second size) the OpenMP split into per-thread ranges.
TYPED_TEST(KernelsNumT, UpdateOfMeanGradientEqualsUpdateOfAveragedBuffer) {
  using T = TypeParam;
  const Threads two(2);
  for (const i64 n : {i64(2500), i64(200003)}) {
    std::mt19937 rng(11);
    std::normal_distribution<double> nd(0.0, 1.0);
    std::vector<std::vector<T>> g(3, std::vector<T>(size_t(n)));
    for (auto& v : g)
      for (T& x : v) x = T(nd(rng));
    std::vector<T> mean(static_cast<size_t>(n));
    for (size_t i = 0; i < mean.size(); ++i) mean[i] = ((g[0][i] + g[1][i]) + g[2][i]) / T(3);
    const T* srcs[3] = {g[0].data(), g[1].data(), g[2].data()};
    const cpu::GradIn<T> fused(srcs, 3);
    std::vector<T> w0(static_cast<size_t>(n)), s0(static_cast<size_t>(n), T(0.01));
    for (T& x : w0) x = T(nd(rng));
    for (int opt = 0; opt < 3; ++opt) {
      std::vector<T> wa = w0, wb = w0, ma = s0, mb = s0, va = s0, vb = s0;
      for (int t = 1; t <= 2; ++t) {
        if (opt == 0) {
          cpu::sgd_update(wa.data(), mean.data(), n, 0.1, 0.01);
          cpu::sgd_update(wb.data(), fused, n, 0.1, 0.01);
        } else if (opt == 1) {
          cpu::momentum_update(wa.data(), ma.data(), mean.data(), n, 0.1, 0.9, 0.01, true);
          cpu::momentum_update(wb.data(), mb.data(), fused, n, 0.1, 0.9, 0.01, true);
        } else {
          cpu::adam_update(wa.data(), ma.data(), va.data(), mean.data(), n, 1e-3, 0.9, 0.999, 1e-8, 0.01, true, t);
          cpu::adam_update(wb.data(), mb.data(), vb.data(), fused, n, 1e-3, 0.9, 0.999, 1e-8, 0.01, true, t);
        }
      }
      EXPECT_EQ(std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(T)), 0) << "optimizer " << opt << ", n " << n;
      EXPECT_EQ(std::memcmp(ma.data(), mb.data(), ma.size() * sizeof(T)), 0) << "optimizer " << opt << ", n " << n;
      EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.size() * sizeof(T)), 0) << "optimizer " << opt << ", n " << n;
    }
  }
}

// Closed forms for three steps with a constant gradient.
TYPED_TEST(KernelsNumT, SgdAndMomentumClosedForm) {
  using T = TypeParam;
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 3.0}, g0 = {0.1, -0.2, 0.3, -4.0};
  const i64 n = 4;
  const double lr = 0.1, mu = 0.9, wd = 0.01;
  std::vector<T> g(g0.begin(), g0.end());
  auto run_sgd = [&](double decay) {
    std::vector<T> w(w0.begin(), w0.end());
    for (int t = 0; t < 3; ++t) cpu::sgd_update(w.data(), g.data(), n, lr, decay);
    return w;
  };
  auto sgd = run_sgd(0.0), sgd_wd = run_sgd(wd);
  const double a = 1 - lr * wd;  // w <- a w - lr g
  for (i64 i = 0; i < n; ++i) {
    EXPECT_TRUE(near<T>(sgd[i], w0[i] - 3 * lr * g0[i], 4));
    EXPECT_TRUE(near<T>(sgd_wd[i], a * a * a * w0[i] - lr * g0[i] * (1 + a + a * a), 4));
  }
  for (bool nesterov : {false, true}) {
    std::vector<T> w(w0.begin(), w0.end()), v(n, T(0));
    for (int t = 0; t < 3; ++t) cpu::momentum_update(w.data(), v.data(), g.data(), n, lr, mu, 0.0, nesterov);
    // v_t = g (1 + mu + .. + mu^(t-1)); the step is v_t, or g + mu v_t with Nesterov.
    const double steps = nesterov ? 3 + 3 * mu + 2 * mu * mu + mu * mu * mu : 3 + 2 * mu + mu * mu;
    for (i64 i = 0; i < n; ++i) {
      EXPECT_TRUE(near<T>(w[i], w0[i] - lr * g0[i] * steps, 8)) << nesterov << " " << i;
      EXPECT_TRUE(near<T>(v[i], g0[i] * (1 + mu + mu * mu), 8));
    }
  }
}

// Momentum with weight decay against the update rule spelled out in double.
TYPED_TEST(KernelsNumT, MomentumWithWeightDecay) {
  using T = TypeParam;
  std::mt19937 rg(17);
  const i64 n = 50;
  const double lr = 0.05, mu = 0.8, wd = 0.1;
  auto w0 = rand_vec<T>(n, rg);
  for (bool nesterov : {false, true}) {
    std::vector<T> w = w0, v(n, T(0));
    std::vector<double> rw(w0.begin(), w0.end()), rv(n, 0.0);
    for (int t = 0; t < 3; ++t) {
      auto g = rand_vec<T>(n, rg);
      cpu::momentum_update(w.data(), v.data(), g.data(), n, lr, mu, wd, nesterov);
      for (i64 i = 0; i < n; ++i) {
        const double gp = g[i] + wd * rw[i];
        rv[i] = mu * rv[i] + gp;
        rw[i] -= lr * (nesterov ? gp + mu * rv[i] : rv[i]);
      }
    }
    for (i64 i = 0; i < n; ++i) EXPECT_TRUE(near<T>(w[i], rw[i], 8)) << i;
  }
}

TYPED_TEST(KernelsNumT, AdamClosedForm) {
  using T = TypeParam;
  const std::vector<double> w0 = {0.5, -1.0, 2.0, 3.0}, g0 = {0.1, -0.2, 0.3, -4.0};
  const i64 n = 4;
  const double lr = 0.01, b2 = 0.999, eps = 1e-8, wd = 0.1;
  std::vector<T> g(g0.begin(), g0.end());
  // With a constant g, the bias-corrected moments are exactly g and g^2, so each Adam step is
  // lr g / (|g| + eps). b1 = 0.3 exercises the other branch of PyTorch's lerp.
  for (double b1 : {0.9, 0.3}) {
    for (bool adamw : {false, true}) {
      std::vector<T> w(w0.begin(), w0.end()), m(n, T(0)), v(n, T(0));
      for (i64 t = 1; t <= 3; ++t)
        cpu::adam_update(w.data(), m.data(), v.data(), g.data(), n, lr, b1, b2, eps, adamw ? wd : 0.0, true, t);
      const double a = adamw ? 1 - lr * wd : 1.0;
      for (i64 i = 0; i < n; ++i) {
        const double d = lr * g0[i] / (std::fabs(g0[i]) + eps);
        EXPECT_TRUE(near<T>(w[i], a * a * a * w0[i] - d * (1 + a + a * a), 8)) << b1 << " " << adamw << " " << i;
        EXPECT_TRUE(near<T>(m[i], (1 - b1 * b1 * b1) * g0[i], 8));
        EXPECT_TRUE(near<T>(v[i], (1 - b2 * b2 * b2) * g0[i] * g0[i], 8));
      }
    }
  }
  EXPECT_THROW(cpu::adam_update(g.data(), g.data(), g.data(), g.data(), n, lr, 0.9, b2, eps, 0.0, false, 0),
               std::invalid_argument);
}

// Adam with L2 decay folded into the gradient (decoupled = false), random gradients.
TYPED_TEST(KernelsNumT, AdamL2MatchesReference) {
  using T = TypeParam;
  std::mt19937 rg(18);
  const i64 n = 1000;  // more than one internal block of 512
  const double lr = 0.01, b1 = 0.9, b2 = 0.99, eps = 1e-6, wd = 0.05;
  auto w = rand_vec<T>(n, rg);
  std::vector<T> m(n, T(0)), v(n, T(0));
  std::vector<double> rw(w.begin(), w.end()), rm(n, 0.0), rv(n, 0.0);
  for (i64 t = 1; t <= 3; ++t) {
    auto g = rand_vec<T>(n, rg);
    cpu::adam_update(w.data(), m.data(), v.data(), g.data(), n, lr, b1, b2, eps, wd, false, t);
    for (i64 i = 0; i < n; ++i) {
      const double gp = g[i] + wd * rw[i];
      rm[i] = b1 * rm[i] + (1 - b1) * gp;
      rv[i] = b2 * rv[i] + (1 - b2) * gp * gp;
      const double mh = rm[i] / (1 - std::pow(b1, t)), vh = rv[i] / (1 - std::pow(b2, t));
      rw[i] -= lr * mh / (std::sqrt(vh) + eps);
    }
  }
  for (i64 i = 0; i < n; ++i) ASSERT_TRUE(near<T>(w[i], rw[i], 50)) << i;
}

// ---------------------------------------------------------------- randomness

TYPED_TEST(KernelsNumT, DropoutKeepsFractionAndScales) {
  using T = TypeParam;
  std::mt19937 g(19);
  const i64 n = 100000;
  const double rate = 0.3;
  auto x = rand_vec<T>(n, g);
  std::vector<T> y(n), mask(n), y2(n), mask2(n), y3(n), mask3(n);
  cpu::dropout(x.data(), y.data(), mask.data(), n, rate, 42, 7);
  const T scale = static_cast<T>(1 / (1 - rate));
  i64 kept = 0;
  for (i64 i = 0; i < n; ++i) {
    ASSERT_TRUE(mask[i] == T(0) || mask[i] == scale) << mask[i];
    ASSERT_EQ(y[i], x[i] * mask[i]);
    kept += mask[i] != T(0);
  }
  EXPECT_NEAR(double(kept) / n, 1 - rate, 0.01);

  // Same (seed, counter): same mask, whatever the thread count. Different counter or seed: not.
  {
    Threads threads(2);
    cpu::dropout(x.data(), y2.data(), mask2.data(), n, rate, 42, 7);
  }
  EXPECT_EQ(mask, mask2);
  EXPECT_EQ(y, y2);
  for (auto [seed, counter] : {std::pair<uint64_t, uint64_t>{42, 8}, {43, 7}}) {
    cpu::dropout(x.data(), y3.data(), mask3.data(), n, rate, seed, counter);
    i64 differ = 0;
    for (i64 i = 0; i < n; ++i) differ += mask[i] != mask3[i];
    EXPECT_GT(differ, n / 3) << seed << " " << counter;  // independent masks differ in 42%
  }
  // The mask is the documented function of (seed, counter, i), for the CUDA kernels to reproduce.
  const uint64_t key = rf::kernels::rng::stream_key(42, 7);
  for (i64 i = 0; i < 1000; ++i) ASSERT_EQ(mask[i] != T(0), rf::kernels::rng::keep(key, i, rate)) << i;

  cpu::dropout(x.data(), y3.data(), mask3.data(), n, 0.0, 1, 1);
  EXPECT_EQ(y3, x);
  cpu::dropout(x.data(), y3.data(), mask3.data(), n, 1.0, 1, 1);
  for (i64 i = 0; i < n; ++i) ASSERT_EQ(y3[i], T(0));
  EXPECT_THROW(cpu::dropout(x.data(), y3.data(), mask3.data(), n, 1.5, 1, 1), std::invalid_argument);
}

TYPED_TEST(KernelsNumT, FillUniformAndConstant) {
  using T = TypeParam;
  const i64 n = 100000;
  std::vector<T> y(n), y2(n), y3(n);
  cpu::fill_uniform(y.data(), n, -2.0, 3.0, 5);
  double sum = 0;
  for (T v : y) {
    ASSERT_GE(v, T(-2));
    ASSERT_LE(v, T(3));
    sum += v;
  }
  EXPECT_NEAR(sum / n, 0.5, 0.03);
  {
    Threads threads(2);
    cpu::fill_uniform(y2.data(), n, -2.0, 3.0, 5);
  }
  EXPECT_EQ(y, y2);
  cpu::fill_uniform(y3.data(), n, -2.0, 3.0, 6);
  EXPECT_NE(y, y3);
  cpu::fill_constant(y3.data(), n, 0.25);
  for (T v : y3) ASSERT_EQ(v, T(0.25));
}

TYPED_TEST(KernelsNumT, FillNormalMoments) {
  using T = TypeParam;
  const i64 n = 200001;  // odd: the last element has no pair partner in the buffer
  const double mean = 1.5, stddev = 2.0;
  std::vector<T> y(n), y2(n);
  cpu::fill_normal(y.data(), n, mean, stddev, 9);
  double s = 0, s2 = 0;
  i64 within = 0;
  for (T v : y) {
    ASSERT_TRUE(std::isfinite(v));
    s += v;
    s2 += double(v) * v;
    within += std::fabs(v - mean) < stddev;
  }
  const double m = s / n, sd = std::sqrt(s2 / n - m * m);
  EXPECT_NEAR(m, mean, 0.03);
  EXPECT_NEAR(sd, stddev, 0.04);
  EXPECT_NEAR(double(within) / n, 0.6827, 0.01);
  {
    Threads threads(2);
    cpu::fill_normal(y2.data(), n, mean, stddev, 9);
  }
  EXPECT_EQ(y, y2);
  // Each element is the documented function of (seed, i), also when computed alone.
  const uint64_t key = rf::kernels::rng::stream_key(9, rf::kernels::rng::kFillNormalCounter);
  for (i64 i : {i64(0), i64(1), i64(2), i64(12345), n - 1})
    ASSERT_EQ(y[i], static_cast<T>(rf::kernels::rng::normal(key, i, mean, stddev))) << i;
  // An odd-length prefix starts and ends mid-pair and must give the same values.
  std::vector<T> part(7);
  cpu::fill_normal(part.data(), 7, mean, stddev, 9);
  for (i64 i = 0; i < 7; ++i) ASSERT_EQ(part[i], y[i]);
}

// The portable log and sincos in random.h must be accurate, not just deterministic.
TEST(Kernels, RandomMathAccuracy) {
  std::mt19937_64 g(20);
  double max_log = 0, max_trig = 0;
  for (int k = 0; k < 200000; ++k) {
    const double u = rf::kernels::rng::unit(g());
    const double x = 1.0 - u;
    const double want = std::log(x);
    max_log = std::max(max_log, std::fabs(rf::kernels::rng::log_unit(x) - want) / std::max(1e-300, std::fabs(want)));
    double s, c;
    rf::kernels::rng::sincos_2pi(u, &s, &c);
    const double a = 2 * 3.14159265358979323846 * u;
    max_trig = std::max({max_trig, std::fabs(s - std::sin(a)), std::fabs(c - std::cos(a))});
  }
  EXPECT_EQ(rf::kernels::rng::log_unit(1.0), 0.0);
  EXPECT_LT(max_log, 1e-15);
  EXPECT_LT(max_trig, 3e-15);  // includes the rounding of 2 pi u in the reference itself
}

// ---------------------------------------------------------------- casts

uint32_t fbits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float bitsf(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t to_f16(float x) {
  uint16_t h;
  cpu::f32_to_f16(&x, &h, 1);
  return h;
}
float from_f16(uint16_t h) {
  float x;
  cpu::f16_to_f32(&h, &x, 1);
  return x;
}
uint16_t to_bf16(float x) {
  uint16_t h;
  cpu::f32_to_bf16(&x, &h, 1);
  return h;
}
float from_bf16(uint16_t h) {
  float x;
  cpu::bf16_to_f32(&h, &x, 1);
  return x;
}

// The value of a finite half, computed independently of half.h.
double half_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double v = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return (h & 0x8000) ? -v : v;
}

// Nearest-even half of a finite float by search over the half values: an independent reference.
uint16_t ref_f16(float x) {
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(double(x));
  uint16_t lo = 0;  // largest finite half <= a (positive halves are ordered like their bits)
  for (int step = 0x4000; step; step >>= 1)
    if (lo + step <= 0x7bff && half_value(uint16_t(lo + step)) <= a) lo = uint16_t(lo + step);
  const double vlo = half_value(lo), vhi = lo == 0x7bff ? 65536.0 : half_value(uint16_t(lo + 1));
  uint16_t r;
  if (a - vlo < vhi - a) r = lo;
  else if (a - vlo > vhi - a) r = uint16_t(lo + 1);
  else r = (lo & 1) ? uint16_t(lo + 1) : lo;
  return uint16_t(sign | r);  // lo + 1 == 0x7c00 is inf
}

TEST(Kernels, HalfKnownValues) {
  EXPECT_EQ(to_f16(1.0f), 0x3c00);
  EXPECT_EQ(to_f16(-2.0f), 0xc000);
  EXPECT_EQ(to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(to_f16(65519.0f), 0x7bff);
  EXPECT_EQ(to_f16(65520.0f), 0x7c00);  // halfway to 65536 with an odd mantissa: rounds to inf
  EXPECT_EQ(to_f16(1e-8f), 0x0000);     // below half the smallest subnormal
  EXPECT_EQ(to_f16(-1e-8f), 0x8000);
  EXPECT_EQ(to_f16(std::ldexp(1.0f, -24)), 0x0001);       // smallest subnormal
  EXPECT_EQ(to_f16(std::ldexp(1.0f, -25)), 0x0000);       // tie: to even (zero)
  EXPECT_EQ(to_f16(std::ldexp(1.5f, -25)), 0x0001);       // above the tie
  EXPECT_EQ(to_f16(std::ldexp(3.0f, -25)), 0x0002);       // tie 1.5 ulp: to even (2)
  EXPECT_EQ(to_f16(std::ldexp(1.0f, -14)), 0x0400);       // smallest normal
  EXPECT_EQ(to_f16(std::ldexp(1023.0f, -24)), 0x03ff);    // largest subnormal
  EXPECT_EQ(to_f16(std::ldexp(2047.0f, -25)), 0x0400);    // rounds up out of the subnormals
  EXPECT_EQ(to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);       // tie: to even
  EXPECT_EQ(to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);   // tie: to even
  EXPECT_EQ(to_f16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_EQ(to_f16(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(to_f16(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(to_f16(1e10f), 0x7c00);
  EXPECT_EQ(to_f16(-0.0f), 0x8000);
  const uint16_t hn = to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(hn & 0x7c00, 0x7c00);
  EXPECT_NE(hn & 0x03ff, 0);
  EXPECT_NE(to_f16(bitsf(0x7f800001u)) & 0x03ff, 0);  // payload only in dropped bits: still NaN

  EXPECT_EQ(from_f16(0x3c00), 1.0f);
  EXPECT_EQ(from_f16(0x7bff), 65504.0f);
  EXPECT_EQ(from_f16(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(from_f16(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(from_f16(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(from_f16(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(from_f16(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(from_f16(0x7e00)));
  EXPECT_TRUE(std::isnan(from_f16(0x7c01)));
  EXPECT_EQ(fbits(from_f16(0x8000)), 0x80000000u);
}

// Every half round-trips; the vector (F16C) and scalar paths agree bit for bit on every half and
// on random floats; and float -> half matches the search-based reference.
TEST(Kernels, HalfExhaustiveAndRandom) {
  std::vector<uint16_t> h(65536), back(65536);
  std::vector<float> f(65536);
  for (int i = 0; i < 65536; ++i) h[i] = uint16_t(i);
  cpu::f16_to_f32(h.data(), f.data(), 65536);
  cpu::f32_to_f16(f.data(), back.data(), 65536);
  for (int i = 0; i < 65536; ++i) {
    ASSERT_EQ(fbits(f[i]), fbits(rf::kernels::half_bits_to_float(h[i]))) << std::hex << i;
    const bool special = (i & 0x7c00) == 0x7c00;
    if (special && (i & 0x3ff)) {
      ASSERT_TRUE(std::isnan(f[i])) << std::hex << i;
      ASSERT_EQ(back[i] | 0x0200, i | 0x0200) << std::hex << i;  // the quiet bit may be set
      continue;
    }
    if (special) {
      ASSERT_TRUE(std::isinf(f[i])) << std::hex << i;
    } else {
      ASSERT_EQ(double(f[i]), half_value(uint16_t(i))) << std::hex << i;
    }
    ASSERT_EQ(back[i], h[i]) << std::hex << i;
  }
  std::mt19937 g(21);
  const int n = 400000;
  std::vector<float> x(n);
  std::vector<uint16_t> y(n);
  std::uniform_int_distribution<uint32_t> any_bits;
  std::uniform_real_distribution<double> in_range(-70000, 70000);
  std::uniform_int_distribution<int> small_exp(-30, -10);
  for (int i = 0; i < n; ++i) {
    switch (i % 3) {
      case 0: x[i] = bitsf(any_bits(g)); break;
      case 1: x[i] = static_cast<float>(in_range(g)); break;
      default: x[i] = std::ldexp(static_cast<float>(in_range(g) / 70000), small_exp(g)); break;
    }
  }
  cpu::f32_to_f16(x.data(), y.data(), n);
  for (int i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], rf::kernels::float_to_half_bits(x[i])) << std::hex << fbits(x[i]);
    if (!std::isnan(x[i])) {
      ASSERT_EQ(y[i], ref_f16(x[i])) << std::hex << fbits(x[i]);
    }
  }
}

TEST(Kernels, Bf16KnownValuesAndRounding) {
  EXPECT_EQ(to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);      // tie: to even
  EXPECT_EQ(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);  // tie: to even
  EXPECT_EQ(to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds past the largest bf16
  EXPECT_EQ(to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(to_bf16(1e-40f), uint16_t(fbits(1e-40f) >> 16));  // subnormal: rounds like the rest
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(bitsf(0x7f800001u)))));  // would truncate to inf
  EXPECT_TRUE(std::isnan(from_bf16(to_bf16(bitsf(0xff800001u)))));
  EXPECT_EQ(from_bf16(0x3f80), 1.0f);
  EXPECT_EQ(from_bf16(0x7f80), std::numeric_limits<float>::infinity());

  // Every bf16 round-trips, and random floats round to the nearer neighbour (ties to even).
  for (uint32_t i = 0; i < 65536; ++i) {
    const float v = from_bf16(uint16_t(i));
    ASSERT_EQ(fbits(v), i << 16);
    if (!std::isnan(v)) {
      ASSERT_EQ(to_bf16(v), uint16_t(i));
    }
  }
  std::mt19937 g(22);
  std::uniform_int_distribution<uint32_t> any_bits;
  const int n = 200000;
  std::vector<float> x(n);
  std::vector<uint16_t> y(n);
  for (auto& v : x) v = bitsf(any_bits(g));
  cpu::f32_to_bf16(x.data(), y.data(), n);
  for (int i = 0; i < n; ++i) {
    const uint32_t b = fbits(x[i]);
    if (std::isnan(x[i])) {
      ASSERT_TRUE(std::isnan(from_bf16(y[i])));
      continue;
    }
    if (std::isinf(x[i])) {
      ASSERT_EQ(y[i], uint16_t(b >> 16));
      continue;
    }
    const uint32_t lo = b & 0xffff0000u, hi = lo + 0x10000u;  // neighbours away from zero
    const double dlo = std::fabs(double(x[i]) - double(bitsf(lo)));
    const double dhi = (hi & 0x7fffffffu) >= 0x7f800000u ? std::ldexp(1.0, 128) - std::fabs(double(x[i]))
                                                        : std::fabs(double(bitsf(hi)) - double(x[i]));
    const uint32_t want = dlo < dhi ? lo : dlo > dhi ? hi : ((lo >> 16) & 1) ? hi : lo;
    ASSERT_EQ(y[i], uint16_t(want >> 16)) << std::hex << b;
  }
}


}  // namespace
