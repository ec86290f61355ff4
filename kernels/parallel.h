// Threading and vectorization helpers shared by the CPU kernel files.
#pragma once
#include <omp.h>

#include <algorithm>

#include "kernels/common.h"

// Asserts no loop-carried dependence to GCC, so loops whose output may alias an input exactly
// (in-place ops) still vectorize without a runtime overlap check. Other compilers keep theirs.
#if defined(__GNUC__) && !defined(__clang__)
#define RF_IVDEP _Pragma("GCC ivdep")
#else
#define RF_IVDEP
#endif

namespace rf::kernels::cpu {

// Calls body(begin, end) over [0, n): inline when n < 2 * grain (starting an OpenMP team costs
// microseconds, more than a whole op at the batch sizes we train with), else one contiguous
// slice per thread. Work is split over outputs only, so no result depends on the thread count.
template <class F>
inline void parallel_range(i64 n, i64 grain, F&& body) {
  grain = std::max<i64>(1, grain);
  const int nt = (n >= 2 * grain && !omp_in_parallel()) ? omp_get_max_threads() : 1;
  if (nt <= 1) {
    body(i64(0), n);
    return;
  }
  const i64 parts = std::min<i64>(nt, n / grain);
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(parts))
  for (i64 p = 0; p < parts; ++p) body(n * p / parts, n * (p + 1) / parts);
}

}  // namespace rf::kernels::cpu
