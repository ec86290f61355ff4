// Batched matrix multiply for the CPU backend (BatchMatMul): one gemm (matmul_cpu.cpp) per output
// matrix, or a single gemm where the batch folds into the rows (A's batch contiguous and not
// transposed, B broadcast whole: a Linear layer over a sequence).
//
// Threading: attention multiplies many small matrices (B*H = 64 products of 128x128x32), each
// too small for oneDNN or OpenBLAS to thread well (and OpenBLAS runs products under its
// threshold on one thread anyway). There the threads split the batch and each product runs on
// one thread (a gemm inside the OpenMP region sees omp_in_parallel() and stays serial). A large
// product is better threaded inside the gemm, so those run one after another.
#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "kernels/cpu.h"
#include "kernels/parallel.h"

namespace rf::kernels::cpu {

namespace {

// Multiply-adds of one product above which the gemm itself is threaded: 2^21 is a 128x128x128
// product, where a threaded sgemm already scales on its own.
constexpr i64 kThreadInsideGemm = i64(1) << 21;
// The batch is split over threads only when each thread gets at least this many multiply-adds
// (an OpenMP team costs a few microseconds).
constexpr i64 kBatchGrain = i64(1) << 15;

}  // namespace

template <class T> void batch_matmul(const BatchGemm& g, bool trans_a, bool trans_b, const T* a, const T* b, T* c) {
  // gemm's own checks, made here: an exception must not leave the OpenMP region below.
  for (i64 v : {g.m, g.n, g.k, g.lda, g.ldb})
    if (v < 0 || v > INT32_MAX) throw std::invalid_argument("batch_matmul: a dimension is out of gemm's range");
  if (g.lda < (trans_a ? g.m : g.k) || g.ldb < (trans_b ? g.k : g.n))
    throw std::invalid_argument("batch_matmul: a leading dimension is shorter than a row");
  if (g.count == 0 || g.m == 0 || g.n == 0) return;
  const i64 mat_c = g.m * g.n;
  i64 run_a = 0, run_b = 0;
  if (g.regular_from(&run_a, &run_b) == 0 && run_b == 0 && run_a == g.mat_a && !trans_a &&
      g.count * g.m <= INT32_MAX) {
    // [count, m, k] x [k, n]: the batch is more rows of one product.
    gemm<T>(false, trans_b, g.count * g.m, g.n, g.k, T(1), a, g.lda, b, g.ldb, T(0), c, g.n);
    return;
  }
  const i64 work = std::max<i64>(1, g.m * g.n * std::max<i64>(g.k, 1));
  auto one = [&](i64 i) {
    i64 oa, ob;
    g.offsets(i, &oa, &ob);
    gemm<T>(trans_a, trans_b, g.m, g.n, g.k, T(1), a + oa, g.lda, b + ob, g.ldb, T(0), c + i * mat_c, g.n);
  };
  if (work >= kThreadInsideGemm) {
    for (i64 i = 0; i < g.count; ++i) one(i);
    return;
  }
  parallel_range(g.count, (kBatchGrain + work - 1) / work, [&](i64 i0, i64 i1) {
    for (i64 i = i0; i < i1; ++i) one(i);
  });
}

template void batch_matmul<float>(const BatchGemm&, bool, bool, const float*, const float*, float*);
template void batch_matmul<double>(const BatchGemm&, bool, bool, const double*, const double*, double*);

}  // namespace rf::kernels::cpu
