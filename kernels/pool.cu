// CUDA 2-D max and average pooling (NCHW) with the CPU's semantics (pool_cpu.cpp). Own kernels
// rather than cuDNN's: MaxPool2D must produce the per-plane argmax that MaxPool2DGrad consumes
// (cuDNN's backward wants x and y instead), and writing both pools out keeps the CPU's tie and NaN
// rules and summation order exactly. One thread per output (forward) or per input (backward: it
// gathers from the windows that cover it, in the CPU's output order, so sums are bit-identical
// and need no atomics).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

void check_geom(const PoolGeom& g, const char* op) { check_pool_geom(g, op); }

// The geometry in the kernels' index type: 32-bit where every index fits (the common case; a 64-bit
// division is a ~70-instruction routine on the GPU and the pool kernels do several per element --
// H200, CNN batch 512: MaxPool2DGrad 180 us for 12.8M inputs), else 64-bit.
template <class I> struct Geom {
  I N, C, H, W, R, S, stride_h, stride_w, pad_h, pad_w, P, Q;
};
template <class I> Geom<I> geom_as(const PoolGeom& g) {
  return {I(g.N), I(g.C), I(g.H), I(g.W), I(g.R), I(g.S), I(g.stride_h), I(g.stride_w), I(g.pad_h), I(g.pad_w),
          I(g.P), I(g.Q)};
}
bool fits_int32(const PoolGeom& g) {
  // Headroom for the grid-stride step past the last index.
  const i64 lim = std::numeric_limits<int32_t>::max() - kMaxGrid * kBlock;
  return g.N * g.C * g.H * g.W <= lim && g.N * g.C * g.P * g.Q <= lim && g.H + g.pad_h + g.R <= lim &&
         g.W + g.pad_w + g.S <= lim && g.P * g.stride_h + g.R <= lim && g.Q * g.stride_w + g.S <= lim;
}

// Output index o's window along one axis, clipped to [0, n): [lo, hi); and the outputs whose
// windows cover input index i: [first, last].
template <class I> struct Span {
  I lo, hi;
};
template <class I> __device__ __forceinline__ Span<I> window(I o, I stride, I pad, I k, I n) {
  const I s = o * stride - pad;
  return {max(s, I(0)), min(s + k, n)};
}
template <class I> __device__ __forceinline__ Span<I> covering(I i, I stride, I pad, I k, I n_out) {
  const I t = i + pad;  // o * stride <= t < o * stride + k
  const I first = t >= k ? (t - k) / stride + 1 : 0;  // not (t - k + stride) / stride: stride may be near I's max
  return {first, min(t / stride, n_out - 1)};
}

// PyTorch's average divisor: the window clipped to the padded extent, padding included.
template <class I> __device__ __forceinline__ I divisor(I o, I stride, I pad, I k, I n) {
  const I s = o * stride - pad;
  return min(s + k, n + pad) - s;
}

template <class T, class I> __global__ void max_pool_kernel(const T* x, T* y, int32_t* argmax, Geom<I> g, I n) {
  RF_GRID_STRIDE_AS(I, o, n) {
    const I q = o % g.Q, p = (o / g.Q) % g.P, plane = o / (g.P * g.Q);
    const T* xp = x + i64(plane) * g.H * g.W;
    const Span<I> hs = window(p, g.stride_h, g.pad_h, g.R, g.H), ws = window(q, g.stride_w, g.pad_w, g.S, g.W);
    T best = -std::numeric_limits<T>::infinity();
    I idx = hs.lo * g.W + ws.lo;
    for (I h = hs.lo; h < hs.hi; ++h)
      for (I w = ws.lo; w < ws.hi; ++w) {
        const T v = xp[h * g.W + w];
        if (v > best || isnan(v)) best = v, idx = h * g.W + w;  // first maximum wins, NaN wins
      }
    y[o] = best;
    argmax[o] = static_cast<int32_t>(idx);
  }
}

template <class T, class I>
__global__ void max_pool_grad_kernel(const T* dy, const int32_t* argmax, T* dx, Geom<I> g, I n) {
  RF_GRID_STRIDE_AS(I, i, n) {
    const I w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const T* dyp = dy + i64(plane) * g.P * g.Q;
    const int32_t* ap = argmax + i64(plane) * g.P * g.Q;
    const Span<I> ps = covering(h, g.stride_h, g.pad_h, g.R, g.P), qs = covering(w, g.stride_w, g.pad_w, g.S, g.Q);
    const auto self = static_cast<int32_t>(h * g.W + w);
    T acc = 0;
    for (I p = ps.lo; p <= ps.hi; ++p)
      for (I q = qs.lo; q <= qs.hi; ++q)
        if (ap[p * g.Q + q] == self) acc += dyp[p * g.Q + q];
    dx[i] = acc;
  }
}

// Windows that tile the input exactly (stride == window, no padding, H = P*R, W = Q*S: the CNN's
// 2x2 pools): each input is in one window, so a thread per output writes its window -- dy at the
// argmax (0 + dy, as the general kernel's sum gives it), 0 elsewhere -- and no input searches for
// the windows that cover it.
template <class T, class I>
__global__ void max_pool_grad_tiled_kernel(const T* dy, const int32_t* argmax, T* dx, Geom<I> g, I n) {
  RF_GRID_STRIDE_AS(I, o, n) {
    const I q = o % g.Q, p = (o / g.Q) % g.P, plane = o / (g.P * g.Q);
    T* dxp = dx + i64(plane) * g.H * g.W;
    const int32_t a = argmax[o];
    const T v = T(0) + dy[o];
    for (I h = p * g.R; h < p * g.R + g.R; ++h)
      for (I w = q * g.S; w < q * g.S + g.S; ++w) dxp[h * g.W + w] = h * g.W + w == a ? v : T(0);
  }
}

template <class T, class I> __global__ void avg_pool_kernel(const T* x, T* y, Geom<I> g, I n) {
  RF_GRID_STRIDE_AS(I, o, n) {
    const I q = o % g.Q, p = (o / g.Q) % g.P, plane = o / (g.P * g.Q);
    const T* xp = x + i64(plane) * g.H * g.W;
    const Span<I> hs = window(p, g.stride_h, g.pad_h, g.R, g.H), ws = window(q, g.stride_w, g.pad_w, g.S, g.W);
    T sum = 0;
    for (I h = hs.lo; h < hs.hi; ++h)
      for (I w = ws.lo; w < ws.hi; ++w) sum += xp[h * g.W + w];
    // The window's area in 64 bits: R * S is not bounded by fits_int32.
    y[o] = sum / static_cast<T>(i64(divisor(p, g.stride_h, g.pad_h, g.R, g.H)) *
                                divisor(q, g.stride_w, g.pad_w, g.S, g.W));
  }
}

template <class T, class I> __global__ void avg_pool_grad_kernel(const T* dy, T* dx, Geom<I> g, I n) {
  RF_GRID_STRIDE_AS(I, i, n) {
    const I w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const T* dyp = dy + i64(plane) * g.P * g.Q;
    const Span<I> ps = covering(h, g.stride_h, g.pad_h, g.R, g.P), qs = covering(w, g.stride_w, g.pad_w, g.S, g.Q);
    T acc = 0;
    for (I p = ps.lo; p <= ps.hi; ++p) {
      const I dh = divisor(p, g.stride_h, g.pad_h, g.R, g.H);
      for (I q = qs.lo; q <= qs.hi; ++q)
        acc += dyp[p * g.Q + q] / static_cast<T>(i64(dh) * divisor(q, g.stride_w, g.pad_w, g.S, g.W));
    }
    dx[i] = acc;
  }
}

// Launches kernel<I> with the geometry and n in the narrowest index type that holds them.
template <class Launch> void with_index_type(const PoolGeom& g, Launch&& launch) {
  if (fits_int32(g))
    launch(geom_as<int32_t>(g), int32_t{});
  else
    launch(geom_as<i64>(g), i64{});
}

}  // namespace

template <class T> void max_pool2d(const T* x, T* y, int32_t* argmax, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "max_pool2d");
  const i64 n = g.N * g.C * g.P * g.Q;
  if (n == 0) return;
  with_index_type(g, [&](auto gi, auto i) {
    using I = decltype(i);
    max_pool_kernel<T, I><<<grid_for(n), kBlock, 0, stream>>>(x, y, argmax, gi, I(n));
  });
  CUDA_CHECK_LAUNCH();
}

template <class T>
void max_pool2d_grad(const T* dy, const int32_t* argmax, T* dx, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "max_pool2d_grad");
  const i64 n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  const bool tiled = g.stride_h == g.R && g.stride_w == g.S && g.pad_h == 0 && g.pad_w == 0 && g.P * g.R == g.H &&
                     g.Q * g.S == g.W;
  with_index_type(g, [&](auto gi, auto i) {
    using I = decltype(i);
    if (tiled) {
      const i64 n_out = g.N * g.C * g.P * g.Q;
      max_pool_grad_tiled_kernel<T, I><<<grid_for(n_out), kBlock, 0, stream>>>(dy, argmax, dx, gi, I(n_out));
    } else {
      max_pool_grad_kernel<T, I><<<grid_for(n), kBlock, 0, stream>>>(dy, argmax, dx, gi, I(n));
    }
  });
  CUDA_CHECK_LAUNCH();
}

template <class T> void avg_pool2d(const T* x, T* y, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "avg_pool2d");
  const i64 n = g.N * g.C * g.P * g.Q;
  if (n == 0) return;
  with_index_type(g, [&](auto gi, auto i) {
    using I = decltype(i);
    avg_pool_kernel<T, I><<<grid_for(n), kBlock, 0, stream>>>(x, y, gi, I(n));
  });
  CUDA_CHECK_LAUNCH();
}

template <class T> void avg_pool2d_grad(const T* dy, T* dx, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "avg_pool2d_grad");
  const i64 n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  with_index_type(g, [&](auto gi, auto i) {
    using I = decltype(i);
    avg_pool_grad_kernel<T, I><<<grid_for(n), kBlock, 0, stream>>>(dy, dx, gi, I(n));
  });
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(T)                                                                      \
  template void max_pool2d<T>(const T*, T*, int32_t*, const PoolGeom&, cudaStream_t);          \
  template void max_pool2d_grad<T>(const T*, const int32_t*, T*, const PoolGeom&, cudaStream_t); \
  template void avg_pool2d<T>(const T*, T*, const PoolGeom&, cudaStream_t);                    \
  template void avg_pool2d_grad<T>(const T*, T*, const PoolGeom&, cudaStream_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
