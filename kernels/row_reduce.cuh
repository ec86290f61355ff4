// Row reductions of the CUDA kernels that give a row to a warp or a block (softmax.cu, mask.cu,
// layernorm.cu): the reducing functors, row_reduce and the launcher. Include from .cu files.
#pragma once
#include <algorithm>

#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda::rows {

constexpr i64 kWarpRowMax = 1024;  // up to this many columns a warp owns a row (<= 32 per lane)

struct Max {
  template <class A> __device__ A operator()(A a, A b) const { return b > a ? b : a; }
};
struct Plus {
  template <class A> __device__ A operator()(A a, A b) const { return a + b; }
};

// Reduces v over the kThreads threads of a row (threadIdx.x), every thread gets the result.
// kThreads is 32 (a warp per row) or the block size (the block is one row); every thread of the
// row must call it (block-wide barriers when kThreads > 32).
template <int kThreads, class A, class F> __device__ A row_reduce(A v, F f) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = f(v, __shfl_xor_sync(0xffffffffu, v, o));
  if constexpr (kThreads > 32) {
    __shared__ A part[kThreads / 32];
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = part[0];
#pragma unroll
    for (int i = 1; i < kThreads / 32; ++i) v = f(v, part[i]);
    __syncthreads();  // part is reused by the row's next reduction
  }
  return v;
}

// Launches the warp-per-row instance (blockDim (32, kBlock / 32)) for rows of up to kWarpRowMax
// columns, the block-per-row one (blockDim (kBlock, 1)) for wider rows, over a grid of row groups.
template <class... P, class... A>
void launch_rows(void (*narrow)(P...), void (*wide)(P...), i64 rows, i64 cols, cudaStream_t stream, A... args) {
  if (rows <= 0 || cols <= 0) return;
  const bool w = cols > kWarpRowMax;
  const int rows_per_block = w ? 1 : kBlock / 32;
  const dim3 block(w ? kBlock : 32, unsigned(rows_per_block));
  const auto grid = unsigned(std::min<i64>((rows + rows_per_block - 1) / rows_per_block, kMaxGrid));
  (w ? wide : narrow)<<<grid, block, 0, stream>>>(args...);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rf::kernels::cuda::rows
