// CPU conversions between float and the 16-bit float formats (IEEE half, bfloat16) on raw bits.
// The scalar rules live in half.h; F16C does the same rounding 8 at a time where available.
#include <omp.h>

#include <algorithm>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "kernels/cpu.h"
#include "kernels/parallel.h"
#include "kernels/half.h"

namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds.
constexpr i64 kGrain = 1 << 16;


}  // namespace

void f32_to_f16(const float* x, uint16_t* y, i64 n) {
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    i64 i = b;
#if defined(__F16C__)
    for (; i + 8 <= e; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < e; ++i) y[i] = float_to_half_bits(x[i]);
  });
}

void f16_to_f32(const uint16_t* x, float* y, i64 n) {
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    i64 i = b;
#if defined(__F16C__)
    for (; i + 8 <= e; i += 8)
      _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
#endif
    for (; i < e; ++i) y[i] = half_bits_to_float(x[i]);
  });
}

void f32_to_bf16(const float* x, uint16_t* y, i64 n) {
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) y[i] = float_to_bf16_bits(x[i]);
  });
}

void bf16_to_f32(const uint16_t* x, float* y, i64 n) {
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) y[i] = bf16_bits_to_float(x[i]);
  });
}

}  // namespace rf::kernels::cpu
