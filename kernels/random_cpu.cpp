// CPU dropout and random fills. Each element is computed from (seed, counter, index) alone by the
// functions in random.h, so any thread split, and the CUDA kernels, give the same bits.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu.h"
#include "kernels/parallel.h"
#include "kernels/random.h"

namespace rf::kernels::cpu {

namespace {

// Below this many elements per thread one thread does the whole op: starting an OpenMP team
// costs microseconds. A hash per element costs several adds, hence lower than for plain math.
constexpr i64 kGrain = 1 << 13;


}  // namespace

template <class T>
void dropout(const T* x, T* y, T* mask, i64 n, double rate, uint64_t seed, uint64_t counter) {
  if (!(rate >= 0.0 && rate <= 1.0))
    throw std::invalid_argument("dropout: rate must be in [0, 1], got " + std::to_string(rate));
  // rate 1 drops everything; its 1/(1-rate) would be inf and 0 * inf NaN, so the scale is unused.
  const T scale = rate < 1.0 ? static_cast<T>(1.0 / (1.0 - rate)) : T(0);
  const uint64_t key = rng::stream_key(seed, counter);
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) {
      const T mi = rng::keep(key, static_cast<uint64_t>(i), rate) ? scale : T(0);
      mask[i] = mi;
      y[i] = x[i] * mi;
    }
  });
}

template <class T>
void fill_uniform(T* y, i64 n, double lo, double hi, uint64_t seed) {
  const uint64_t key = rng::stream_key(seed, rng::kFillUniformCounter);
  parallel_range(n, kGrain, [&](i64 b, i64 e) {
    for (i64 i = b; i < e; ++i) y[i] = static_cast<T>(rng::uniform(key, static_cast<uint64_t>(i), lo, hi));
  });
}

template <class T>
void fill_normal(T* y, i64 n, double mean, double stddev, uint64_t seed) {
  const uint64_t key = rng::stream_key(seed, rng::kFillNormalCounter);
  parallel_range(n, kGrain / 8, [&](i64 b, i64 e) {
    i64 i = b;
    if (i < e && (i & 1)) {
      y[i] = static_cast<T>(rng::normal(key, static_cast<uint64_t>(i), mean, stddev));
      ++i;
    }
    // Whole pairs: one log and one sincos give both elements.
    for (; i + 1 < e; i += 2) {
      double z0, z1;
      rng::normal_pair(key, static_cast<uint64_t>(i), &z0, &z1);
      y[i] = static_cast<T>(std::fma(stddev, z0, mean));
      y[i + 1] = static_cast<T>(std::fma(stddev, z1, mean));
    }
    if (i < e) y[i] = static_cast<T>(rng::normal(key, static_cast<uint64_t>(i), mean, stddev));
  });
}

template <class T>
void fill_constant(T* y, i64 n, double value) {
  const T v = static_cast<T>(value);
  parallel_range(n, kGrain * 4, [&](i64 b, i64 e) { std::fill(y + b, y + e, v); });
}

template void dropout<float>(const float*, float*, float*, i64, double, uint64_t, uint64_t);
template void dropout<double>(const double*, double*, double*, i64, double, uint64_t, uint64_t);
template void fill_uniform<float>(float*, i64, double, double, uint64_t);
template void fill_uniform<double>(double*, i64, double, double, uint64_t);
template void fill_normal<float>(float*, i64, double, double, uint64_t);
template void fill_normal<double>(double*, i64, double, double, uint64_t);
template void fill_constant<float>(float*, i64, double);
template void fill_constant<double>(double*, i64, double);

}  // namespace rf::kernels::cpu
