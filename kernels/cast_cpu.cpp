// CPU conversions between float and the 16-bit float formats (IEEE half, bfloat16) on raw bits.
// The scalar rules live in half.h; F16C does the same rounding 8 at a time where available.
#include <omp.h>

#include <algorithm>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "kernels/cpu.h"
#include "kernels/half.h"

namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds.
constexpr i64 kGrain = 1 << 16;

// Calls body(begin, end) over [0, n): inline when small, else one contiguous slice per thread.
template <class F>
void parallel_range(i64 n, F&& body) {
  const int nt = (n >= 2 * kGrain && !omp_in_parallel()) ? omp_get_max_threads() : 1;
  if (nt <= 1) {
    body(i64(0), n);
    return;
  }
  const i64 parts = std::min<i64>(nt, n / kGrain);
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(parts))
  for (i64 p = 0; p < parts; ++p) body(n * p / parts, n * (p + 1) / parts);
}

}  // namespace

void f32_to_f16(const float* x, uint16_t* y, i64 n) {
  parallel_range(n, [&](i64 b, i64 e) {
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
  parallel_range(n, [&](i64 b, i64 e) {
    i64 i = b;
#if defined(__F16C__)
    for (; i + 8 <= e; i += 8)
      _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i))));
#endif
    for (; i < e; ++i) y[i] = half_bits_to_float(x[i]);
  });
}

void f32_to_bf16(const float* x, uint16_t* y, i64 n) {
  parallel_range(n, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) y[i] = float_to_bf16_bits(x[i]);
  });
}

void bf16_to_f32(const uint16_t* x, float* y, i64 n) {
  parallel_range(n, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) y[i] = bf16_bits_to_float(x[i]);
  });
}

}  // namespace rf::kernels::cpu
