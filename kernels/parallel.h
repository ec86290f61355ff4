// Threading and vectorization helpers shared by the CPU kernel files.
#pragma once
#include <omp.h>

#include <algorithm>
#include <atomic>

#include "kernels/common.h"

// Asserts no loop-carried dependence to GCC, so loops whose output may alias an input exactly
// (in-place ops) still vectorize without a runtime overlap check. Other compilers keep theirs.
#if defined(__GNUC__) && !defined(__clang__)
#define RF_IVDEP _Pragma("GCC ivdep")
#else
#define RF_IVDEP
#endif

namespace rf::kernels::cpu {

namespace detail {
inline std::atomic<int> thread_budget{0};  // 0: none set, OpenMP's own default
}  // namespace detail

// The number of threads every CPU kernel may use, process-wide (`--threads`). OpenMP's
// omp_set_num_threads sets only the calling thread's value: a thread started later (the
// Reducer's compression hook, the communication thread) would get one per core from OpenMP's
// default and start a team of its own, whose idle workers spin on the cores the compute needs
// (fp16 across two hosts ran 2.4x slower for it). So the budget lives here, and every thread
// that enters a kernel adopts it.
inline void set_max_threads(int n) {
  detail::thread_budget.store(n, std::memory_order_relaxed);
  if (n > 0) omp_set_num_threads(n);
}

// The budget, also applied to the calling thread's OpenMP setting (oneDNN and OpenBLAS's OpenMP
// build read that one) the first time this thread sees it.
inline int max_threads() {
  const int want = detail::thread_budget.load(std::memory_order_relaxed);
  if (want <= 0) return omp_get_max_threads();
  thread_local int applied = 0;
  if (applied != want) {
    omp_set_num_threads(want);
    applied = want;
  }
  return want;
}

// Calls body(begin, end) over [0, n): inline when n < 2 * grain (starting an OpenMP team costs
// microseconds, more than a whole op at the batch sizes we train with), else one contiguous
// slice per thread. Work is split over outputs only, so no result depends on the thread count.
template <class F>
inline void parallel_range(i64 n, i64 grain, F&& body) {
  grain = std::max<i64>(1, grain);
  const int nt = (n >= 2 * grain && !omp_in_parallel()) ? max_threads() : 1;
  if (nt <= 1) {
    body(i64(0), n);
    return;
  }
  const i64 parts = std::min<i64>(nt, n / grain);
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(parts))
  for (i64 p = 0; p < parts; ++p) body(n * p / parts, n * (p + 1) / parts);
}

}  // namespace rf::kernels::cpu
