// The quantised store's scalar rules (rmsnorm.h states them; this is the CPU backend's one
// copy): the 8-bit formats, the division by the scale, and how a computed scale is chosen.
#pragma once

#include <cmath>
#include <cstdint>

#include "rmsnorm/dtype.h"

namespace rmsnorm::detail::cpu {

// An fp8 e4m3 element, stored as its bit pattern (std::int8_t is the int8 element).
struct F8E4M3 {
  std::uint8_t bits;
};

template <class TQ>
struct QuantFormat;

// The largest code of each format. The codes themselves are dtype.h's float_to_f8e4m3_bits
// (round to nearest even, saturated at +-448, NaN kept) and float_to_i8 (round half to even,
// saturated at +-127, NaN -> 0), applied by quant_loops.inl.
template <>
struct QuantFormat<F8E4M3> {
  static constexpr float qmax = 448.0f;
};

template <>
struct QuantFormat<std::int8_t> {
  static constexpr float qmax = 127.0f;
};

// How y is divided by a scale s: by default the correctly rounded fp32 division y / s;
// with QuantDivision::reciprocal y * r, r = 1 / s rounded once to fp32 (vLLM's form, which
// can land one code away from y / s at a rounding boundary), where 2^-64 <= |s| <= 2^64
// (the CUDA backend's range for its quotient; beyond it both divide exactly). The
// quotient's code: quant_loops.inl.
struct Divisor {
  float s = 1.0f, r = 1.0f;
  bool multiply = false;
  Divisor(float scale, bool reciprocal)
      : s(scale),
        r(1.0f / scale),
        multiply(reciprocal && std::fabs(scale) >= 0x1p-64f && std::fabs(scale) <= 0x1p64f) {}
};

// Rounds a positive scale up to a power of two: a normal float keeps its exponent when its
// mantissa is zero and takes the next one otherwise (the carry does it); the computed
// scales are never subnormal (they are at least the minimum scale).
inline float round_up_pow2(float s) { return bits_to_float((float_to_bits(s) + 0x7fffffu) & 0xff800000u); }

// A computed (per-row or per-group) scale from the max of |y| over its elements:
//   s = max(min(amax, ub) / qmax, min_scale), rounded up to a power of two when pow2.
// min_scale = 1 / (qmax * 512): vLLM's floor for fp8 per-token scales, so that an all-zero
// row gives zeros rather than 0 / 0.
template <class TQ>
inline float dynamic_scale(float amax, const float* ub, bool pow2) {
  constexpr float qmax = QuantFormat<TQ>::qmax;
  const float min_scale = 1.0f / (qmax * 512.0f);
  const float a = ub ? std::fmin(amax, *ub) : amax;
  const float s = std::fmax(a / qmax, min_scale);
  return pow2 ? round_up_pow2(s) : s;
}

}  // namespace rmsnorm::detail::cpu
