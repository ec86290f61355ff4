// Row reductions of the CUDA kernels that give a row to a warp or a block (softmax.cu, mask.cu):
// the reducing functors and row_reduce. Device code only; include from .cu files.
#pragma once

namespace rf::kernels::cuda::rows {

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

}  // namespace rf::kernels::cuda::rows
