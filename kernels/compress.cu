// CUDA kernels of the gradient compressors (kernels/compress_cuda.h): 16-bit casts with a scale,
// error feedback, top-k selection (CUB radix sorts) with gather and sparse decompression, PowerSGD's
// gemms (cuBLAS) and Gram-Schmidt. Each mirrors the host code of collective/compress.cpp operation by
// operation (explicitly rounded intrinsics, no contraction the host does not do), so that the
// results are the host's bits where the order of operations can be the same.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/launch.cuh"
#include "kernels/compress_cuda.h"
#include "kernels/half.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

void check_count(i64 n, const char* fn, const char* what = "element count") {
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": negative " + what);
}

// ---- 16-bit casts ----

// Scale 1 is skipped rather than multiplied by: the plain cast, bit for bit, NaN payloads included
// (the GPU's arithmetic turns every NaN into the canonical one, x86 keeps the operand's payload).
__global__ void scale_to_f16_kernel(const float* x, float s, bool scaled, uint16_t* y, i64 n) {
  RF_GRID_STRIDE(i, n) y[i] = float_to_half_bits(scaled ? __fmul_rn(x[i], s) : x[i]);
}
__global__ void scale_to_bf16_kernel(const float* x, float s, bool scaled, uint16_t* y, i64 n) {
  RF_GRID_STRIDE(i, n) y[i] = float_to_bf16_bits(scaled ? __fmul_rn(x[i], s) : x[i]);
}
__global__ void f16_to_scaled_kernel(const uint16_t* x, float s, bool scaled, float* y, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const float v = half_bits_to_float(x[i]);
    y[i] = scaled ? __fmul_rn(v, s) : v;
  }
}
__global__ void bf16_to_scaled_kernel(const uint16_t* x, float s, bool scaled, float* y, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const float v = bf16_bits_to_float(x[i]);
    y[i] = scaled ? __fmul_rn(v, s) : v;
  }
}

// ---- error feedback ----

__global__ void accumulate_kernel(float* r, const float* g, i64 n) {
  RF_GRID_STRIDE(i, n) r[i] = __fadd_rn(r[i], g[i]);
}
__global__ void accumulate_momentum_kernel(float* r, float* u, const float* g, float m, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const float v = __fmaf_rn(m, u[i], g[i]);
    u[i] = v;
    r[i] = __fadd_rn(r[i], v);
  }
}
__global__ void subtract_kernel(float* e, const float* g, i64 n) {
  RF_GRID_STRIDE(i, n) e[i] = __fsub_rn(e[i], g[i]);
}

// ---- top-k ----

// |x| as bits: monotonic in the magnitude for non-negative floats, -0 the same key as +0. Every NaN
// gets one key above +inf (0x7f800000), so NaNs are sent first and tie by index among themselves.
// Keys stay below 2^31: the sort looks at 31 bits.
constexpr uint32_t kNaNKey = 0x7f800001u;
constexpr int kKeyBits = 31;

__global__ void topk_keys_kernel(const float* x, uint32_t* keys, uint32_t* index, i64 n) {
  RF_GRID_STRIDE(i, n) {
    const uint32_t a = __float_as_uint(x[i]) & 0x7fffffffu;
    keys[i] = a > 0x7f800000u ? kNaNKey : a;
    index[i] = uint32_t(i);
  }
}

__global__ void iota_kernel(uint32_t* idx, i64 n) {
  RF_GRID_STRIDE(i, n) idx[i] = uint32_t(i);
}

__global__ void topk_gather_kernel(const uint32_t* idx, i64 k, float* residual, float* velocity, float* pairs) {
  RF_GRID_STRIDE(j, k) {
    const uint32_t i = idx[j];
    pairs[2 * j] = __uint_as_float(i);
    pairs[2 * j + 1] = residual[i];
    residual[i] = 0.0f;
    if (velocity) velocity[i] = 0.0f;
  }
}

// One rank's pairs: distinct indices, so each element is touched by one thread at most.
__global__ void sparse_add_kernel(const float* pairs, i64 k, float* g, i64 n) {
  RF_GRID_STRIDE(j, k) {
    const uint32_t i = __float_as_uint(pairs[2 * j]);
    if (i64(i) < n) g[i] = __fadd_rn(g[i], pairs[2 * j + 1]);
  }
}

__global__ void scale_kernel(float* g, float s, i64 n) {
  RF_GRID_STRIDE(i, n) g[i] = __fmul_rn(g[i], s);
}


// Bits that hold every index below n (at least 1): the ascending index sort looks at no more.
int index_bits(i64 n) {
  int b = 1;
  while (b < 32 && (uint64_t(1) << b) < uint64_t(n)) ++b;
  return b;
}

constexpr size_t kAlign = 256;
size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The workspace: keys and indices, two buffers each (the descending sort ping-pongs between them),
// then CUB's temporary storage for the larger of the two sorts; kAlign more bytes pay for aligning
// the caller's pointer.
struct TopkLayout {
  size_t array_bytes = 0, temp_bytes = 0;
  size_t total() const { return kAlign + 4 * array_bytes + temp_bytes; }
};

TopkLayout topk_layout(i64 n, i64 k) {
  TopkLayout l;
  l.array_bytes = aligned(size_t(n) * sizeof(uint32_t));
  const uint32_t items = uint32_t(n), kept = uint32_t(std::min(k, n));
  cub::DoubleBuffer<uint32_t> keys(nullptr, nullptr), index(nullptr, nullptr);
  size_t sort_bytes = 0, select_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, sort_bytes, keys, index, items, 0, kKeyBits));
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, select_bytes, static_cast<const uint32_t*>(nullptr),
                                            static_cast<uint32_t*>(nullptr), kept, 0, index_bits(n)));
  l.temp_bytes = aligned(std::max(sort_bytes, select_bytes));
  return l;
}

void check_topk_args(i64 n, i64 k, const char* fn) {
  check_count(n, fn);
  check_count(k, fn, "k");
  if (uint64_t(n) > uint64_t(std::numeric_limits<uint32_t>::max()))
    throw std::invalid_argument(std::string(fn) + ": " + std::to_string(n) + " elements do not fit 32-bit indices");
}

// ---- PowerSGD ----

int blas_int(i64 v, const char* fn, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max())
    throw std::invalid_argument(std::string(fn) + ": " + what + " = " + std::to_string(v) + " out of range");
  return int(v);
}

// Row-major C[m, n] = op(A)[m, k] op(B)[k, n] (alpha 1, beta 0). A row-major matrix is the
// column-major transpose with the same leading dimension, so this is column-major
// C^T = op(B)^T op(A)^T: the operands swap, each keeps its transpose flag.
void sgemm_row_major(bool ta, bool tb, i64 m, i64 n, i64 k, const float* a, i64 lda, const float* b, i64 ldb,
                     float* c, i64 ldc, cublasHandle_t handle, cudaStream_t stream, const char* fn) {
  const int M = blas_int(m, fn, "rows"), N = blas_int(n, fn, "columns"), K = blas_int(k, fn, "inner size");
  const int LDA = blas_int(std::max<i64>(1, lda), fn, "lda"), LDB = blas_int(std::max<i64>(1, ldb), fn, "ldb"),
            LDC = blas_int(std::max<i64>(1, ldc), fn, "ldc");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum: C = 0 (not every BLAS writes C when k is 0)
    CUDA_CHECK(cudaMemsetAsync(c, 0, size_t(m) * size_t(n) * sizeof(float), stream));
    return;
  }
  cudaStream_t bound = nullptr;
  CUBLAS_CHECK(cublasGetStream(handle, &bound));
  if (bound != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_CHECK(cublasSgemm(handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &one, b,
                           LDB, a, LDA, &zero, c, LDC));
}

constexpr int kOrthoBlock = 256;
constexpr int kOrthoWarps = kOrthoBlock / 32;

// The sum of every thread's v, returned to every thread. The warps' partial sums are added in warp
// order, so the result does not depend on scheduling. `shared` holds kOrthoWarps doubles.
__device__ double block_sum(double v, double* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  __syncthreads();  // the previous call's readers are done with `shared`
  if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = v;
  __syncthreads();
  double s = 0;
  for (int w = 0; w < kOrthoWarps; ++w) s += shared[w];
  return s;
}

// compress::orthonormalize_columns on one row-major n x r matrix, by the whole block. Each thread
// owns the rows tid, tid + blockDim, ...: it alone reads and writes them, so the only
// synchronisation is inside the reductions.
__device__ void orthonormalize_block(float* p, i64 n, i64 r, double* shared) {
  const i64 first = threadIdx.x, step = blockDim.x;
  auto norm_of = [&](i64 j) {
    double s = 0;
    for (i64 row = first; row < n; row += step) {
      const double v = p[row * r + j];
      s = fma(v, v, s);
    }
    return sqrt(block_sum(s, shared));
  };
  for (i64 j = 0; j < r; ++j) {
    const double before = norm_of(j);
    for (int pass = 0; pass < 2; ++pass)
      for (i64 i = 0; i < j; ++i) {
        double d = 0;
        for (i64 row = first; row < n; row += step) d = fma(double(p[row * r + i]), double(p[row * r + j]), d);
        const double dot = block_sum(d, shared);
        for (i64 row = first; row < n; row += step)
          p[row * r + j] = __fsub_rn(p[row * r + j], __double2float_rn(__dmul_rn(dot, double(p[row * r + i]))));
      }
    const double after = norm_of(j);
    const double scale = after > 1e-4 * before && after > 0 ? 1.0 / after : 0.0;
    for (i64 row = first; row < n; row += step)
      p[row * r + j] = __double2float_rn(__dmul_rn(double(p[row * r + j]), scale));
  }
}

__global__ void __launch_bounds__(kOrthoBlock) orthonormalize_kernel(float* p, i64 n, i64 r) {
  __shared__ double shared[kOrthoWarps];
  orthonormalize_block(p, n, r, shared);
}

__global__ void __launch_bounds__(kOrthoBlock) orthonormalize_batched_kernel(float* p, const OrthoMatrix* mats,
                                                                             i64 r) {
  __shared__ double shared[kOrthoWarps];
  const OrthoMatrix m = mats[blockIdx.x];
  orthonormalize_block(p + m.offset, m.rows, r, shared);
}

}  // namespace

// ---- 16-bit casts ----

void scale_cast_to_f16(const float* x, float scale, uint16_t* y, i64 n, cudaStream_t stream) {
  check_count(n, "scale_cast_to_f16");
  if (n == 0) return;
  scale_to_f16_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, scale, scale != 1.0f, y, n);
  CUDA_CHECK_LAUNCH();
}

void scale_cast_to_bf16(const float* x, float scale, uint16_t* y, i64 n, cudaStream_t stream) {
  check_count(n, "scale_cast_to_bf16");
  if (n == 0) return;
  scale_to_bf16_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, scale, scale != 1.0f, y, n);
  CUDA_CHECK_LAUNCH();
}

void scale_cast_from_f16(const uint16_t* x, float scale, float* y, i64 n, cudaStream_t stream) {
  check_count(n, "scale_cast_from_f16");
  if (n == 0) return;
  f16_to_scaled_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, scale, scale != 1.0f, y, n);
  CUDA_CHECK_LAUNCH();
}

void scale_cast_from_bf16(const uint16_t* x, float scale, float* y, i64 n, cudaStream_t stream) {
  check_count(n, "scale_cast_from_bf16");
  if (n == 0) return;
  bf16_to_scaled_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, scale, scale != 1.0f, y, n);
  CUDA_CHECK_LAUNCH();
}

// ---- error feedback ----

void ef_accumulate(float* residual, const float* g, i64 n, cudaStream_t stream) {
  check_count(n, "ef_accumulate");
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n), kBlock, 0, stream>>>(residual, g, n);
  CUDA_CHECK_LAUNCH();
}

void ef_accumulate_momentum(float* residual, float* velocity, const float* g, i64 n, float momentum,
                            cudaStream_t stream) {
  check_count(n, "ef_accumulate_momentum");
  if (n == 0) return;
  accumulate_momentum_kernel<<<grid_for(n), kBlock, 0, stream>>>(residual, velocity, g, momentum, n);
  CUDA_CHECK_LAUNCH();
}

void ef_subtract(float* err, const float* g, i64 n, cudaStream_t stream) {
  check_count(n, "ef_subtract");
  if (n == 0) return;
  subtract_kernel<<<grid_for(n), kBlock, 0, stream>>>(err, g, n);
  CUDA_CHECK_LAUNCH();
}

// ---- top-k ----

size_t topk_workspace_bytes(i64 n, i64 k) {
  check_topk_args(n, k, "topk_workspace_bytes");
  return topk_layout(n, k).total();
}

void topk_indices(const float* x, i64 n, i64 k, uint32_t* idx, void* workspace, size_t workspace_bytes,
                  cudaStream_t stream) {
  check_topk_args(n, k, "topk_indices");
  k = std::min(k, n);
  if (k == 0) return;
  if (k == n) {  // everything, in index order
    iota_kernel<<<grid_for(n), kBlock, 0, stream>>>(idx, n);
    CUDA_CHECK_LAUNCH();
    return;
  }
  const TopkLayout l = topk_layout(n, k);
  if (workspace == nullptr || workspace_bytes < l.total())
    throw std::invalid_argument("topk_indices: the workspace has " + std::to_string(workspace_bytes) +
                                " bytes, topk_workspace_bytes(" + std::to_string(n) + ", " + std::to_string(k) +
                                ") = " + std::to_string(l.total()) + " are needed");
  char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(workspace) + kAlign - 1) / kAlign * kAlign);
  auto array = [&](int a) { return reinterpret_cast<uint32_t*>(base + size_t(a) * l.array_bytes); };
  void* temp = base + 4 * l.array_bytes;
  topk_keys_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, array(0), array(2), n);
  CUDA_CHECK_LAUNCH();
  // Magnitude down; the sort is stable, so equal magnitudes keep their index order: the lower
  // index first, the host's tie rule. The first k are the host's set.
  cub::DoubleBuffer<uint32_t> keys(array(0), array(1)), index(array(2), array(3));
  size_t temp_bytes = l.temp_bytes;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(temp, temp_bytes, keys, index, uint32_t(n), 0, kKeyBits,
                                                       stream));
  temp_bytes = l.temp_bytes;
  CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp, temp_bytes, static_cast<const uint32_t*>(index.Current()), idx,
                                            uint32_t(k), 0, index_bits(n), stream));
}

void topk_gather(const uint32_t* idx, i64 k, float* residual, float* velocity, float* pairs, cudaStream_t stream) {
  check_count(k, "topk_gather", "k");
  if (k == 0) return;
  topk_gather_kernel<<<grid_for(k), kBlock, 0, stream>>>(idx, k, residual, velocity, pairs);
  CUDA_CHECK_LAUNCH();
}

void topk_decompress(const float* pairs, i64 rank_stride, int world, i64 k, float* g, i64 n, cudaStream_t stream) {
  check_count(n, "topk_decompress");
  check_count(k, "topk_decompress", "k");
  if (world < 1) throw std::invalid_argument("topk_decompress: world size " + std::to_string(world) + " < 1");
  if (world > 1 && rank_stride < 2 * k)
    throw std::invalid_argument("topk_decompress: rank stride " + std::to_string(rank_stride) + " floats < 2k = " +
                                std::to_string(2 * k));
  if (n == 0) return;
  CUDA_CHECK(cudaMemsetAsync(g, 0, size_t(n) * sizeof(float), stream));
  // Rank by rank, in order, on one stream: the host's order of additions.
  for (int q = 0; q < world && k > 0; ++q) {
    sparse_add_kernel<<<grid_for(k), kBlock, 0, stream>>>(pairs + i64(q) * rank_stride, k, g, n);
    CUDA_CHECK_LAUNCH();
  }
  const float inv = 1.0f / float(world);
  scale_kernel<<<grid_for(n), kBlock, 0, stream>>>(g, inv, n);
  CUDA_CHECK_LAUNCH();
}

// ---- PowerSGD ----

void powersgd_project(const float* m, const float* q, float* p, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                      cudaStream_t stream) {
  sgemm_row_major(false, false, n, r, cols, m, cols, q, r, p, r, handle, stream, "powersgd_project");
}

void powersgd_back_project(const float* m, const float* p, float* q, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                           cudaStream_t stream) {
  sgemm_row_major(true, false, cols, r, n, m, cols, p, r, q, r, handle, stream, "powersgd_back_project");
}

void powersgd_approximate(const float* p, const float* q, float* g, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                          cudaStream_t stream) {
  sgemm_row_major(false, true, n, cols, r, p, r, q, r, g, cols, handle, stream, "powersgd_approximate");
}

void orthonormalize_columns(float* p, i64 n, i64 r, cudaStream_t stream) {
  check_count(n, "orthonormalize_columns", "row count");
  check_count(r, "orthonormalize_columns", "column count");
  if (n == 0 || r == 0) return;
  orthonormalize_kernel<<<1, kOrthoBlock, 0, stream>>>(p, n, r);
  CUDA_CHECK_LAUNCH();
}

void orthonormalize_columns_batched(float* p, const OrthoMatrix* mats, i64 count, i64 r, cudaStream_t stream) {
  check_count(count, "orthonormalize_columns_batched", "matrix count");
  check_count(r, "orthonormalize_columns_batched", "column count");
  if (count > std::numeric_limits<int>::max())
    throw std::invalid_argument("orthonormalize_columns_batched: " + std::to_string(count) +
                                " matrices (one block each)");
  if (count == 0 || r == 0) return;
  orthonormalize_batched_kernel<<<unsigned(count), kOrthoBlock, 0, stream>>>(p, mats, r);
  CUDA_CHECK_LAUNCH();
}

}  // namespace rf::kernels::cuda
