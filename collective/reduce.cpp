// Reduction kernels (see reduce.h). Same-type inputs combine straight from the sources; 16-bit
// floats go through f32 tiles (F16C conversions where the CPU has them).
#include "collective/reduce.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/half.h"
#include "runtime/error.h"
#if defined(__F16C__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define RF_IVDEP _Pragma("GCC ivdep")
#else
#define RF_IVDEP
#endif

namespace rf::collective {
namespace {

// Integer sums wrap instead of overflowing (undefined for signed types).
template <class A> inline A add(A a, A b) {
  if constexpr (std::is_integral_v<A>) {
    using U = std::make_unsigned_t<A>;
    return static_cast<A>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}
struct OpSum { template <class A> A operator()(A a, A b) const { return add(a, b); } };
struct OpMin { template <class A> A operator()(A a, A b) const { return b < a ? b : a; } };
struct OpMax { template <class A> A operator()(A a, A b) const { return a < b ? b : a; } };

constexpr size_t kTile = 1024;

// Same storage and accumulation type (f32, f64, i32, i64).
template <class T, class Op>
void reduce_same(T* dst, T* dst2, const T* const* s, int m, size_t n, int div, Op op) {
  const T d = static_cast<T>(div > 0 ? div : 1);
  if (m == 2 && div <= 0 && !dst2) {  // the ring's hop: one pass, no tile
    const T* a = s[0];
    const T* b = s[1];
    RF_IVDEP for (size_t i = 0; i < n; ++i) dst[i] = op(a[i], b[i]);
    return;
  }
  T acc[kTile];
  for (size_t i0 = 0; i0 < n; i0 += kTile) {
    const size_t t = std::min(kTile, n - i0);
    const T* s0 = s[0] + i0;
    if (m == 1) {
      for (size_t i = 0; i < t; ++i) acc[i] = s0[i];
    } else {
      const T* s1 = s[1] + i0;
      for (size_t i = 0; i < t; ++i) acc[i] = op(s0[i], s1[i]);
    }
    for (int k = 2; k < m; ++k) {
      const T* sk = s[k] + i0;
      for (size_t i = 0; i < t; ++i) acc[i] = op(acc[i], sk[i]);
    }
    if (div > 0)
      for (size_t i = 0; i < t; ++i) acc[i] = acc[i] / d;
    T* o = dst + i0;
    RF_IVDEP for (size_t i = 0; i < t; ++i) o[i] = acc[i];
    if (dst2) {
      T* o2 = dst2 + i0;
      RF_IVDEP for (size_t i = 0; i < t; ++i) o2[i] = acc[i];
    }
  }
}

void widen(bool bf16, const uint16_t* in, float* out, size_t n) {
  size_t i = 0;
  if (bf16) {
    for (; i < n; ++i) out[i] = kernels::bf16_bits_to_float(in[i]);
    return;
  }
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
  for (; i < n; ++i) out[i] = kernels::half_bits_to_float(in[i]);
}

void narrow(bool bf16, const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  if (bf16) {
    for (; i < n; ++i) out[i] = kernels::float_to_bf16_bits(in[i]);
    return;
  }
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) out[i] = kernels::float_to_half_bits(in[i]);
}

// f16 / bf16: widen each input tile to f32, combine, divide, round once.
template <class Op>
void reduce_16(bool bf16, uint16_t* dst, uint16_t* dst2, const uint16_t* const* s, int m, size_t n,
               int div, Op op) {
  float acc[kTile], tmp[kTile];
  const float d = static_cast<float>(div > 0 ? div : 1);
  for (size_t i0 = 0; i0 < n; i0 += kTile) {
    const size_t t = std::min(kTile, n - i0);
    widen(bf16, s[0] + i0, acc, t);
    for (int k = 1; k < m; ++k) {
      widen(bf16, s[k] + i0, tmp, t);
      for (size_t i = 0; i < t; ++i) acc[i] = op(acc[i], tmp[i]);
    }
    if (div > 0)
      for (size_t i = 0; i < t; ++i) acc[i] = acc[i] / d;
    narrow(bf16, acc, dst + i0, t);
    if (dst2) std::memcpy(dst2 + i0, dst + i0, t * sizeof(uint16_t));
  }
}

template <class Op>
void dispatch(void* dst, void* dst2, const void* const* srcs, int m, size_t n, DType dtype, int div, Op op) {
  auto run = [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    reduce_same<T>(static_cast<T*>(dst), static_cast<T*>(dst2), reinterpret_cast<const T* const*>(srcs), m,
                   n, div, op);
  };
  switch (dtype) {
    case DType::F32: return run(static_cast<float*>(nullptr));
    case DType::F64: return run(static_cast<double*>(nullptr));
    case DType::I32: return run(static_cast<int32_t*>(nullptr));
    case DType::I64: return run(static_cast<int64_t*>(nullptr));
    case DType::F16:
    case DType::BF16:
      return reduce_16(dtype == DType::BF16, static_cast<uint16_t*>(dst), static_cast<uint16_t*>(dst2),
                       reinterpret_cast<const uint16_t* const*>(srcs), m, n, div, op);
    case DType::U8: break;
  }
  check_reducible(dtype);
}

}  // namespace

void check_reducible(DType dtype) {
  RF_CHECK(dtype != DType::U8, "collectives reduce f32, f64, f16, bf16, i32 and i64, not ", dtype_name(dtype));
}

void reduce_into(void* dst, void* dst2, const void* const* srcs, int m, size_t count, DType dtype,
                 ReduceOp op, int avg_div) {
  if (count == 0) return;
  if (op != ReduceOp::Avg) avg_div = 0;
  switch (op) {
    case ReduceOp::Sum:
    case ReduceOp::Avg: return dispatch(dst, dst2, srcs, m, count, dtype, avg_div, OpSum{});
    case ReduceOp::Min: return dispatch(dst, dst2, srcs, m, count, dtype, 0, OpMin{});
    case ReduceOp::Max: return dispatch(dst, dst2, srcs, m, count, dtype, 0, OpMax{});
  }
}

}  // namespace rf::collective
