// Layer normalisation over the last axis for the CUDA backend (LayerNorm, LayerNormGrad), the
// arithmetic of layernorm_cpu.cpp: row statistics in double, two passes (mean, then squared
// deviations). A row belongs to one warp (cols <= 1024) or one block, as in softmax.cu. dgamma
// and dbeta are column sums: blocks of 32 columns x a slab of rows write double partial sums to
// the workspace, a second kernel adds each column's slabs in order (deterministic, no atomics;
// the slab count depends only on the shape, so every GPU gives the same bits).
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "kernels/row_reduce.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

using rows::kWarpRowMax;

// Sum over the kThreads threads of a row (kernels/row_reduce.cuh): 32 (a warp per row, blockDim.y
// rows per block) or kBlock (the block is one row).
template <int kThreads> __device__ double row_sum(double v) { return rows::row_reduce<kThreads>(v, rows::Plus{}); }

// Rows advance by the grid; every thread of a row takes the same iterations (uniform barriers).
#define RF_FOR_ROWS(r) \
  for (i64 r = i64(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += i64(gridDim.x) * blockDim.y)
#define RF_FOR_COLS(i) for (i64 i = threadIdx.x; i < cols; i += kThreads)

template <class T, int kThreads>
__global__ void layer_norm_kernel(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, i64 rows,
                                  i64 cols, double eps) {
  RF_FOR_ROWS(r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    double s = 0;
    RF_FOR_COLS(i) s += double(xr[i]);
    const double m = row_sum<kThreads>(s) / double(cols);
    double q = 0;
    RF_FOR_COLS(i) {
      const double d = double(xr[i]) - m;
      q += d * d;
    }
    const double rs = 1.0 / sqrt(row_sum<kThreads>(q) / double(cols) + eps);
    if (threadIdx.x == 0) {
      mean[r] = T(m);
      rstd[r] = T(rs);
    }
    const T mt = T(m), rt = T(rs);
    RF_FOR_COLS(i) yr[i] = (xr[i] - mt) * rt * gamma[i] + beta[i];
  }
}

template <class T, int kThreads>
__global__ void layer_norm_dx_kernel(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd, T* dx,
                                     i64 rows, i64 cols) {
  RF_FOR_ROWS(r) {
    const T* dyr = dy + r * cols;
    const T* xr = x + r * cols;
    T* dxr = dx + r * cols;
    const T mt = mean[r], rt = rstd[r];
    double sg = 0, sgx = 0;
    RF_FOR_COLS(i) {
      const double g = double(dyr[i]) * double(gamma[i]);
      sg += g;
      sgx += g * (double(xr[i] - mt) * double(rt));
    }
    const T a = T(row_sum<kThreads>(sg) / double(cols));
    const T b = T(row_sum<kThreads>(sgx) / double(cols));
    RF_FOR_COLS(i) {
      const T xhat = (xr[i] - mt) * rt;
      dxr[i] = rt * (dyr[i] * gamma[i] - a - xhat * b);
    }
  }
}

#undef RF_FOR_ROWS
#undef RF_FOR_COLS

constexpr int kColTile = 32, kRowLanes = 8;  // a partial-sum block: 32 columns x 8 row lanes
constexpr i64 kSlabRows = 256;               // rows per slab (the last may be shorter)
constexpr i64 kMaxSlabs = 512;

i64 slabs_for(i64 rows) { return std::clamp<i64>((rows + kSlabRows - 1) / kSlabRows, 1, kMaxSlabs); }

// part[s][c] (dgamma) and part[S + s][c] (dbeta): column c's sums over slab s's rows.
template <class T>
__global__ void layer_norm_partial_kernel(const T* dy, const T* x, const T* mean, const T* rstd, double* part,
                                          i64 rows, i64 cols, i64 slab) {
  __shared__ double sg[kRowLanes][kColTile], sb[kRowLanes][kColTile];
  const i64 c = i64(blockIdx.x) * kColTile + threadIdx.x;
  const i64 s = blockIdx.y, r0 = s * slab, r1 = r0 + slab < rows ? r0 + slab : rows;
  double g = 0, b = 0;
  if (c < cols)
    for (i64 r = r0 + threadIdx.y; r < r1; r += kRowLanes) {
      const T d = dy[r * cols + c];
      g += double(d) * double((x[r * cols + c] - mean[r]) * rstd[r]);
      b += double(d);
    }
  sg[threadIdx.y][threadIdx.x] = g;
  sb[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    for (int j = 1; j < kRowLanes; ++j) {
      g += sg[j][threadIdx.x];
      b += sb[j][threadIdx.x];
    }
    part[s * cols + c] = g;
    part[(gridDim.y + s) * cols + c] = b;
  }
}

template <class T> __global__ void layer_norm_finish_kernel(const double* part, T* dgamma, T* dbeta, i64 cols, i64 S) {
  RF_GRID_STRIDE(c, cols) {
    double g = 0, b = 0;
    for (i64 s = 0; s < S; ++s) {
      g += part[s * cols + c];
      b += part[(S + s) * cols + c];
    }
    dgamma[c] = T(g);
    dbeta[c] = T(b);
  }
}

using rows::launch_rows;

template <class T> __global__ void fill_kernel(T* y, i64 n, T v) {
  RF_GRID_STRIDE(i, n) y[i] = v;
}

}  // namespace

template <class T>
void layer_norm(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd, i64 rows, i64 cols, double eps,
                cudaStream_t stream) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("layer_norm: negative dimension");
  if (rows > 0 && cols == 0) {  // statistics of nothing: NaN, as on the CPU
    fill_kernel<T><<<grid_for(rows), kBlock, 0, stream>>>(mean, rows, std::numeric_limits<T>::quiet_NaN());
    CUDA_CHECK_LAUNCH();
    fill_kernel<T><<<grid_for(rows), kBlock, 0, stream>>>(rstd, rows, std::numeric_limits<T>::quiet_NaN());
    CUDA_CHECK_LAUNCH();
    return;
  }
  launch_rows(layer_norm_kernel<T, 32>, layer_norm_kernel<T, kBlock>, rows, cols, stream, x, gamma, beta, y, mean,
              rstd, rows, cols, eps);
}

size_t layer_norm_grad_workspace_bytes(i64 rows, i64 cols) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("layer_norm_grad: negative dimension");
  return size_t(2 * slabs_for(rows) * cols) * sizeof(double);
}

template <class T>
void layer_norm_grad(const T* dy, const T* x, const T* gamma, const T* mean, const T* rstd, T* dx, T* dgamma,
                     T* dbeta, i64 rows, i64 cols, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const size_t need = layer_norm_grad_workspace_bytes(rows, cols);
  if (cols == 0) return;
  if (workspace == nullptr || workspace_bytes < need)
    throw std::invalid_argument("layer_norm_grad: the workspace has " + std::to_string(workspace_bytes) +
                                " bytes, layer_norm_grad_workspace_bytes gives " + std::to_string(need));
  launch_rows(layer_norm_dx_kernel<T, 32>, layer_norm_dx_kernel<T, kBlock>, rows, cols, stream, dy, x, gamma, mean,
              rstd, dx, rows, cols);
  const i64 S = slabs_for(rows), slab = (rows + S - 1) / S;
  const i64 tiles = (cols + kColTile - 1) / kColTile;
  if (tiles > INT32_MAX) throw std::invalid_argument("layer_norm_grad: too many columns");
  auto* part = static_cast<double*>(workspace);
  layer_norm_partial_kernel<T><<<dim3(unsigned(tiles), unsigned(S)), dim3(kColTile, kRowLanes), 0, stream>>>(
      dy, x, mean, rstd, part, rows, cols, std::max<i64>(slab, 1));
  CUDA_CHECK_LAUNCH();
  layer_norm_finish_kernel<T><<<grid_for(cols), kBlock, 0, stream>>>(part, dgamma, dbeta, cols, S);
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(T)                                                                                   \
  template void layer_norm<T>(const T*, const T*, const T*, T*, T*, T*, i64, i64, double, cudaStream_t);    \
  template void layer_norm_grad<T>(const T*, const T*, const T*, const T*, const T*, T*, T*, T*, i64, i64, \
                                   void*, size_t, cudaStream_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
