// 2-D max and average pooling for the CPU backend (NCHW), with PyTorch's semantics: max pooling
// records a per-plane argmax and ignores padding; average pooling counts padding (count_include_pad).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

#if defined(__AVX2__)
#include <immintrin.h>
#define RF_POOL_AVX2 1
#else
#define RF_POOL_AVX2 0
#endif

namespace rf::kernels::cpu {

namespace {

void check_geom(const PoolGeom& g, const char* op) { check_pool_geom(g, op); }

// f(plane) for every (n, c) plane, threaded over planes (each writes only its own outputs).
// A plane of a small CNN is a few hundred elements, far below what pays for starting threads,
// hence the grain.
template <class F>
void for_planes(const PoolGeom& g, F&& f) {
  parallel_range(g.N * g.C, std::max<i64>(1, 32768 / (g.H * g.W)), [&](i64 pl0, i64 pl1) {
    for (i64 plane = pl0; plane < pl1; ++plane) f(plane);
  });
}

// The clipped window [lo, hi) of output index o along one axis.
struct Span {
  i64 lo, hi;
};
inline Span span(i64 o, i64 stride, i64 pad, i64 k, i64 n) {
  const i64 s = o * stride - pad;
  return {std::max<i64>(s, 0), std::min<i64>(s + k, n)};
}

#if RF_POOL_AVX2
// 8 outputs of a 2x2/2 window row pair: even/odd columns are split apart, then the four
// candidates are compared in the scalar scan order with the same NaN rule.
inline void max_2x2_x8(const float* r0, const float* r1, float* y, int32_t* am, int32_t base, int32_t W) {
  auto split = [](const float* r, __m256& even, __m256& odd) {
    const __m256 a = _mm256_loadu_ps(r), b = _mm256_loadu_ps(r + 8);
    // shuffle_ps works per 128-bit lane; permute4x64 restores column order across lanes.
    even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  };
  __m256 v[4];
  split(r0, v[0], v[1]);
  split(r1, v[2], v[3]);
  const __m256i col = _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
  const __m256i off[4] = {col, _mm256_add_epi32(col, _mm256_set1_epi32(1)), _mm256_add_epi32(col, _mm256_set1_epi32(W)),
                          _mm256_add_epi32(col, _mm256_set1_epi32(W + 1))};
  __m256 best = v[0];
  __m256i idx = off[0];
  for (int i = 1; i < 4; ++i) {
    const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v[i], best, _CMP_GT_OQ), _mm256_cmp_ps(v[i], v[i], _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, v[i], take);
    idx = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(idx), _mm256_castsi256_ps(off[i]), take));
  }
  _mm256_storeu_ps(y, best);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(am), idx);
}
#endif

// 2x2 stride-2 unpadded windows are what CNNs use; a fixed window lets the compiler unroll it.
template <class T>
void max_plane_2x2(const T* x, T* y, int32_t* am, i64 H, i64 W, i64 P, i64 Q) {
  for (i64 p = 0; p < P; ++p) {
    const T* r0 = x + 2 * p * W;
    const T* r1 = r0 + W;
    const int32_t base = static_cast<int32_t>(2 * p * W);
    i64 q = 0;
#if RF_POOL_AVX2
    if constexpr (std::is_same_v<T, float>)
      for (; q + 8 <= Q; q += 8)
        max_2x2_x8(r0 + 2 * q, r1 + 2 * q, y + p * Q + q, am + p * Q + q, base + int32_t(2 * q), int32_t(W));
#endif
    for (; q < Q; ++q) {
      // Same scan order and comparison as the generic loop (first maximum wins, NaN wins).
      T best = r0[2 * q];
      int32_t idx = base + static_cast<int32_t>(2 * q);
      if (r0[2 * q + 1] > best || std::isnan(r0[2 * q + 1])) best = r0[2 * q + 1], idx = base + int32_t(2 * q + 1);
      if (r1[2 * q] > best || std::isnan(r1[2 * q])) best = r1[2 * q], idx = base + int32_t(W + 2 * q);
      if (r1[2 * q + 1] > best || std::isnan(r1[2 * q + 1])) best = r1[2 * q + 1], idx = base + int32_t(W + 2 * q + 1);
      y[p * Q + q] = best;
      am[p * Q + q] = idx;
    }
  }
}

}  // namespace

template <class T>
void max_pool2d(const T* x, T* y, int32_t* argmax, const PoolGeom& g) {
  check_geom(g, "max_pool2d");
  const i64 HW = g.H * g.W, PQ = g.P * g.Q;
  const bool k2s2 = g.R == 2 && g.S == 2 && g.stride_h == 2 && g.stride_w == 2 && g.pad_h == 0 && g.pad_w == 0 &&
                    2 * g.P <= g.H && 2 * g.Q <= g.W;
  for_planes(g, [&](i64 plane) {
    const T* xp = x + plane * HW;
    T* yp = y + plane * PQ;
    int32_t* ap = argmax + plane * PQ;
    if (k2s2) {
      max_plane_2x2(xp, yp, ap, g.H, g.W, g.P, g.Q);
      return;
    }
    for (i64 p = 0; p < g.P; ++p) {
      const Span hs = span(p, g.stride_h, g.pad_h, g.R, g.H);
      for (i64 q = 0; q < g.Q; ++q) {
        const Span ws = span(q, g.stride_w, g.pad_w, g.S, g.W);
        T best = -std::numeric_limits<T>::infinity();
        i64 idx = hs.lo * g.W + ws.lo;
        for (i64 h = hs.lo; h < hs.hi; ++h)
          for (i64 w = ws.lo; w < ws.hi; ++w) {
            const T v = xp[h * g.W + w];
            if (v > best || std::isnan(v)) best = v, idx = h * g.W + w;
          }
        yp[p * g.Q + q] = best;
        ap[p * g.Q + q] = static_cast<int32_t>(idx);
      }
    }
  });
}

template <class T>
void max_pool2d_grad(const T* dy, const int32_t* argmax, T* dx, const PoolGeom& g) {
  check_geom(g, "max_pool2d_grad");
  const i64 HW = g.H * g.W, PQ = g.P * g.Q;
  std::atomic<bool> bad{false};
  for_planes(g, [&](i64 plane) {
    T* dxp = dx + plane * HW;
    std::fill(dxp, dxp + HW, T(0));
    const T* dyp = dy + plane * PQ;
    const int32_t* ap = argmax + plane * PQ;
    for (i64 o = 0; o < PQ; ++o) {
      const int32_t i = ap[o];
      // max_pool2d's argmax lies in its output's window; the CUDA kernels gather per input over
      // the covering windows, so an index elsewhere would count here and not there: refuse it.
      const i64 h = i / g.W - (o / g.Q) * g.stride_h + g.pad_h, w = i % g.W - (o % g.Q) * g.stride_w + g.pad_w;
      if (i < 0 || i >= HW || h < 0 || h >= g.R || w < 0 || w >= g.S) {
        bad.store(true, std::memory_order_relaxed);
        continue;
      }
      dxp[i] += dyp[o];
    }
  });
  if (bad) throw std::invalid_argument("max_pool2d_grad: an argmax index outside its output's pooling window");
}

template <class T>
void avg_pool2d(const T* x, T* y, const PoolGeom& g) {
  check_geom(g, "avg_pool2d");
  const i64 HW = g.H * g.W, PQ = g.P * g.Q;
  for_planes(g, [&](i64 plane) {
    const T* xp = x + plane * HW;
    T* yp = y + plane * PQ;
    for (i64 p = 0; p < g.P; ++p) {
      const Span hs = span(p, g.stride_h, g.pad_h, g.R, g.H);
      const i64 h0 = p * g.stride_h - g.pad_h;
      // PyTorch's divisor: the window clipped to the padded extent, padding included.
      const i64 dh = std::min(h0 + g.R, g.H + g.pad_h) - h0;
      for (i64 q = 0; q < g.Q; ++q) {
        const Span ws = span(q, g.stride_w, g.pad_w, g.S, g.W);
        const i64 w0 = q * g.stride_w - g.pad_w;
        const i64 dw = std::min(w0 + g.S, g.W + g.pad_w) - w0;
        T sum = 0;
        for (i64 h = hs.lo; h < hs.hi; ++h)
          for (i64 w = ws.lo; w < ws.hi; ++w) sum += xp[h * g.W + w];
        yp[p * g.Q + q] = sum / static_cast<T>(dh * dw);
      }
    }
  });
}

template <class T>
void avg_pool2d_grad(const T* dy, T* dx, const PoolGeom& g) {
  check_geom(g, "avg_pool2d_grad");
  const i64 HW = g.H * g.W, PQ = g.P * g.Q;
  for_planes(g, [&](i64 plane) {
    T* dxp = dx + plane * HW;
    std::fill(dxp, dxp + HW, T(0));
    const T* dyp = dy + plane * PQ;
    for (i64 p = 0; p < g.P; ++p) {
      const Span hs = span(p, g.stride_h, g.pad_h, g.R, g.H);
      const i64 h0 = p * g.stride_h - g.pad_h;
      const i64 dh = std::min(h0 + g.R, g.H + g.pad_h) - h0;
      for (i64 q = 0; q < g.Q; ++q) {
        const Span ws = span(q, g.stride_w, g.pad_w, g.S, g.W);
        const i64 w0 = q * g.stride_w - g.pad_w;
        const i64 dw = std::min(w0 + g.S, g.W + g.pad_w) - w0;
        const T v = dyp[p * g.Q + q] / static_cast<T>(dh * dw);
        for (i64 h = hs.lo; h < hs.hi; ++h)
          for (i64 w = ws.lo; w < ws.hi; ++w) dxp[h * g.W + w] += v;
      }
    }
  });
}

template void max_pool2d<float>(const float*, float*, int32_t*, const PoolGeom&);
template void max_pool2d<double>(const double*, double*, int32_t*, const PoolGeom&);
template void max_pool2d_grad<float>(const float*, const int32_t*, float*, const PoolGeom&);
template void max_pool2d_grad<double>(const double*, const int32_t*, double*, const PoolGeom&);
template void avg_pool2d<float>(const float*, float*, const PoolGeom&);
template void avg_pool2d<double>(const double*, double*, const PoolGeom&);
template void avg_pool2d_grad<float>(const float*, float*, const PoolGeom&);
template void avg_pool2d_grad<double>(const double*, double*, const PoolGeom&);

}  // namespace rf::kernels::cpu
