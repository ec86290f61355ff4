// Scalar float <-> IEEE half and float <-> bfloat16 conversions on raw bits, integer-only so the
// CPU and CUDA kernels round identically (nearest-even; inf, NaN and subnormals handled).
#pragma once
#include <cstdint>
#include <cstring>

#include "kernels/common.h"

namespace rf::kernels {

RF_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

RF_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// Adds 1 to v when the dropped low `shift` bits `rem` round it up under nearest-even.
RF_HD uint32_t round_nearest_even(uint32_t v, uint32_t rem, int shift) {
  const uint32_t half = 1u << (shift - 1);
  return v + ((rem > half || (rem == half && (v & 1u))) ? 1u : 0u);
}

RF_HD uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_to_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {
    // Inf stays inf; NaN stays NaN and quiet, keeping the top of its payload.
    return static_cast<uint16_t>(a == 0x7f800000u ? sign | 0x7c00u : sign | 0x7e00u | ((a >> 13) & 0x3ffu));
  }
  // 65520 = 65504 + half an ulp, a tie that rounds to even, i.e. up to inf.
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a >= 0x38800000u) {
    // Normal half: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits; a
    // carry out of the mantissa correctly bumps the exponent.
    const uint32_t v = (a >> 13) - ((127u - 15u) << 10);
    return static_cast<uint16_t>(sign | round_nearest_even(v, a & 0x1fffu, 13));
  }
  // Subnormal half (value m 2^-24) or zero. Below 2^-25 (exponent field 102) everything rounds
  // to zero; 2^-25 itself is a tie that rounds to even, i.e. zero, which the general path gives.
  const int e = static_cast<int>(a >> 23);
  if (e < 102) return static_cast<uint16_t>(sign);
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  const int shift = 126 - e;  // 14..24
  const uint32_t v = mant >> shift;
  // Rounding up from 0x3ff gives 0x400, the smallest normal, as it should.
  return static_cast<uint16_t>(sign | round_nearest_even(v, mant & ((1u << shift) - 1u), shift));
}

RF_HD float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1f) {
    // Inf, or NaN made quiet (as the F16C and CUDA conversions do), payload kept.
    return bits_to_float(sign | 0x7f800000u | (m ? 0x400000u : 0u) | (m << 13));
  }
  if (e == 0) {
    if (m == 0) return bits_to_float(sign);
    // Subnormal: normalize; m 2^-24 = (m << k) 2^(-24-k) with the leading bit moved to bit 10.
    int fexp = 127 - 14;
    while (!(m & 0x400u)) {
      m <<= 1;
      --fexp;
    }
    return bits_to_float(sign | (static_cast<uint32_t>(fexp) << 23) | ((m & 0x3ffu) << 13));
  }
  return bits_to_float(sign | ((e + 127u - 15u) << 23) | (m << 13));
}

RF_HD uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_to_bits(f);
  // NaN: truncation could clear every mantissa bit and make it inf, so force the quiet bit.
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  // Nearest-even on the low 16 bits; overflow past the largest finite carries into inf, as it should.
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

RF_HD float bf16_bits_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

}  // namespace rf::kernels
