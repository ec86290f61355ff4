// CUDA elementwise, broadcasting, reduction, bias and optimizer kernels (kernels/cuda.h). The math
// lives in the functors of kernels/elementwise.h so that CPU and GPU results agree by construction.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cub/block/block_reduce.cuh>

#include "kernels/cuda.h"
#include "kernels/launch.cuh"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

__device__ __forceinline__ i64 global_index() { return i64(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 grid_stride() { return i64(blockDim.x) * gridDim.x; }

void check_n(i64 n, const char* fn) {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": negative element count");
}

// Element strides of a contiguous tensor of shape s, with 0 on broadcast (size-1) axes of a
// tensor broadcast to out: indexing with out's multi-index then reads the right element.
struct Strides {
  i64 v[Shape::kMaxRank] = {};
};

Strides broadcast_strides(const Shape& s) {
  Strides st;
  i64 acc = 1;
  for (int d = s.rank - 1; d >= 0; --d) {
    st.v[d] = s.dims[d] == 1 ? 0 : acc;
    acc *= s.dims[d];
  }
  return st;
}

// Offsets of flat output index i in two broadcast inputs.
__device__ __forceinline__ void bcast_offsets(i64 i, const Shape& ys, const Strides& as, const Strides& bs,
                                              i64* ai, i64* bi) {
  i64 a = 0, b = 0;
  for (int d = ys.rank - 1; d >= 0; --d) {
    const i64 idx = i % ys.dims[d];
    i /= ys.dims[d];
    a += idx * as.v[d];
    b += idx * bs.v[d];
  }
  *ai = a;
  *bi = b;
}

// ---- elementwise kernels (F is one of the functors of elementwise.h) ----
// Flat kernels move 16 bytes a thread (float4 / double2) when every pointer is 16-byte aligned:
// one scalar load a thread keeps too few bytes in flight to fill HBM (H200, CNN batch 512: a
// 12.8M-element Relu took 62 us against ~25 us of traffic). The n % V tail goes to the first
// threads, after the vector loop; unaligned views take the scalar kernels.

template <class T> struct Vec16;
template <> struct Vec16<float> {
  using type = float4;
};
template <> struct Vec16<double> {
  using type = double2;
};
template <class T> inline constexpr int kLanes = int(16 / sizeof(T));

template <class T> bool aligned16(const T* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

template <class T> __device__ __forceinline__ T& lane(typename Vec16<T>::type& v, int k) {
  return reinterpret_cast<T*>(&v)[k];
}

template <class T, class F> __global__ void unary_kernel(F f, const T* x, T* y, i64 n) {
  for (i64 i = global_index(); i < n; i += grid_stride()) y[i] = f(x[i]);
}

template <class T, class F> __global__ void unary_vec_kernel(F f, const T* x, T* y, i64 n) {
  using V = typename Vec16<T>::type;
  constexpr int L = kLanes<T>;
  const i64 nv = n / L;
  const V* xv = reinterpret_cast<const V*>(x);
  V* yv = reinterpret_cast<V*>(y);
  for (i64 i = global_index(); i < nv; i += grid_stride()) {
    V v = xv[i];
#pragma unroll
    for (int k = 0; k < L; ++k) lane<T>(v, k) = f(lane<T>(v, k));
    yv[i] = v;
  }
  const i64 t = nv * L + global_index();
  if (t < n) y[t] = f(x[t]);
}

template <class T, class F> __global__ void binary_kernel(F f, const T* a, const T* b, T* y, i64 n) {
  for (i64 i = global_index(); i < n; i += grid_stride()) y[i] = f(a[i], b[i]);
}

template <class T, class F> __global__ void binary_vec_kernel(F f, const T* a, const T* b, T* y, i64 n) {
  using V = typename Vec16<T>::type;
  constexpr int L = kLanes<T>;
  const i64 nv = n / L;
  const V* av = reinterpret_cast<const V*>(a);
  const V* bv = reinterpret_cast<const V*>(b);
  V* yv = reinterpret_cast<V*>(y);
  for (i64 i = global_index(); i < nv; i += grid_stride()) {
    V u = av[i];
    const V w = bv[i];
#pragma unroll
    for (int k = 0; k < L; ++k) lane<T>(u, k) = f(lane<T>(u, k), reinterpret_cast<const T*>(&w)[k]);
    yv[i] = u;
  }
  const i64 t = nv * L + global_index();
  if (t < n) y[t] = f(a[t], b[t]);
}

template <class T, class F>
__global__ void binary_broadcast_kernel(F f, const T* a, Strides as, const T* b, Strides bs, T* y, Shape ys,
                                        i64 n) {
  for (i64 i = global_index(); i < n; i += grid_stride()) {
    i64 ai, bi;
    bcast_offsets(i, ys, as, bs, &ai, &bi);
    y[i] = f(a[ai], b[bi]);
  }
}

// y = f(x, c) runs as the unary kernels with c bound.
template <class T, class F> struct WithScalar {
  F f;
  T c;
  __device__ __forceinline__ T operator()(T x) const { return f(x, c); }
};

template <class T> __global__ void broadcast_kernel(const T* x, Strides xs, T* y, Shape ys, T scale, i64 n) {
  const Strides none{};
  for (i64 i = global_index(); i < n; i += grid_stride()) {
    i64 xi, unused;
    bcast_offsets(i, ys, xs, none, &xi, &unused);
    y[i] = x[xi] * scale;
  }
}

// Relu: the fused dense / convolution epilogue (Session's epilogue fusion), ReluF after the add.
template <class T, bool Relu>
__global__ void bias_add_kernel(const T* x, const T* b, T* y, i64 C, i64 inner, i64 n) {
  for (i64 i = global_index(); i < n; i += grid_stride()) {
    const T v = x[i] + b[(i / inner) % C];
    y[i] = Relu ? ReluF{}(v) : v;
  }
}

// Rows of a convolution's [N, C, H*W] (H*W >= 32): threadIdx.x along a row, blockDim.y rows a
// block (short rows share a block: conv2's 14x14 rows are 49 float4s), rows along grid y; one
// division per row, not two 64-bit ones per element. V is T, or T's 16-byte vector when the rows
// are whole vectors (inner % lanes == 0, aligned pointers); inner then counts vectors.
template <class T, class V, bool Relu>
__global__ void bias_add_rows_kernel(const V* x, const T* b, V* y, i64 C, i64 inner, i64 rows) {
  constexpr int L = int(sizeof(V) / sizeof(T));
  for (i64 r = i64(blockIdx.y) * blockDim.y + threadIdx.y; r < rows; r += i64(gridDim.y) * blockDim.y) {
    const T bias = b[r % C];
    const i64 base = r * inner;
    for (i64 j = i64(blockIdx.x) * blockDim.x + threadIdx.x; j < inner; j += i64(gridDim.x) * blockDim.x) {
      V v = x[base + j];
#pragma unroll
      for (int k = 0; k < L; ++k) {
        T& e = reinterpret_cast<T*>(&v)[k];
        e += bias;
        if (Relu) e = ReluF{}(e);
      }
      y[base + j] = v;
    }
  }
}

// ---- reduction ----
// A thread per output (many short reductions), a block per output (few long ones), or slabs of
// an output's rows (bias gradients, below); double accumulators; a block's partial sums are added
// by CUB's BlockReduce. (CUB's device-wide segmented reduce wants each segment contiguous; ours are
// strided, and a block per output already reads them coalesced.)

// The kept axes of the output (input strides; reduced axes have output size 1 and drop out of
// the offset) and the reduced axes (sizes and input strides).
struct ReducePlan {
  Shape out;                       // ys
  Strides out_stride;              // input stride of each output axis
  int red_rank = 0;
  i64 red_dims[Shape::kMaxRank] = {};
  i64 red_stride[Shape::kMaxRank] = {};
  i64 n_out = 0, n_red = 1;
};

__device__ __forceinline__ i64 reduce_base(i64 o, const ReducePlan& p) {
  i64 off = 0;
  for (int d = p.out.rank - 1; d >= 0; --d) {
    off += (o % p.out.dims[d]) * p.out_stride.v[d];
    o /= p.out.dims[d];
  }
  return off;
}

__device__ __forceinline__ i64 reduce_offset(i64 r, const ReducePlan& p) {
  i64 off = 0;
  for (int d = p.red_rank - 1; d >= 0; --d) {
    off += (r % p.red_dims[d]) * p.red_stride[d];
    r /= p.red_dims[d];
  }
  return off;
}

// Many outputs, short reductions: one thread per output, walking the reduced axes with an
// odometer (no divisions in the inner loop).
template <class T> __global__ void reduce_thread_kernel(const T* x, T* y, ReducePlan p, double scale) {
  for (i64 o = global_index(); o < p.n_out; o += grid_stride()) {
    i64 off = reduce_base(o, p);
    i64 idx[Shape::kMaxRank] = {};
    double acc = 0;
    for (i64 r = 0; r < p.n_red; ++r) {
      acc += double(x[off]);
      for (int d = p.red_rank - 1; d >= 0; --d) {
        off += p.red_stride[d];
        if (++idx[d] < p.red_dims[d]) break;
        off -= p.red_stride[d] * p.red_dims[d];
        idx[d] = 0;
      }
    }
    y[o] = T(acc * scale);
  }
}

// The block's threads' partial sums, added by CUB's BlockReduce (deterministic for a fixed block
// size), scaled and stored by thread 0; the temp storage may be reused on return.
using BlockSum = cub::BlockReduce<double, kBlock>;

template <class T>
__device__ __forceinline__ void block_sum_to(BlockSum::TempStorage& tmp, double acc, T* y, double scale) {
  const double total = BlockSum(tmp).Sum(acc);
  if (threadIdx.x == 0) *y = T(total * scale);
  __syncthreads();
}

// Few outputs, long reductions: one block per output, its partial sums added as above.
template <class T> __global__ void reduce_block_kernel(const T* x, T* y, ReducePlan p, double scale) {
  __shared__ BlockSum::TempStorage partial;
  for (i64 o = blockIdx.x; o < p.n_out; o += gridDim.x) {
    const i64 base = reduce_base(o, p);
    double acc = 0;
    for (i64 r = threadIdx.x; r < p.n_red; r += blockDim.x) acc += double(x[base + reduce_offset(r, p)]);
    block_sum_to(partial, acc, y + o, scale);
  }
}

// Few outputs whose reduced elements are rows: reduced axes [rows (any stride), cols (stride 1)],
// e.g. a convolution's bias gradient [N, C, H*W] -> [C]. As reduce_block_kernel, but the block
// walks each row with coalesced loads and no index arithmetic (reduce_offset's 64-bit divisions
// per element cost more than the loads).
template <class T> __global__ void reduce_rows_kernel(const T* x, T* y, ReducePlan p, i64 rows, i64 row_stride,
                                                      i64 cols, double scale) {
  __shared__ BlockSum::TempStorage partial;
  for (i64 o = blockIdx.x; o < p.n_out; o += gridDim.x) {
    const T* base = x + reduce_base(o, p);
    double acc = 0;
    for (i64 a = 0; a < rows; ++a) {
      const T* row = base + a * row_stride;
      for (i64 b = threadIdx.x; b < cols; b += blockDim.x) acc += double(row[b]);
    }
    block_sum_to(partial, acc, y + o, scale);
  }
}

// A convolution's bias gradient [outer, C, inner] -> [C] with long rows (inner >= 32): C alone is
// too few blocks to fill the GPU (the CNN's first layer at batch 512: 32 outputs of 401k elements
// each, 0.87 ms as a block per output on an H200), so each output's rows are cut into S slabs.
// Pass 1: block (s, c) sums slab s of channel c -- a warp per row, the lanes along the row
// (coalesced, no index arithmetic) -- into part[c * S + s]. Pass 2: thread c adds its S partials
// in order. Deterministic (no atomics); the partials live in the caller's workspace.
template <class T>
__global__ void bias_grad_partial_kernel(const T* dy, double* part, i64 outer, i64 C, i64 inner, int S) {
  __shared__ BlockSum::TempStorage partial;
  const i64 c = blockIdx.y, s = blockIdx.x;
  const i64 r0 = outer * s / S, r1 = outer * (s + 1) / S;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, nwarps = int(blockDim.x) / 32;
  double acc = 0;
  for (i64 r = r0 + warp; r < r1; r += nwarps) {
    const T* row = dy + (r * C + c) * inner;
#pragma unroll 4
    for (i64 j = lane; j < inner; j += 32) acc += double(row[j]);
  }
  block_sum_to(partial, acc, part + c * S + s, 1.0);
}

template <class T> __global__ void bias_grad_finish_kernel(const double* part, T* db, i64 C, int S) {
  RF_GRID_STRIDE(c, C) {
    double acc = 0;
    for (int s = 0; s < S; ++s) acc += part[c * S + s];
    db[c] = T(acc);
  }
}

// Slabs per output: about 1024 blocks in all (8 per SM on an H100/H200, the same on every GPU so
// that results do not depend on the card), at least 4096 elements each; 1 (no slabs) for short rows.
int bias_grad_slabs(i64 outer, i64 C, i64 inner) {
  if (inner < 32 || outer < 2 || C <= 0) return 1;
  const i64 by_blocks = (1024 + C - 1) / C, by_work = outer * inner / 4096;
  return int(std::clamp<i64>(std::min(by_blocks, by_work), 1, std::min<i64>(outer, 1024)));
}

// ---- optimizers ----
// The same arithmetic, in the same order, as kernels/optim_cpu.cpp (PyTorch's single-tensor
// path): scalars formed in double on the host, the update in T. Weight decay is skipped, not
// multiplied by 0, when wd == 0 (0 * inf would be NaN), as PyTorch does.

// One element of each update, shared by the single-tensor and the multi-tensor kernels so that
// both give bit-identical results.
template <class T> __device__ __forceinline__ void sgd_elem(T* w, const T* g, i64 i, const UpdateScalars<T>& s) {
  T gi = g[i];
  if (s.decay) gi += s.wd * w[i];
  w[i] += s.neg_lr * gi;
}

template <class T>
__device__ __forceinline__ void momentum_elem(T* w, T* v, const T* g, i64 i, const UpdateScalars<T>& s) {
  T gi = g[i];
  if (s.decay) gi += s.wd * w[i];
  const T vi = s.mu * v[i] + gi;
  v[i] = vi;
  w[i] += s.neg_lr * (s.nesterov ? gi + s.mu * vi : vi);
}

template <class T>
__device__ __forceinline__ void adam_elem(T* w, T* m, T* v, const T* g, i64 i, const UpdateScalars<T>& s) {
  T gi = g[i];
  T wi = w[i];
  if (s.decay == 2) wi *= s.shrink;
  if (s.decay == 1) gi += s.wd * wi;
  const T mo = m[i];
  const T mi = s.lerp_low ? mo + s.lerp_w * (gi - mo) : gi - (gi - mo) * s.one_minus_lerp_w;
  const T vi = v[i] * s.b2 + s.one_minus_b2 * gi * gi;
  m[i] = mi;
  v[i] = vi;
  w[i] = wi + s.neg_lr * mi / (sqrt(vi) / s.bc2_sqrt + s.eps);
}

template <class T, UpdateKind K>
__device__ __forceinline__ void update_elem(const MultiTensorEntry<T>& e, i64 i, const UpdateScalars<T>& s) {
  if constexpr (K == UpdateKind::SGD) sgd_elem(e.w, e.g, i, s);
  else if constexpr (K == UpdateKind::Momentum) momentum_elem(e.w, e.s1, e.g, i, s);
  else adam_elem(e.w, e.s1, e.s2, e.g, i, s);
}

template <class T, UpdateKind K> __global__ void update_kernel(MultiTensorEntry<T> e, UpdateScalars<T> s) {
  for (i64 i = global_index(); i < e.n; i += grid_stride()) update_elem<T, K>(e, i, s);
}

// apex's multi_tensor_apply without its launch-argument size limit: the tensor table and the
// chunk list live in device memory, and block b takes chunks b, b + gridDim.x, ...
template <class T, UpdateKind K>
__global__ void multi_update_kernel(const MultiTensorEntry<T>* entries, const MultiTensorChunk* chunks, i64 nchunks,
                                    const UpdateScalars<T>* scalars) {
  const UpdateScalars<T> s = *scalars;
  for (i64 c = blockIdx.x; c < nchunks; c += gridDim.x) {
    const MultiTensorChunk ch = chunks[c];
    const MultiTensorEntry<T> e = entries[ch.tensor];
    const i64 end = ch.start + kMultiTensorChunk < e.n ? ch.start + kMultiTensorChunk : e.n;
    for (i64 i = ch.start + threadIdx.x; i < end; i += blockDim.x) update_elem<T, K>(e, i, s);
  }
}

template <class T, UpdateKind K>
void launch_update(const MultiTensorEntry<T>& e, const UpdateScalars<T>& s, cudaStream_t stream) {
  check_n(e.n, "optimizer update");
  if (e.n == 0) return;
  update_kernel<T, K><<<grid_for(e.n), kBlock, 0, stream>>>(e, s);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

// ---- elementwise ----

namespace {
template <class T, class F> void launch_unary(F f, const T* x, T* y, i64 n, cudaStream_t stream) {
  if (aligned16(x) && aligned16(y))
    unary_vec_kernel<T><<<grid_for(n / kLanes<T> + 1), kBlock, 0, stream>>>(f, x, y, n);
  else
    unary_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(f, x, y, n);
  CUDA_CHECK_LAUNCH();
}
}  // namespace

template <class T> void unary(UnaryOp op, const T* x, T* y, i64 n, cudaStream_t stream) {
  check_n(n, "unary");
  if (n == 0) return;
  visit_unary(op, [&](auto f) { launch_unary<T>(f, x, y, n, stream); });
}

template <class T> void binary(BinaryOp op, const T* a, const T* b, T* y, i64 n, cudaStream_t stream) {
  check_n(n, "binary");
  if (n == 0) return;
  visit_binary(op, [&](auto f) {
    if (aligned16(a) && aligned16(b) && aligned16(y))
      binary_vec_kernel<T><<<grid_for(n / kLanes<T> + 1), kBlock, 0, stream>>>(f, a, b, y, n);
    else
      binary_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(f, a, b, y, n);
    CUDA_CHECK_LAUNCH();
  });
}

template <class T>
void binary_broadcast(BinaryOp op, const T* a, const Shape& as, const T* b, const Shape& bs, T* y,
                      const Shape& ys, cudaStream_t stream) {
  if (as.rank != ys.rank || bs.rank != ys.rank)
    throw std::invalid_argument("binary_broadcast: ranks differ: " + as.str() + ", " + bs.str() + " -> " + ys.str());
  for (int d = 0; d < ys.rank; ++d)
    if ((as.dims[d] != 1 && as.dims[d] != ys.dims[d]) || (bs.dims[d] != 1 && bs.dims[d] != ys.dims[d]))
      throw std::invalid_argument("binary_broadcast: cannot broadcast " + as.str() + " and " + bs.str() + " to " +
                                  ys.str());
  const i64 n = ys.numel();
  if (n == 0) return;
  const Strides sa = broadcast_strides(as), sb = broadcast_strides(bs);
  visit_binary(op, [&](auto f) {
    binary_broadcast_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(f, a, sa, b, sb, y, ys, n);
    CUDA_CHECK_LAUNCH();
  });
}

template <class T> void scalar(ScalarOp op, const T* x, double c, T* y, i64 n, cudaStream_t stream) {
  check_n(n, "scalar");
  if (n == 0) return;
  visit_scalar(op, [&](auto f) { launch_unary<T>(WithScalar<T, decltype(f)>{f, T(c)}, x, y, n, stream); });
}

// ---- reductions and broadcasting ----

template <class T>
void reduce_sum(const T* x, const Shape& xs, T* y, const Shape& ys, double scale, cudaStream_t stream) {
  if (xs.rank != ys.rank)
    throw std::invalid_argument("reduce_sum: ranks differ: " + xs.str() + " -> " + ys.str());
  ReducePlan p;
  p.out = ys;
  i64 stride = 1;
  for (int d = xs.rank - 1; d >= 0; --d) {
    if (ys.dims[d] == xs.dims[d]) {
      p.out_stride.v[d] = stride;
    } else if (ys.dims[d] == 1) {
      p.out_stride.v[d] = 0;
      p.red_dims[p.red_rank] = xs.dims[d];
      p.red_stride[p.red_rank] = stride;
      ++p.red_rank;
    } else {
      throw std::invalid_argument("reduce_sum: cannot reduce " + xs.str() + " to " + ys.str());
    }
    stride *= xs.dims[d];
  }
  // The reduced axes were collected innermost first; the offset helpers want outermost first.
  std::reverse(p.red_dims, p.red_dims + p.red_rank);
  std::reverse(p.red_stride, p.red_stride + p.red_rank);
  p.n_out = ys.numel();
  for (int i = 0; i < p.red_rank; ++i) p.n_red *= p.red_dims[i];
  if (p.n_out == 0) return;
  if (p.n_red == 0) {  // a sum over nothing: zeros, unscaled (as on the CPU)
    CUDA_CHECK(cudaMemsetAsync(y, 0, size_t(p.n_out) * sizeof(T), stream));
    return;
  }
  // A block per output pays off when the reduction is long and there are too few outputs to
  // fill the GPU with one thread each.
  const bool contiguous_rows = p.red_rank >= 1 && p.red_rank <= 2 && p.red_stride[p.red_rank - 1] == 1 &&
                              p.red_dims[p.red_rank - 1] >= kBlock / 2;
  if (p.n_red >= 64 && p.n_out < 32768 && contiguous_rows) {
    const i64 rows = p.red_rank == 2 ? p.red_dims[0] : 1, row_stride = p.red_rank == 2 ? p.red_stride[0] : 0;
    reduce_rows_kernel<T><<<unsigned(std::min<i64>(p.n_out, kMaxGrid)), kBlock, 0, stream>>>(
        x, y, p, rows, row_stride, p.red_dims[p.red_rank - 1], scale);
  } else if (p.n_red >= 64 && p.n_out < 32768) {
    reduce_block_kernel<T><<<unsigned(std::min<i64>(p.n_out, kMaxGrid)), kBlock, 0, stream>>>(x, y, p, scale);
  } else {
    reduce_thread_kernel<T><<<grid_for(p.n_out), kBlock, 0, stream>>>(x, y, p, scale);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T>
void broadcast_to(const T* x, const Shape& xs, T* y, const Shape& ys, double scale, cudaStream_t stream) {
  if (xs.rank != ys.rank) throw std::invalid_argument("broadcast_to: ranks differ: " + xs.str() + " -> " + ys.str());
  for (int d = 0; d < ys.rank; ++d)
    if (xs.dims[d] != 1 && xs.dims[d] != ys.dims[d])
      throw std::invalid_argument("broadcast_to: cannot broadcast " + xs.str() + " to " + ys.str());
  const i64 n = ys.numel();
  if (n == 0) return;
  broadcast_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(x, broadcast_strides(xs), y, ys, T(scale), n);
  CUDA_CHECK_LAUNCH();
}

template <class T, bool Relu>
void bias_add_impl(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner, cudaStream_t stream) {
  if (outer < 0 || C < 0 || inner < 0) throw std::invalid_argument("bias_add: negative dimension");
  const i64 n = outer * C * inner;
  if (n == 0) return;
  if (inner >= 32) {  // a warp or more a row
    const i64 rows = outer * C;
    const bool vec = inner % kLanes<T> == 0 && aligned16(x) && aligned16(y);
    const i64 row = vec ? inner / kLanes<T> : inner;  // elements or vectors a row
    // Threads a row: the power of two at or above the row, 32 to kBlock; the rest of the block's
    // kBlock threads take further rows.
    unsigned tx = 32;
    while (tx < unsigned(kBlock) && i64(tx) < row) tx *= 2;
    const dim3 block(tx, unsigned(kBlock) / tx);
    const dim3 grid(unsigned(std::min<i64>((row + tx - 1) / tx, 64)),
                    unsigned(std::min<i64>((rows + block.y - 1) / block.y, 65535)));
    using V = typename Vec16<T>::type;
    if (vec)
      bias_add_rows_kernel<T, V, Relu><<<grid, block, 0, stream>>>(reinterpret_cast<const V*>(x), b,
                                                                    reinterpret_cast<V*>(y), C, row, rows);
    else
      bias_add_rows_kernel<T, T, Relu><<<grid, block, 0, stream>>>(x, b, y, C, row, rows);
  } else {
    bias_add_kernel<T, Relu><<<grid_for(n), kBlock, 0, stream>>>(x, b, y, C, inner, n);
  }
  CUDA_CHECK_LAUNCH();
}

template <class T> void bias_add(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner, cudaStream_t stream) {
  bias_add_impl<T, false>(x, b, y, outer, C, inner, stream);
}

template <class T>
void bias_add_relu(const T* x, const T* b, T* y, i64 outer, i64 C, i64 inner, cudaStream_t stream) {
  bias_add_impl<T, true>(x, b, y, outer, C, inner, stream);
}

size_t bias_grad_workspace_bytes(i64 outer, i64 C, i64 inner) {
  if (outer < 0 || C < 0 || inner < 0) throw std::invalid_argument("bias_grad: negative dimension");
  const int S = bias_grad_slabs(outer, C, inner);
  return S > 1 ? size_t(C) * size_t(S) * sizeof(double) : 0;
}

template <class T>
void bias_grad(const T* dy, T* db, i64 outer, i64 C, i64 inner, void* workspace, size_t workspace_bytes,
               cudaStream_t stream) {
  const size_t need = bias_grad_workspace_bytes(outer, C, inner);
  const int S = bias_grad_slabs(outer, C, inner);
  if (S == 1) {
    // A reduction of [outer, C, inner] to [1, C, 1]; also zero-fills db when outer*inner == 0.
    reduce_sum(dy, Shape{outer, C, inner}, db, Shape{1, C, 1}, 1.0, stream);
    return;
  }
  if (workspace == nullptr || workspace_bytes < need)
    throw std::invalid_argument("bias_grad: the workspace has " + std::to_string(workspace_bytes) +
                                " bytes, bias_grad_workspace_bytes gives " + std::to_string(need));
  if (C > 65535) throw std::invalid_argument("bias_grad: " + std::to_string(C) + " channels (at most 65535)");
  auto* part = static_cast<double*>(workspace);
  bias_grad_partial_kernel<T><<<dim3(unsigned(S), unsigned(C)), kBlock, 0, stream>>>(dy, part, outer, C, inner, S);
  CUDA_CHECK_LAUNCH();
  bias_grad_finish_kernel<T><<<grid_for(C), kBlock, 0, stream>>>(part, db, C, S);
  CUDA_CHECK_LAUNCH();
}

// ---- optimizers ----

template <class T> UpdateScalars<T> sgd_scalars(double lr, double wd) {
  UpdateScalars<T> s{};
  s.neg_lr = T(-lr);
  s.wd = T(wd);
  s.decay = wd != 0;
  return s;
}

template <class T> UpdateScalars<T> momentum_scalars(double lr, double mu, double wd, bool nesterov) {
  UpdateScalars<T> s = sgd_scalars<T>(lr, wd);
  s.mu = T(mu);
  s.nesterov = nesterov;
  return s;
}

template <class T>
UpdateScalars<T> adam_scalars(double lr, double b1, double b2, double eps, double wd, bool decoupled, i64 t) {
  if (t < 1) throw std::invalid_argument("adam_update: step t must be >= 1, got " + std::to_string(t));
  const double bc1 = 1.0 - std::pow(b1, double(t));
  const double bc2 = 1.0 - std::pow(b2, double(t));
  const double lw = 1.0 - b1;
  UpdateScalars<T> s{};
  s.neg_lr = T(-(lr / bc1));
  s.bc2_sqrt = T(std::sqrt(bc2));
  s.eps = T(eps);
  s.b2 = T(b2);
  s.one_minus_b2 = T(1.0 - b2);
  s.lerp_w = T(lw);
  s.one_minus_lerp_w = T(1.0 - lw);
  s.wd = T(wd);
  s.shrink = T(1.0 - lr * wd);
  s.decay = wd == 0 ? 0 : decoupled ? 2 : 1;
  s.lerp_low = lw < 0.5;
  return s;
}

template <class T> void sgd_update(T* w, const T* g, i64 n, double lr, double wd, cudaStream_t stream) {
  launch_update<T, UpdateKind::SGD>({w, nullptr, nullptr, g, n}, sgd_scalars<T>(lr, wd), stream);
}

template <class T>
void momentum_update(T* w, T* v, const T* g, i64 n, double lr, double mu, double wd, bool nesterov,
                     cudaStream_t stream) {
  launch_update<T, UpdateKind::Momentum>({w, v, nullptr, g, n}, momentum_scalars<T>(lr, mu, wd, nesterov), stream);
}

template <class T>
void adam_update(T* w, T* m, T* v, const T* g, i64 n, double lr, double b1, double b2, double eps,
                 double wd, bool decoupled, i64 t, cudaStream_t stream) {
  launch_update<T, UpdateKind::Adam>({w, m, v, g, n}, adam_scalars<T>(lr, b1, b2, eps, wd, decoupled, t), stream);
}

std::vector<MultiTensorChunk> multi_tensor_chunks(const i64* sizes, int count) {
  std::vector<MultiTensorChunk> chunks;
  for (int t = 0; t < count; ++t) {
    check_n(sizes[t], "multi_tensor_chunks");
    for (i64 start = 0; start < sizes[t]; start += kMultiTensorChunk) chunks.push_back({t, start});
  }
  return chunks;
}

template <class T>
void multi_tensor_update(UpdateKind kind, const MultiTensorEntry<T>* entries, const MultiTensorChunk* chunks,
                         i64 nchunks, const UpdateScalars<T>* scalars, cudaStream_t stream) {
  check_n(nchunks, "multi_tensor_update");
  if (nchunks == 0) return;
  const unsigned grid = unsigned(std::min<i64>(nchunks, kMaxGrid));
  switch (kind) {
    case UpdateKind::SGD:
      multi_update_kernel<T, UpdateKind::SGD><<<grid, kBlock, 0, stream>>>(entries, chunks, nchunks, scalars);
      break;
    case UpdateKind::Momentum:
      multi_update_kernel<T, UpdateKind::Momentum><<<grid, kBlock, 0, stream>>>(entries, chunks, nchunks, scalars);
      break;
    case UpdateKind::Adam:
      multi_update_kernel<T, UpdateKind::Adam><<<grid, kBlock, 0, stream>>>(entries, chunks, nchunks, scalars);
      break;
  }
  CUDA_CHECK_LAUNCH();
}

#define RF_INSTANTIATE(T)                                                                                    \
  template void unary<T>(UnaryOp, const T*, T*, i64, cudaStream_t);                                          \
  template void binary<T>(BinaryOp, const T*, const T*, T*, i64, cudaStream_t);                              \
  template void binary_broadcast<T>(BinaryOp, const T*, const Shape&, const T*, const Shape&, T*, const Shape&, \
                                    cudaStream_t);                                                           \
  template void scalar<T>(ScalarOp, const T*, double, T*, i64, cudaStream_t);                                \
  template void reduce_sum<T>(const T*, const Shape&, T*, const Shape&, double, cudaStream_t);               \
  template void broadcast_to<T>(const T*, const Shape&, T*, const Shape&, double, cudaStream_t);             \
  template void bias_add<T>(const T*, const T*, T*, i64, i64, i64, cudaStream_t);                            \
  template void bias_add_relu<T>(const T*, const T*, T*, i64, i64, i64, cudaStream_t);                       \
  template void bias_grad<T>(const T*, T*, i64, i64, i64, void*, size_t, cudaStream_t);                                     \
  template void sgd_update<T>(T*, const T*, i64, double, double, cudaStream_t);                              \
  template void momentum_update<T>(T*, T*, const T*, i64, double, double, double, bool, cudaStream_t);       \
  template void adam_update<T>(T*, T*, T*, const T*, i64, double, double, double, double, double, bool, i64, \
                               cudaStream_t);                                                           \
  template UpdateScalars<T> sgd_scalars<T>(double, double);                                                  \
  template UpdateScalars<T> momentum_scalars<T>(double, double, double, bool);                               \
  template UpdateScalars<T> adam_scalars<T>(double, double, double, double, double, bool, i64);              \
  template void multi_tensor_update<T>(UpdateKind, const MultiTensorEntry<T>*, const MultiTensorChunk*, i64,   \
                                       const UpdateScalars<T>*, cudaStream_t);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE

}  // namespace rf::kernels::cuda
