// The CUDA kernels of the gradient compressors (collective/compress.h): the same arithmetic as the
// host compressors in collective/compress.cpp, on device buffers, each queued on a trailing stream
// (asynchronous: the caller synchronises when it needs results). f32 throughout.
//
// Bit-identical to the host: the 16-bit casts (kernels/half.h rounding), error feedback, top-k
// selection (kernels/compress::topk_indices's order) and the sparse sum. PowerSGD's gemms (cuBLAS)
// and Gram-Schmidt (f64 tree reductions instead of the host's sequential sums) agree with the host to
// rounding.
//
// Preconditions the host can check throw std::invalid_argument; CUDA, CUB and cuBLAS failures throw
// rf::Error (runtime/error.h).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common.h"

namespace rf::kernels::cuda {

// ---- fp16 / bf16 (compress.cpp's HalfCompressor) ----
// y = half(x * scale): the product rounded to f32, then to the 16-bit format by nearest-even, as
// the host's pre-division followed by kernels::cpu::f32_to_f16 / f32_to_bf16. 16-bit values are raw
// bits. Scale 1 multiplies by nothing, so NaN payloads survive as on the host (a GPU product of a
// NaN is the canonical NaN; only the payload can differ from the host with another scale).
void scale_cast_to_f16(const float* x, float scale, uint16_t* y, i64 n, cudaStream_t stream);
void scale_cast_to_bf16(const float* x, float scale, uint16_t* y, i64 n, cudaStream_t stream);
// y = float(x) * scale; scale 1 is exactly kernels::cpu::f16_to_f32 / bf16_to_f32 (no multiply).
void scale_cast_from_f16(const uint16_t* x, float scale, float* y, i64 n, cudaStream_t stream);
void scale_cast_from_bf16(const uint16_t* x, float scale, float* y, i64 n, cudaStream_t stream);

// ---- error feedback ----
// residual += g (top-k's residual; PowerSGD's M = G + E, kept in E).
void ef_accumulate(float* residual, const float* g, i64 n, cudaStream_t stream);
// DGC momentum correction: velocity = momentum * velocity + g (one fused multiply-add, as GCC
// contracts the host loop under -mfma); residual += velocity.
void ef_accumulate_momentum(float* residual, float* velocity, const float* g, i64 n, float momentum,
                            cudaStream_t stream);
// err -= g (PowerSGD: E = M - P Q^T once g holds P Q^T).
void ef_subtract(float* err, const float* g, i64 n, cudaStream_t stream);

// ---- top-k (compress.cpp's TopKCompressor) ----
// Device memory topk_indices needs for n elements (k <= n): key and index double buffers plus CUB's
// temporary storage. Asks CUB, so it needs a CUDA device.
size_t topk_workspace_bytes(i64 n, i64 k);
// idx[0, min(k, n)) = the indices of the min(k, n) largest |x[i]|, ties to the lower index, in
// increasing order: exactly collective::compress::topk_indices. Keys are the bits of |x| (-0 ranks
// as +0); every NaN ranks above +inf, NaNs among themselves by index (the host's order with NaN is
// unspecified). n < 2^32. `workspace` holds at least topk_workspace_bytes(n, k) bytes of device
// memory, used by this call only until it is done on `stream`.
void topk_indices(const float* x, i64 n, i64 k, uint32_t* idx, void* workspace, size_t workspace_bytes,
                  cudaStream_t stream);
// For j < k, with i = idx[j]: pairs[2j] = the bits of i, pairs[2j + 1] = residual[i]; then
// residual[i] = 0 and, unless velocity is null, velocity[i] = 0 (DGC's momentum factor masking).
// The indices must be distinct (topk_indices's are).
void topk_gather(const uint32_t* idx, i64 k, float* residual, float* velocity, float* pairs, cudaStream_t stream);
// g[0, n) = (sum over ranks q = 0 .. world-1, in that order, of rank q's k pairs) / world, where
// rank q's pairs (2k floats, as topk_gather writes them) start at pairs + q * rank_stride floats.
// One launch per rank: the indices within a rank are distinct, so no atomics and the host's order of
// additions, hence its bits. A pair whose index is not below n is ignored.
void topk_decompress(const float* pairs, i64 rank_stride, int world, i64 k, float* g, i64 n, cudaStream_t stream);

// ---- PowerSGD (compress.cpp's PowerSGDCompressor); row-major, cuBLAS sgemm in the handle's math
// mode (exact f32 unless the caller enabled TF32 on it), re-bound to `stream` if needed ----
// p[n, r] = m[n, cols] q[cols, r].
void powersgd_project(const float* m, const float* q, float* p, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                      cudaStream_t stream);
// q[cols, r] = m[n, cols]^T p[n, r].
void powersgd_back_project(const float* m, const float* p, float* q, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                           cudaStream_t stream);
// g[n, cols] = p[n, r] q[cols, r]^T.
void powersgd_approximate(const float* p, const float* q, float* g, i64 n, i64 cols, i64 r, cublasHandle_t handle,
                          cudaStream_t stream);
// collective::compress::orthonormalize_columns on the row-major n x r matrix p: two-pass modified
// Gram-Schmidt with f64 accumulation and the same drop rule (a column left with no more than 1e-4 of
// its norm becomes zero). One thread block; meant for small r (PowerSGD ranks, <= 32 or so).
void orthonormalize_columns(float* p, i64 n, i64 r, cudaStream_t stream);
// The same on many matrices of r columns at once, one thread block each: matrix j is the rows[j] x r
// matrix at p + offset[j]. `mats` is in device memory.
struct OrthoMatrix {
  i64 offset;  // floats from p
  i64 rows;
};
void orthonormalize_columns_batched(float* p, const OrthoMatrix* mats, i64 count, i64 r, cudaStream_t stream);

}  // namespace rf::kernels::cuda
