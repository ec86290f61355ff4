// Dense matrix multiply for the CPU backend, which the dense layers and the im2col convolutions
// both lower to: f32 through oneDNN's JIT sgemm where it is built in (faster on the small-M
// products of a data-parallel shard), f64 (and f32 without oneDNN) through OpenBLAS's cblas.
#include <cblas.h>
#if RINGFLOW_DNNL
#include <oneapi/dnnl/dnnl.h>
#endif

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

// cblas takes int dimensions; a silently truncated size would read out of bounds.
int to_blas_int(i64 v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw std::invalid_argument(std::string("gemm: ") + what + " out of range");
  return static_cast<int>(v);
}

}  // namespace

template <class T>
void gemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, T alpha, const T* a, i64 lda, const T* b, i64 ldb,
          T beta, T* c, i64 ldc) {
  const int M = to_blas_int(m, "m"), N = to_blas_int(n, "n"), K = to_blas_int(k, "k");
  // BLAS reports these through xerbla, which prints and carries on without computing; an
  // exception tells the caller instead. A row of length 0 (an empty inner dimension, k == 0: C =
  // beta C) may have ld 0, which BLAS would refuse (it wants ld >= 1): it is handed 1.
  if (lda < (trans_a ? m : k)) throw std::invalid_argument("gemm: lda smaller than a row of A");
  if (ldb < (trans_b ? k : n)) throw std::invalid_argument("gemm: ldb smaller than a row of B");
  if (ldc < n) throw std::invalid_argument("gemm: ldc smaller than a row of C");
  const int LDA = to_blas_int(std::max<i64>(1, lda), "lda"), LDB = to_blas_int(std::max<i64>(1, ldb), "ldb"),
            LDC = to_blas_int(std::max<i64>(1, ldc), "ldc");
  if (m == 0 || n == 0) return;
  if (k == 0) {  // C = beta C (oneDNN's sgemm refuses K == 0); beta == 0 writes zeros, as BLAS does
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  max_threads();  // oneDNN's threads follow this thread's OpenMP setting: give it the budget
  if constexpr (std::is_same_v<T, float>) {
#if RINGFLOW_DNNL
    const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, a, LDA, b, LDB,
                                        beta, c, LDC);
    if (st != dnnl_success) throw std::runtime_error("dnnl_sgemm failed with status " + std::to_string(int(st)));
#else
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, LDA, b, LDB, beta, c, LDC);
#endif
  } else {
    cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, a, LDA, b, LDB, beta, c, LDC);
  }
}

template void gemm<float>(bool, bool, i64, i64, i64, float, const float*, i64, const float*, i64, float, float*, i64);
template void gemm<double>(bool, bool, i64, i64, i64, double, const double*, i64, const double*, i64, double, double*,
                           i64);

}  // namespace rf::kernels::cpu
