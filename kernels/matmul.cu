// Dense matrix multiply for the CUDA backend: a row-major wrapper over cuBLAS's column-major
// gemm, mirroring kernels/matmul_cpu.cpp (same argument checks, same semantics).
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda.h"
#include "runtime/error.h"

namespace rf::kernels::cuda {

namespace {

// cuBLAS takes int dimensions; a silently truncated size would read out of bounds.
int to_blas_int(i64 v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw std::invalid_argument(std::string("gemm: ") + what + " out of range");
  return static_cast<int>(v);
}

struct BlasArgs {
  int m, n, k, lda, ldb, ldc;
};

BlasArgs check(bool ta, bool tb, i64 m, i64 n, i64 k, i64 lda, i64 ldb, i64 ldc) {
  // Row-major leading dimensions must cover a stored row (cuBLAS would only say "invalid value");
  // a row of length 0 (k == 0: C = beta C) may have ld 0, handed to cuBLAS as 1, as it wants.
  if (lda < (ta ? m : k)) throw std::invalid_argument("gemm: lda too small");
  if (ldb < (tb ? k : n)) throw std::invalid_argument("gemm: ldb too small");
  if (ldc < n) throw std::invalid_argument("gemm: ldc too small");
  return {to_blas_int(m, "m"), to_blas_int(n, "n"), to_blas_int(k, "k"), to_blas_int(std::max<i64>(1, lda), "lda"),
          to_blas_int(std::max<i64>(1, ldb), "ldb"), to_blas_int(std::max<i64>(1, ldc), "ldc")};
}

// The handle is shared by everything on the device; it normally already sits on `stream`.
void bind(cublasHandle_t handle, cudaStream_t stream) {
  cudaStream_t current = nullptr;
  CUBLAS_CHECK(cublasGetStream(handle, &current));
  if (current != stream) CUBLAS_CHECK(cublasSetStream(handle, stream));
}

// A row-major X[r,c] with leading dimension ld is the column-major X^T[c,r] with the same ld.
// So row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands (and
// m with n) and keep each operand's transpose flag.
cublasOperation_t op_of(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

// Defined once as a template and explicitly instantiated (callers see only the declaration in
// kernels/cuda.h, which an explicit specialisation would not be allowed to hide from them).
template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b, i64 ldb,
          T beta, T* c, i64 ldc, cublasHandle_t handle, cudaStream_t stream) {
  const BlasArgs r = check(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  if (k == 0 && beta == T(0)) {  // a sum over nothing: zeros (beta != 0 takes cuBLAS's own k == 0 case: C = beta C)
    CUDA_CHECK(cudaMemset2DAsync(c, size_t(ldc) * sizeof(T), 0, size_t(n) * sizeof(T), size_t(m), stream));
    return;
  }
  bind(handle, stream);
  if constexpr (std::is_same_v<T, float>) {
    CUBLAS_CHECK(cublasSgemm(handle, op_of(trans_b), op_of(trans_a), r.n, r.m, r.k, &alpha, b, r.ldb, a, r.lda,
                             &beta, c, r.ldc));
  } else {
    static_assert(std::is_same_v<T, double>, "gemm: float or double");
    CUBLAS_CHECK(cublasDgemm(handle, op_of(trans_b), op_of(trans_a), r.n, r.m, r.k, &alpha, b, r.ldb, a, r.lda,
                             &beta, c, r.ldc));
  }
}

template void gemm<float>(bool, bool, i64, i64, i64, float, const float*, i64, const float*, i64, float, float*,
                          i64, cublasHandle_t, cudaStream_t);
template void gemm<double>(bool, bool, i64, i64, i64, double, const double*, i64, const double*, i64, double,
                           double*, i64, cublasHandle_t, cudaStream_t);

}  // namespace rf::kernels::cuda
