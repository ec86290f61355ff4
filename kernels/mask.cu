// CUDA masks (kernels/cuda.h): Where and Compare with broadcasting (grid-stride loops over the
// output) and the fused masked softmax (a row per warp up to 1024 columns, else per block, with
// the max shift and double exp sum of softmax.cu; x + mask is formed in registers only).
#include <algorithm>
#include <cmath>
#include <cstdint>
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

// Element strides of K operands along each output axis (0 where an operand is broadcast); the
// output's dims. Passed by value to the kernels.
template <int K> struct Bcast {
  Shape out;
  i64 st[K][Shape::kMaxRank] = {};
};

template <int K> Bcast<K> make_bcast(const char* fn, const Shape& os, const Shape* const (&ins)[K]) {
  Bcast<K> b;
  b.out = os;
  for (int k = 0; k < K; ++k) {
    const Shape& s = *ins[k];
    if (s.rank != os.rank)
      throw std::invalid_argument(std::string(fn) + ": operand " + s.str() + " does not have the rank of " + os.str() +
                                  " (pad with 1s first)");
    i64 acc = 1;
    for (int d = s.rank - 1; d >= 0; --d) {
      if (s[d] != 1 && s[d] != os[d])
        throw std::invalid_argument(std::string(fn) + ": operand " + s.str() + " does not broadcast to " + os.str());
      b.st[k][d] = s[d] == 1 ? 0 : acc;
      acc *= s[d];
    }
  }
  return b;
}

// Offsets in the K operands of the flat index i over the output's first `rank` axes.
template <int K>
__device__ __forceinline__ void offsets(i64 i, const Bcast<K>& b, int rank, i64 (&off)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k) off[k] = 0;
  for (int d = rank - 1; d >= 0; --d) {
    const i64 idx = i % b.out.dims[d];
    i /= b.out.dims[d];
#pragma unroll
    for (int k = 0; k < K; ++k) off[k] += idx * b.st[k][d];
  }
}

template <class T> __global__ void where_kernel(const uint8_t* cond, const T* x, const T* y, T* out, Bcast<3> b, i64 n) {
  RF_GRID_STRIDE(i, n) {
    i64 off[3];
    offsets(i, b, b.out.rank, off);
    out[i] = cond[off[0]] ? x[off[1]] : y[off[2]];
  }
}

template <class T>
__global__ void compare_kernel(CompareOp op, const T* a, const T* c, uint8_t* out, Bcast<2> b, i64 n) {
  RF_GRID_STRIDE(i, n) {
    i64 off[2];
    offsets(i, b, b.out.rank, off);
    out[i] = compare_values(op, a[off[0]], c[off[1]]) ? 1 : 0;
  }
}

using rows::Max;
using rows::Plus;
using rows::row_reduce;

// b holds the mask's strides over x's axes; rows are x's leading axes, the last is the row.
template <class T, int kThreads>
__global__ void masked_softmax_kernel(const T* x, const T* mask, T* y, Bcast<1> b, i64 rows, i64 cols) {
  const int last = b.out.rank - 1;
  const i64 mc = b.st[0][last];
  for (i64 r = i64(blockIdx.x) * blockDim.y + threadIdx.y; r < rows; r += i64(gridDim.x) * blockDim.y) {
    i64 off[1];
    offsets(r, b, last, off);
    const T* xr = x + r * cols;
    const T* mr = mask + off[0];
    T* yr = y + r * cols;
    T m = -std::numeric_limits<T>::infinity();
    for (i64 i = threadIdx.x; i < cols; i += kThreads) m = Max{}(m, xr[i] + mr[i * mc]);
    m = row_reduce<kThreads>(m, Max{});
    if (m == -std::numeric_limits<T>::infinity()) {  // fully masked (uniform over the row): zeros
      for (i64 i = threadIdx.x; i < cols; i += kThreads) yr[i] = T(0);
      continue;
    }
    double s = 0;
    for (i64 i = threadIdx.x; i < cols; i += kThreads) s += static_cast<double>(exp(xr[i] + mr[i * mc] - m));
    s = row_reduce<kThreads>(s, Plus{});
    const T inv = static_cast<T>(1.0 / s);
    for (i64 i = threadIdx.x; i < cols; i += kThreads) yr[i] = exp(xr[i] + mr[i * mc] - m) * inv;
  }
}

}  // namespace

template <class T>
void where(const uint8_t* cond, const Shape& cs, const T* x, const Shape& xs, const T* y, const Shape& ys, T* out,
           const Shape& os, cudaStream_t stream) {
  const Shape* const ins[3] = {&cs, &xs, &ys};
  const Bcast<3> b = make_bcast("where", os, ins);
  const i64 n = os.numel();
  if (n <= 0) return;
  where_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(cond, x, y, out, b, n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void compare(CompareOp op, const T* a, const Shape& as, const T* b, const Shape& bs, uint8_t* out, const Shape& os,
             cudaStream_t stream) {
  const Shape* const ins[2] = {&as, &bs};
  const Bcast<2> bc = make_bcast("compare", os, ins);
  const i64 n = os.numel();
  if (n <= 0) return;
  compare_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(op, a, b, out, bc, n);
  CUDA_CHECK_LAUNCH();
}

template <class T>
void masked_softmax(const T* x, const Shape& xs, const T* mask, const Shape& ms, T* y, cudaStream_t stream) {
  if (xs.rank < 1) throw std::invalid_argument("masked_softmax: x needs rank >= 1");
  const Shape* const ins[1] = {&ms};
  const Bcast<1> b = make_bcast("masked_softmax", xs, ins);
  const i64 cols = xs.dim(-1);
  const i64 rows = cols > 0 ? xs.numel() / cols : 0;
  if (rows <= 0) return;
  const bool wide = cols > kWarpRowMax;
  const int rows_per_block = wide ? 1 : kBlock / 32;
  const dim3 block(wide ? kBlock : 32, unsigned(rows_per_block));
  const auto grid = unsigned(std::min<i64>((rows + rows_per_block - 1) / rows_per_block, kMaxGrid));
  if (wide)
    masked_softmax_kernel<T, kBlock><<<grid, block, 0, stream>>>(x, mask, y, b, rows, cols);
  else
    masked_softmax_kernel<T, 32><<<grid, block, 0, stream>>>(x, mask, y, b, rows, cols);
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE_FLOAT(T)                                                                                     \
  template void where<T>(const uint8_t*, const Shape&, const T*, const Shape&, const T*, const Shape&, T*,          \
                         const Shape&, cudaStream_t);                                                              \
  template void masked_softmax<T>(const T*, const Shape&, const T*, const Shape&, T*, cudaStream_t);
#define RF_INSTANTIATE_COMPARE(T) \
  template void compare<T>(CompareOp, const T*, const Shape&, const T*, const Shape&, uint8_t*, const Shape&, cudaStream_t);
RF_INSTANTIATE_FLOAT(float)
RF_INSTANTIATE_FLOAT(double)
RF_INSTANTIATE_COMPARE(float)
RF_INSTANTIATE_COMPARE(double)
RF_INSTANTIATE_COMPARE(int32_t)
RF_INSTANTIATE_COMPARE(int64_t)
#undef RF_INSTANTIATE_FLOAT
#undef RF_INSTANTIATE_COMPARE

}  // namespace rf::kernels::cuda
