// Counter-based random numbers shared by the CPU and CUDA kernels: draw i is a pure function of
// (seed, counter, i), so results depend neither on the thread count nor on the backend.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/common.h"

namespace rf::kernels::rng {

// Bit-identical across backends needs every floating-point step to be exactly specified: only
// IEEE-exact operations (+ - * / sqrt floor frexp, explicit fma) appear below, never an
// expression a compiler could contract into an fma on one backend and not the other, and log /
// sin / cos are our own polynomials instead of the (differently rounded) libm / CUDA versions.

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio, SplitMix64's step

// Counters the fill kernels use with their seed, far from the small counters dropout uses, so a
// fill and a dropout with the same seed do not share their stream.
constexpr uint64_t kFillUniformCounter = ~uint64_t(0);
constexpr uint64_t kFillNormalCounter = ~uint64_t(0) - 1;

// SplitMix64's output function (Steele, Lea, Flood 2014): a bijection with full avalanche.
RF_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of one draw. Each key starts a SplitMix64 sequence (below) at a pseudo-random point of
// its 2^64 cycle, so two draws overlap only with probability ~ n^2 / 2^64.
RF_HD uint64_t stream_key(uint64_t seed, uint64_t counter) { return mix64(mix64(seed) + counter * kGolden); }

// Element i of the draw with this key: the SplitMix64 sequence, random access.
RF_HD uint64_t bits(uint64_t key, uint64_t i) { return mix64(key + (i + 1) * kGolden); }

// Top 53 bits as a double in [0, 1); exact.
RF_HD double unit(uint64_t r) { return static_cast<double>(r >> 11) * 0x1.0p-53; }

// Dropout keeps element i with probability 1 - rate.
RF_HD bool keep(uint64_t key, uint64_t i, double rate) { return unit(bits(key, i)) >= rate; }

// Uniform in [lo, hi) (hi itself can appear after rounding to a narrower T).
RF_HD double uniform(uint64_t key, uint64_t i, double lo, double hi) {
  return fma(hi - lo, unit(bits(key, i)), lo);
}

// Natural log of x in (0, 1] (all Box-Muller needs), to ~1 ulp: x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1), |s| < 0.172, by its series to s^23.
RF_HD double log_unit(double x) {
  int e;
  double m = frexp(x, &e);  // m in [0.5, 1)
  if (m < 0.70710678118654752440) {
    m = m + m;
    e -= 1;
  }
  const double f = m - 1.0;  // exact (Sterbenz)
  const double s = f / (2.0 + f);
  const double z = s * s;
  double p = 1.0 / 23;
  p = fma(p, z, 1.0 / 21);
  p = fma(p, z, 1.0 / 19);
  p = fma(p, z, 1.0 / 17);
  p = fma(p, z, 1.0 / 15);
  p = fma(p, z, 1.0 / 13);
  p = fma(p, z, 1.0 / 11);
  p = fma(p, z, 1.0 / 9);
  p = fma(p, z, 1.0 / 7);
  p = fma(p, z, 1.0 / 5);
  p = fma(p, z, 1.0 / 3);
  const double s2 = s + s;
  const double zp = z * p;
  const double log_m = fma(s2, zp, s2);
  return fma(static_cast<double>(e), 0.69314718055994530942, log_m);
}

// cos(2 pi u) and sin(2 pi u) for u in [0, 1), to ~1 ulp: u = (k + r) / 4 with integer k and
// r in [-1/2, 1/2] (both exact), angle a = r pi/2 in [-pi/4, pi/4], Taylor series to a^20,
// then rotated by k quarter turns.
RF_HD void sincos_2pi(double u, double* s_out, double* c_out) {
  const double t = 4.0 * u;
  const double k = floor(t + 0.5);
  const double a = (t - k) * 1.57079632679489661923;
  const double z = a * a;
  double ps = -1.0 / 121645100408832000.0;  // -1/19!
  ps = fma(ps, z, 1.0 / 355687428096000.0);  // 1/17!
  ps = fma(ps, z, -1.0 / 1307674368000.0);   // -1/15!
  ps = fma(ps, z, 1.0 / 6227020800.0);       // 1/13!
  ps = fma(ps, z, -1.0 / 39916800.0);        // -1/11!
  ps = fma(ps, z, 1.0 / 362880.0);           // 1/9!
  ps = fma(ps, z, -1.0 / 5040.0);
  ps = fma(ps, z, 1.0 / 120.0);
  ps = fma(ps, z, -1.0 / 6.0);
  const double az = a * z;
  const double s = fma(az, ps, a);
  double pc = 1.0 / 2432902008176640000.0;  // 1/20!
  pc = fma(pc, z, -1.0 / 6402373705728000.0);  // -1/18!
  pc = fma(pc, z, 1.0 / 20922789888000.0);     // 1/16!
  pc = fma(pc, z, -1.0 / 87178291200.0);       // -1/14!
  pc = fma(pc, z, 1.0 / 479001600.0);          // 1/12!
  pc = fma(pc, z, -1.0 / 3628800.0);           // -1/10!
  pc = fma(pc, z, 1.0 / 40320.0);              // 1/8!
  pc = fma(pc, z, -1.0 / 720.0);
  pc = fma(pc, z, 1.0 / 24.0);
  pc = fma(pc, z, -0.5);
  const double c = fma(z, pc, 1.0);
  switch (static_cast<int>(k) & 3) {
    case 0: *s_out = s; *c_out = c; break;
    case 1: *s_out = c; *c_out = -s; break;
    case 2: *s_out = -s; *c_out = -c; break;
    default: *s_out = -c; *c_out = s; break;
  }
}

// Standard normals by Box-Muller: elements 2j and 2j+1 take the cosine and sine halves of the
// uniform pair (bits 2j, 2j+1), so any element can also be computed alone.
RF_HD void normal_pair(uint64_t key, uint64_t j, double* z_even, double* z_odd) {
  const uint64_t i = j & ~uint64_t(1);
  const double u1 = 1.0 - unit(bits(key, i));  // (0, 1]: the log stays finite
  const double u2 = unit(bits(key, i + 1));
  const double radius = sqrt(-2.0 * log_unit(u1));
  double s, c;
  sincos_2pi(u2, &s, &c);
  *z_even = radius * c;
  *z_odd = radius * s;
}

RF_HD double normal(uint64_t key, uint64_t i) {
  double z0, z1;
  normal_pair(key, i, &z0, &z1);
  return (i & 1) ? z1 : z0;
}

// The value fill_normal stores (before rounding to T).
RF_HD double normal(uint64_t key, uint64_t i, double mean, double stddev) { return fma(stddev, normal(key, i), mean); }

}  // namespace rf::kernels::rng
