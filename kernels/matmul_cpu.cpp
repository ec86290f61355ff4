// Dense matrix multiply for the CPU backend: a thin row-major wrapper over OpenBLAS's cblas
// gemm, which the dense layers and the im2col convolutions both lower to.
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "kernels/cpu.h"

namespace rf::kernels::cpu {

namespace {

// cblas takes int dimensions; a silently truncated size would read out of bounds.
int to_blas_int(i64 v, const char* what) {
  if (v < 0 || v > INT32_MAX) throw std::invalid_argument(std::string("gemm: ") + what + " out of range");
  return static_cast<int>(v);
}

struct BlasArgs {
  int m, n, k, lda, ldb, ldc;
};

BlasArgs check(bool ta, bool tb, i64 m, i64 n, i64 k, i64 lda, i64 ldb, i64 ldc) {
  BlasArgs r{to_blas_int(m, "m"), to_blas_int(n, "n"), to_blas_int(k, "k"),
             to_blas_int(lda, "lda"), to_blas_int(ldb, "ldb"), to_blas_int(ldc, "ldc")};
  // Row-major leading dimensions must cover a stored row; BLAS would report this through
  // xerbla (which prints and may abort), so reject it here with an exception instead.
  if (lda < std::max<i64>(1, ta ? m : k)) throw std::invalid_argument("gemm: lda too small");
  if (ldb < std::max<i64>(1, tb ? k : n)) throw std::invalid_argument("gemm: ldb too small");
  if (ldc < std::max<i64>(1, n)) throw std::invalid_argument("gemm: ldc too small");
  return r;
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, float alpha, const float* a, i64 lda,
                 const float* b, i64 ldb, float beta, float* c, i64 ldc) {
  BlasArgs r = check(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              r.m, r.n, r.k, alpha, a, r.lda, b, r.ldb, beta, c, r.ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, double alpha, const double* a, i64 lda,
                  const double* b, i64 ldb, double beta, double* c, i64 ldc) {
  BlasArgs r = check(trans_a, trans_b, m, n, k, lda, ldb, ldc);
  if (m == 0 || n == 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              r.m, r.n, r.k, alpha, a, r.lda, b, r.ldb, beta, c, r.ldc);
}

}  // namespace rf::kernels::cpu
