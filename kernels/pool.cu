// CUDA 2-D max and average pooling (NCHW) with the CPU's semantics (pool_cpu.cpp). Own kernels
// rather than cuDNN's: MaxPool2D must produce the per-plane argmax that MaxPool2DGrad consumes
// (cuDNN's backward wants x and y instead), and writing both pools out keeps the CPU's tie and NaN
// rules and summation order exactly. One thread per output (forward) or per input (backward: it
// gathers from the windows that cover it, in the CPU's output order, so sums are bit-identical
// and need no atomics).
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

void check_geom(const PoolGeom& g, const char* op) { check_pool_geom(g, op); }

// Output index o's window along one axis, clipped to [0, n): [lo, hi); and the outputs whose
// windows cover input index i: [first, last].
struct Span {
  i64 lo, hi;
};
__device__ __forceinline__ Span window(i64 o, i64 stride, i64 pad, i64 k, i64 n) {
  const i64 s = o * stride - pad;
  return {max(s, i64(0)), min(s + k, n)};
}
__device__ __forceinline__ Span covering(i64 i, i64 stride, i64 pad, i64 k, i64 n_out) {
  const i64 t = i + pad;  // o * stride <= t < o * stride + k
  const i64 first = t - k + 1 > 0 ? (t - k + stride) / stride : 0;
  return {first, min(t / stride, n_out - 1)};
}

// PyTorch's average divisor: the window clipped to the padded extent, padding included.
__device__ __forceinline__ i64 divisor(i64 o, i64 stride, i64 pad, i64 k, i64 n) {
  const i64 s = o * stride - pad;
  return min(s + k, n + pad) - s;
}

template <class T> __global__ void max_pool_kernel(const T* x, T* y, int32_t* argmax, PoolGeom g, i64 n) {
  RF_GRID_STRIDE(o, n) {
    const i64 q = o % g.Q, p = (o / g.Q) % g.P, plane = o / (g.P * g.Q);
    const T* xp = x + plane * g.H * g.W;
    const Span hs = window(p, g.stride_h, g.pad_h, g.R, g.H), ws = window(q, g.stride_w, g.pad_w, g.S, g.W);
    T best = -std::numeric_limits<T>::infinity();
    i64 idx = hs.lo * g.W + ws.lo;
    for (i64 h = hs.lo; h < hs.hi; ++h)
      for (i64 w = ws.lo; w < ws.hi; ++w) {
        const T v = xp[h * g.W + w];
        if (v > best || isnan(v)) best = v, idx = h * g.W + w;  // first maximum wins, NaN wins
      }
    y[o] = best;
    argmax[o] = static_cast<int32_t>(idx);
  }
}

template <class T> __global__ void max_pool_grad_kernel(const T* dy, const int32_t* argmax, T* dx, PoolGeom g, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const i64 w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const T* dyp = dy + plane * g.P * g.Q;
    const int32_t* ap = argmax + plane * g.P * g.Q;
    const Span ps = covering(h, g.stride_h, g.pad_h, g.R, g.P), qs = covering(w, g.stride_w, g.pad_w, g.S, g.Q);
    const auto self = static_cast<int32_t>(h * g.W + w);
    T acc = 0;
    for (i64 p = ps.lo; p <= ps.hi; ++p)
      for (i64 q = qs.lo; q <= qs.hi; ++q)
        if (ap[p * g.Q + q] == self) acc += dyp[p * g.Q + q];
    dx[i] = acc;
  }
}

template <class T> __global__ void avg_pool_kernel(const T* x, T* y, PoolGeom g, i64 n) {
  RF_GRID_STRIDE(o, n) {
    const i64 q = o % g.Q, p = (o / g.Q) % g.P, plane = o / (g.P * g.Q);
    const T* xp = x + plane * g.H * g.W;
    const Span hs = window(p, g.stride_h, g.pad_h, g.R, g.H), ws = window(q, g.stride_w, g.pad_w, g.S, g.W);
    T sum = 0;
    for (i64 h = hs.lo; h < hs.hi; ++h)
      for (i64 w = ws.lo; w < ws.hi; ++w) sum += xp[h * g.W + w];
    y[o] = sum / static_cast<T>(divisor(p, g.stride_h, g.pad_h, g.R, g.H) * divisor(q, g.stride_w, g.pad_w, g.S, g.W));
  }
}

template <class T> __global__ void avg_pool_grad_kernel(const T* dy, T* dx, PoolGeom g, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const i64 w = i % g.W, h = (i / g.W) % g.H, plane = i / (g.H * g.W);
    const T* dyp = dy + plane * g.P * g.Q;
    const Span ps = covering(h, g.stride_h, g.pad_h, g.R, g.P), qs = covering(w, g.stride_w, g.pad_w, g.S, g.Q);
    T acc = 0;
    for (i64 p = ps.lo; p <= ps.hi; ++p) {
      const i64 dh = divisor(p, g.stride_h, g.pad_h, g.R, g.H);
      for (i64 q = qs.lo; q <= qs.hi; ++q)
        acc += dyp[p * g.Q + q] / static_cast<T>(dh * divisor(q, g.stride_w, g.pad_w, g.S, g.W));
    }
    dx[i] = acc;
  }
}


}  // namespace

template <class T> void max_pool2d(const T* x, T* y, int32_t* argmax, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "max_pool2d");
  const i64 n = g.N * g.C * g.P * g.Q;
  if (n == 0) return;
  max_pool_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(x, y, argmax, g, n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void max_pool2d_grad(const T* dy, const int32_t* argmax, T* dx, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "max_pool2d_grad");
  const i64 n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  max_pool_grad_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(dy, argmax, dx, g, n);
  CUDA_CHECK_LAUNCH();
}

template <class T> void avg_pool2d(const T* x, T* y, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "avg_pool2d");
  const i64 n = g.N * g.C * g.P * g.Q;
  if (n == 0) return;
  avg_pool_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(x, y, g, n);
  CUDA_CHECK_LAUNCH();
}

template <class T> void avg_pool2d_grad(const T* dy, T* dx, const PoolGeom& g, cudaStream_t stream) {
  check_geom(g, "avg_pool2d_grad");
  const i64 n = g.N * g.C * g.H * g.W;
  if (n == 0) return;
  avg_pool_grad_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(dy, dx, g, n);
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
