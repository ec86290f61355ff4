// Batched matrix multiply for the CUDA backend (BatchMatMul), mirroring batch_matmul_cpu.cpp:
// cublasGemmStridedBatchedEx over the batch dimensions where the operands' strides are regular
// (each operand either has its own matrix per batch index or is broadcast whole: stride 0), and a
// host loop over the remaining leading dimensions for other broadcast patterns (e.g. [B,1,..] x
// [1,H,..]). f32 computes in CUBLAS_COMPUTE_32F (TF32 only when allowed, as matmul.cu's gemm
// follows the handle's math mode), f64 in CUBLAS_COMPUTE_64F.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

int to_int(i64 v, const char* what) {
  if (v < 0 || v > INT_MAX) throw std::invalid_argument(std::string("batch_matmul: ") + what + " out of range");
  return static_cast<int>(v);
}

cublasOperation_t op_of(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

template <class T>
void batch_matmul(const BatchGemm& g, bool trans_a, bool trans_b, const T* a, const T* b, T* c, bool allow_tf32,
                  cublasHandle_t handle, cudaStream_t stream) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "batch_matmul: float or double");
  const int m = to_int(g.m, "m"), n = to_int(g.n, "n"), k = to_int(g.k, "k");
  // Row-major leading dimensions; a row of length 0 may have ld 0, handed to cuBLAS as 1.
  if (g.lda < (trans_a ? g.m : g.k) || g.ldb < (trans_b ? g.k : g.n))
    throw std::invalid_argument("batch_matmul: a leading dimension is shorter than a row");
  const int lda = to_int(g.lda > 0 ? g.lda : 1, "lda"), ldb = to_int(g.ldb > 0 ? g.ldb : 1, "ldb"),
            ldc = to_int(g.n > 0 ? g.n : 1, "ldc");
  const i64 mat_c = g.m * g.n;
  if (g.count == 0 || mat_c == 0) return;
  if (g.k == 0) {  // a sum over nothing
    CUDA_CHECK(cudaMemsetAsync(c, 0, size_t(g.count * mat_c) * sizeof(T), stream));
    return;
  }
  cudaStream_t current = nullptr;
  CUBLAS_CHECK(cublasGetStream(handle, &current));
  if (current != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));

  constexpr bool f64 = std::is_same_v<T, double>;
  const cudaDataType_t dt = f64 ? CUDA_R_64F : CUDA_R_32F;
  const cublasComputeType_t ct = f64 ? CUBLAS_COMPUTE_64F : allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const T one = 1, zero = 0;
  i64 run_a = 0, run_b = 0;
  const int from = g.regular_from(&run_a, &run_b);
  i64 inner = 1;  // matrices per strided batch
  for (int d = from; d < g.rank; ++d) inner *= g.dims[d];
  const i64 outer = g.count / inner;
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T (see matmul.cu): swap the
  // operands, m with n, and keep each operand's transpose flag.
  for (i64 o = 0; o < outer; ++o) {
    i64 oa = 0, ob = 0;
    g.offsets(o * inner, &oa, &ob);
    for (i64 i0 = 0; i0 < inner; i0 += INT_MAX) {  // batchCount is an int
      const int cnt = int(std::min<i64>(inner - i0, INT_MAX));
      CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, op_of(trans_b), op_of(trans_a), n, m, k, &one,
                                              b + ob + i0 * run_b, dt, ldb, (long long)run_b, a + oa + i0 * run_a, dt,
                                              lda, (long long)run_a, &zero, c + (o * inner + i0) * mat_c, dt, ldc,
                                              (long long)mat_c, cnt, ct, CUBLAS_GEMM_DEFAULT));
    }
  }
}

template void batch_matmul<float>(const BatchGemm&, bool, bool, const float*, const float*, float*, bool,
                                  cublasHandle_t, cudaStream_t);
template void batch_matmul<double>(const BatchGemm&, bool, bool, const double*, const double*, double*, bool,
                                   cublasHandle_t, cudaStream_t);

}  // namespace rf::kernels::cuda
