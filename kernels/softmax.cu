// CUDA softmax family over the last axis of a [rows, cols] matrix and the fused sparse softmax
// cross-entropy (kernels/cuda.h). A row is reduced by one warp (cols <= 1024) or one block, with
// warp shuffles; the same max-shift and double exp sum as softmax_cpu.cpp.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "kernels/row_reduce.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

using rows::kWarpRowMax;

using rows::Max;
using rows::Plus;
using rows::row_reduce;

// Row loop shared by every kernel: rows advance by the grid; all threads of a row take the same
// iterations, so the block-wide barriers in row_reduce are uniform.
#define RF_FOR_ROWS(r) \
  for (i64 r = i64(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += i64(gridDim.x) * blockDim.y)
#define RF_FOR_COLS(i) for (i64 i = threadIdx.x; i < cols; i += kThreads)

template <int kThreads, class T> __device__ T row_max(const T* xr, i64 cols) {
  T m = -std::numeric_limits<T>::infinity();
  RF_FOR_COLS(i) m = Max{}(m, xr[i]);
  return row_reduce<kThreads>(m, Max{});
}

template <int kThreads, class T> __device__ double row_sum_exp(const T* xr, T m, i64 cols) {
  double s = 0;
  RF_FOR_COLS(i) s += static_cast<double>(exp(xr[i] - m));
  return row_reduce<kThreads>(s, Plus{});
}

template <class T, int kThreads, bool kLog> __global__ void softmax_kernel(const T* x, T* y, i64 rows, i64 cols) {
  RF_FOR_ROWS(r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T m = row_max<kThreads>(xr, cols);
    const double s = row_sum_exp<kThreads>(xr, m, cols);
    if constexpr (kLog) {
      const T lse = static_cast<T>(log(s));
      RF_FOR_COLS(i) yr[i] = (xr[i] - m) - lse;  // not x - (m + lse): see softmax_cpu.cpp
    } else {
      const T inv = static_cast<T>(1.0 / s);
      RF_FOR_COLS(i) yr[i] = exp(xr[i] - m) * inv;
    }
  }
}

// kLog: dx = dy - exp(y) sum(dy); else dx = y (dy - sum(dy y)).
template <class T, int kThreads, bool kLog>
__global__ void softmax_grad_kernel(const T* dy, const T* y, T* dx, i64 rows, i64 cols) {
  RF_FOR_ROWS(r) {
    const T* dyr = dy + r * cols;
    const T* yr = y + r * cols;
    T* dxr = dx + r * cols;
    double s = 0;
    RF_FOR_COLS(i) s += kLog ? static_cast<double>(dyr[i]) : static_cast<double>(dyr[i]) * static_cast<double>(yr[i]);
    const T t = static_cast<T>(row_reduce<kThreads>(s, Plus{}));
    if constexpr (kLog) {
      RF_FOR_COLS(i) dxr[i] = dyr[i] - exp(yr[i]) * t;
    } else {
      RF_FOR_COLS(i) dxr[i] = yr[i] * (dyr[i] - t);
    }
  }
}

// A row labelled ignore_index gives zeros; `on` / `off` are the smoothed target at / off the
// label (1 and 0 without smoothing, eps = 0).
template <class T, class L, int kThreads>
__global__ void sparse_xent_kernel(const T* logits, const L* labels, T* loss, T* backprop, i64 rows, i64 cols,
                                   i64 ignore_index, double eps, T on, T off) {
  RF_FOR_ROWS(r) {
    const T* xr = logits + r * cols;
    T* br = backprop + r * cols;
    const i64 label = static_cast<i64>(labels[r]);
    if (label == ignore_index) {  // uniform over the row's threads
      if (threadIdx.x == 0) loss[r] = T(0);
      RF_FOR_COLS(i) br[i] = T(0);
      continue;
    }
    if (label < 0 || label >= cols) {  // uniform over the row's threads
      const T nan = std::numeric_limits<T>::quiet_NaN();
      if (threadIdx.x == 0) loss[r] = nan;
      RF_FOR_COLS(i) br[i] = nan;
      continue;
    }
    const T m = row_max<kThreads>(xr, cols);
    const double s = row_sum_exp<kThreads>(xr, m, cols);
    double l = log(s) - static_cast<double>(xr[label] - m);
    if (eps != 0) {  // uniform: the row's threads all reduce
      double sum_xm = 0;
      RF_FOR_COLS(i) sum_xm += static_cast<double>(xr[i] - m);
      sum_xm = row_reduce<kThreads>(sum_xm, Plus{});
      l = log(s) - (1.0 - eps) * static_cast<double>(xr[label] - m) - eps / static_cast<double>(cols) * sum_xm;
    }
    if (threadIdx.x == 0) loss[r] = static_cast<T>(l);
    const T inv = static_cast<T>(1.0 / s);
    RF_FOR_COLS(i) {
      const T p = exp(xr[i] - m) * inv;
      br[i] = p - (i == label ? on : off);
    }
  }
}

#undef RF_FOR_ROWS
#undef RF_FOR_COLS

template <class T> __global__ void sparse_xent_grad_kernel(const T* dloss, const T* backprop, T* dlogits, i64 n, i64 cols) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += i64(gridDim.x) * blockDim.x)
    dlogits[i] = dloss[i / cols] * backprop[i];
}

using rows::launch_rows;

}  // namespace

template <class T> void softmax(const T* x, T* y, i64 rows, i64 cols, cudaStream_t stream) {
  launch_rows(softmax_kernel<T, 32, false>, softmax_kernel<T, kBlock, false>, rows, cols, stream, x, y, rows, cols);
}

template <class T> void log_softmax(const T* x, T* y, i64 rows, i64 cols, cudaStream_t stream) {
  launch_rows(softmax_kernel<T, 32, true>, softmax_kernel<T, kBlock, true>, rows, cols, stream, x, y, rows, cols);
}

template <class T> void softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols, cudaStream_t stream) {
  launch_rows(softmax_grad_kernel<T, 32, false>, softmax_grad_kernel<T, kBlock, false>, rows, cols, stream, dy, y, dx,
              rows, cols);
}

template <class T> void log_softmax_grad(const T* dy, const T* y, T* dx, i64 rows, i64 cols, cudaStream_t stream) {
  launch_rows(softmax_grad_kernel<T, 32, true>, softmax_grad_kernel<T, kBlock, true>, rows, cols, stream, dy, y, dx,
              rows, cols);
}

template <class T, class L>
void sparse_xent(const T* logits, const L* labels, T* loss, T* backprop, i64 rows, i64 cols, cudaStream_t stream,
                 i64 ignore_index, double label_smoothing) {
  if (cols <= 0 && rows > 0) throw std::invalid_argument("sparse_xent: no classes");
  const double eps = label_smoothing;
  const T off = static_cast<T>(eps / static_cast<double>(cols));
  const T on = static_cast<T>(1.0 - eps + eps / static_cast<double>(cols));
  launch_rows(sparse_xent_kernel<T, L, 32>, sparse_xent_kernel<T, L, kBlock>, rows, cols, stream, logits, labels, loss,
              backprop, rows, cols, ignore_index, eps, on, off);
}

template <class T>
void sparse_xent_grad(const T* dloss, const T* backprop, T* dlogits, i64 rows, i64 cols, cudaStream_t stream) {
  const i64 n = rows * cols;
  if (n <= 0) return;
  const auto grid = unsigned(std::min<i64>((n + kBlock - 1) / kBlock, kMaxGrid));
  sparse_xent_grad_kernel<T><<<grid, kBlock, 0, stream>>>(dloss, backprop, dlogits, n, cols);
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(T)                                                                                   \
  template void softmax<T>(const T*, T*, i64, i64, cudaStream_t);                                           \
  template void log_softmax<T>(const T*, T*, i64, i64, cudaStream_t);                                       \
  template void softmax_grad<T>(const T*, const T*, T*, i64, i64, cudaStream_t);                            \
  template void log_softmax_grad<T>(const T*, const T*, T*, i64, i64, cudaStream_t);                        \
  template void sparse_xent<T, int32_t>(const T*, const int32_t*, T*, T*, i64, i64, cudaStream_t, i64, double); \
  template void sparse_xent<T, int64_t>(const T*, const int64_t*, T*, T*, i64, i64, cudaStream_t, i64, double); \
  template void sparse_xent_grad<T>(const T*, const T*, T*, i64, i64, cudaStream_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
