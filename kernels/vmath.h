// Vectorised exp and erf over float arrays for the CPU kernels' hot loops (GELU, softmax).
// On x86-64 with AVX2 they call glibc's libmvec (_ZGVdN8v_expf / _ZGVdN8v_erff: 8 floats a
// call, within 4 ulp, the vector variants GCC itself calls under -ffast-math), which are 5-10x
// faster than the scalar expf / erff per element; elsewhere, or without libmvec
// (RINGFLOW_MVEC 0), the scalar functions. Double precision always uses the scalar std::exp /
// std::erf, so f64 results (the parity tests against PyTorch) do not depend on this header.
#pragma once
#include <cmath>

#include "kernels/common.h"

#if defined(__AVX2__) && defined(__x86_64__) && RINGFLOW_MVEC
#include <immintrin.h>
extern "C" __m256 _ZGVdN8v_expf(__m256);
extern "C" __m256 _ZGVdN8v_erff(__m256);
#define RF_VMATH_AVX2 1
#else
#define RF_VMATH_AVX2 0
#endif

namespace rf::kernels::cpu {

// The kernels clamp exp arguments below this before vexp and treat their results as 0: libmvec
// takes a slow scalar path for a vector with any lane whose result is not a normal float (below
// FLT_MIN, exp(-87.3)), and exp(-80) = 1.8e-35 is already far below anything f32 softmax or GELU
// sums can resolve (their terms are compared against values >= 1e-7 * 1).
constexpr float kExpFloor = -80.0f;

// y[i] = exp(x[i]) (x and y may be the same array).
inline void vexp(const float* x, float* y, i64 n) {
  i64 i = 0;
#if RF_VMATH_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _ZGVdN8v_expf(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) y[i] = std::exp(x[i]);
}

// y[i] = erf(x[i]) (x and y may be the same array).
inline void verf(const float* x, float* y, i64 n) {
  i64 i = 0;
#if RF_VMATH_AVX2
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _ZGVdN8v_erff(_mm256_loadu_ps(x + i)));
#endif
  for (; i < n; ++i) y[i] = std::erf(x[i]);
}

}  // namespace rf::kernels::cpu
