// Launch geometry shared by the CUDA kernels: 256-thread blocks and grid-stride loops.
#pragma once
#include <algorithm>

#include "kernels/common.h"

namespace rf::kernels::cuda {

inline constexpr int kBlock = 256;
// Grid-stride loops cover any n, so the grid only needs to fill the GPU (132 SMs x 2048 threads
// on an H100 is ~1k blocks of 256); the cap keeps it well inside gridDim.x's limit.
inline constexpr i64 kMaxGrid = 65536;

inline unsigned grid_for(i64 n) { return unsigned(std::clamp<i64>((n + kBlock - 1) / kBlock, 1, kMaxGrid)); }

}  // namespace rf::kernels::cuda

// for (i64 i = ...; i < n; ...): this thread's elements of [0, n) in a grid-stride loop.
#define RF_GRID_STRIDE(i, n) \
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += i64(gridDim.x) * blockDim.x)
// The same in index type I (the pool kernels' 32-bit path; the caller bounds n + the grid's size).
#define RF_GRID_STRIDE_AS(I, i, n) \
  for (I i = I(blockIdx.x) * I(blockDim.x) + I(threadIdx.x); i < (n); i += I(gridDim.x) * I(blockDim.x))
