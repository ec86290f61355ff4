// CPU optimizer steps (SGD, momentum/Nesterov, Adam/AdamW) with PyTorch's update order, so a
// run can be compared step by step with torch.optim. Arithmetic is in T; only scalars are double.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "kernels/cpu.h"
#include "kernels/parallel.h"


namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds, more than an entire update of a typical layer's parameters.
constexpr i64 kGrain = 1 << 15;


// The per-call options are template parameters so each loop body is branch-free, which GCC needs
// before it will vectorize it. Weight decay is skipped, not multiplied by 0, when wd == 0, as
// PyTorch does (0 * inf would be NaN).

template <bool kDecay, class T>
void sgd_loop(T* w, const T* g, i64 b, i64 e, T nlr, T wd) {
  RF_IVDEP
  for (i64 i = b; i < e; ++i) {
    T gi = g[i];
    if constexpr (kDecay) gi += wd * w[i];
    w[i] += nlr * gi;
  }
}

template <bool kDecay, bool kNesterov, class T>
void momentum_loop(T* w, T* v, const T* g, i64 b, i64 e, T nlr, T mu, T wd) {
  RF_IVDEP
  for (i64 i = b; i < e; ++i) {
    T gi = g[i];
    if constexpr (kDecay) gi += wd * w[i];
    const T vi = mu * v[i] + gi;
    v[i] = vi;
    if constexpr (kNesterov) w[i] += nlr * (gi + mu * vi);
    else w[i] += nlr * vi;
  }
}

template <class T>
struct AdamScalars {
  T neg_step, bc2_sqrt, eps, b2, one_minus_b2, lerp_w, one_minus_lerp_w, wd, shrink;
};

// std::sqrt sets errno on negative input, so GCC (without -fno-math-errno) keeps a scalar libm
// fallback per element and refuses to vectorize any loop containing it; "#pragma GCC optimize"
// does not lift that for the vectorizer. So the Adam loop runs in L1-sized blocks: vectorizable
// moment updates, then the square roots with explicit SIMD, then the vectorizable weight update.
inline void sqrt_inplace(float* x, i64 n) {
  i64 i = 0;
#if defined(__AVX__)
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}
inline void sqrt_inplace(double* x, i64 n) {
  i64 i = 0;
#if defined(__AVX__)
  for (; i + 4 <= n; i += 4) _mm256_storeu_pd(x + i, _mm256_sqrt_pd(_mm256_loadu_pd(x + i)));
#endif
  for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

template <int kDecay /* 0 none, 1 L2 into g, 2 decoupled */, bool kLerpLow, class T>
void adam_loop(T* w, T* m, T* v, const T* g, i64 b, i64 e, const AdamScalars<T>& s) {
  constexpr i64 kBlock = 512;
  T root[kBlock];
  for (i64 i0 = b; i0 < e; i0 += kBlock) {
    const i64 len = std::min(kBlock, e - i0);
    T* wb = w + i0;
    T* mb = m + i0;
    T* vb = v + i0;
    const T* gb = g + i0;
    RF_IVDEP
    for (i64 j = 0; j < len; ++j) {
      T gi = gb[j];
      if constexpr (kDecay == 2) wb[j] *= s.shrink;
      if constexpr (kDecay == 1) gi += s.wd * wb[j];
      // m.lerp_(g, 1 - b1): PyTorch's lerp is a + w (b - a) for w < 0.5, else b - (b - a)(1 - w).
      T mi;
      if constexpr (kLerpLow) mi = mb[j] + s.lerp_w * (gi - mb[j]);
      else mi = gi - (gi - mb[j]) * s.one_minus_lerp_w;
      const T vi = vb[j] * s.b2 + s.one_minus_b2 * gi * gi;
      mb[j] = mi;
      vb[j] = vi;
      root[j] = vi;
    }
    sqrt_inplace(root, len);
    RF_IVDEP
    for (i64 j = 0; j < len; ++j) wb[j] += s.neg_step * mb[j] / (root[j] / s.bc2_sqrt + s.eps);
  }
}

// Runs body(w_offset, gradient, length) over [b, e): one source is passed through; several are
// averaged tile by tile (L1-sized) in source order, ((g0 + g1) + ...) / count, as the collectives'
// Avg does, and the update loop then reads the tile.
template <class T, class Body>
void with_grad(GradIn<T> g, i64 b, i64 e, Body&& body) {
  if (g.count == 1) return body(b, g.src(0) + b, e - b);
  constexpr i64 kTile = 1024;
  T tile[kTile];
  const T div = static_cast<T>(g.count);
  for (i64 i0 = b; i0 < e; i0 += kTile) {
    const i64 len = std::min(kTile, e - i0);
    const T* s0 = g.src(0) + i0;
    const T* s1 = g.src(1) + i0;
    RF_IVDEP
    for (i64 j = 0; j < len; ++j) tile[j] = s0[j] + s1[j];
    for (int k = 2; k < g.count; ++k) {
      const T* sk = g.src(k) + i0;
      RF_IVDEP
      for (i64 j = 0; j < len; ++j) tile[j] += sk[j];
    }
    RF_IVDEP
    for (i64 j = 0; j < len; ++j) tile[j] /= div;
    body(i0, tile, len);
  }
}

}  // namespace

template <class T>
void sgd_update(T* w, GradArg<T> g, i64 n, double lr, double wd) {
  const T nlr = static_cast<T>(-lr), wdt = static_cast<T>(wd);
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    with_grad(g, b, e, [&](i64 o, const T* gt, i64 len) {
      if (wd != 0) sgd_loop<true>(w + o, gt, 0, len, nlr, wdt);
      else sgd_loop<false>(w + o, gt, 0, len, nlr, wdt);
    });
  });
}

template <class T>
void momentum_update(T* w, T* v, GradArg<T> g, i64 n, double lr, double mu, double wd, bool nesterov) {
  const T nlr = static_cast<T>(-lr), mut = static_cast<T>(mu), wdt = static_cast<T>(wd);
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    with_grad(g, b, e, [&](i64 o, const T* gt, i64 len) {
      if (wd != 0) {
        if (nesterov) momentum_loop<true, true>(w + o, v + o, gt, 0, len, nlr, mut, wdt);
        else momentum_loop<true, false>(w + o, v + o, gt, 0, len, nlr, mut, wdt);
      } else {
        if (nesterov) momentum_loop<false, true>(w + o, v + o, gt, 0, len, nlr, mut, wdt);
        else momentum_loop<false, false>(w + o, v + o, gt, 0, len, nlr, mut, wdt);
      }
    });
  });
}

template <class T>
void adam_update(T* w, T* m, T* v, GradArg<T> g, i64 n, double lr, double b1, double b2, double eps,
                 double wd, bool decoupled, i64 t) {
  if (t < 1) throw std::invalid_argument("adam_update: step t must be >= 1, got " + std::to_string(t));
  // The scalars as torch.optim.Adam's single-tensor path forms them: in double, then used in T.
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(t));
  const double lw = 1.0 - b1;
  const AdamScalars<T> s{static_cast<T>(-(lr / bc1)), static_cast<T>(std::sqrt(bc2)),  static_cast<T>(eps),
                         static_cast<T>(b2),          static_cast<T>(1.0 - b2),         static_cast<T>(lw),
                         static_cast<T>(1.0 - lw),    static_cast<T>(wd),               static_cast<T>(1.0 - lr * wd)};
  const int decay = wd == 0 ? 0 : decoupled ? 2 : 1;
  const bool low = lw < 0.5;
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    with_grad(g, b, e, [&](i64 o, const T* gt, i64 len) {
      switch (decay * 2 + (low ? 1 : 0)) {
        case 0: adam_loop<0, false>(w + o, m + o, v + o, gt, 0, len, s); break;
        case 1: adam_loop<0, true>(w + o, m + o, v + o, gt, 0, len, s); break;
        case 2: adam_loop<1, false>(w + o, m + o, v + o, gt, 0, len, s); break;
        case 3: adam_loop<1, true>(w + o, m + o, v + o, gt, 0, len, s); break;
        case 4: adam_loop<2, false>(w + o, m + o, v + o, gt, 0, len, s); break;
        default: adam_loop<2, true>(w + o, m + o, v + o, gt, 0, len, s); break;
      }
    });
  });
}

template void sgd_update<float>(float*, GradArg<float>, i64, double, double);
template void sgd_update<double>(double*, GradArg<double>, i64, double, double);
template void momentum_update<float>(float*, float*, GradArg<float>, i64, double, double, double, bool);
template void momentum_update<double>(double*, double*, GradArg<double>, i64, double, double, double, bool);
template void adam_update<float>(float*, float*, float*, GradArg<float>, i64, double, double, double, double, double,
                                 bool, i64);
template void adam_update<double>(double*, double*, double*, GradArg<double>, i64, double, double, double, double,
                                  double, bool, i64);

}  // namespace rf::kernels::cpu
