// Element types and host-side conversions for the 16-bit and 8-bit formats.
//
// The CPU backend, the CLI and the tests need fp16/bf16 (and the quantised outputs' fp8 e4m3
// and int8) on the host without any CUDA header, so the conversions live here as plain bit
// manipulation (round to nearest even, NaN kept), matching what the GPU's conversion
// instructions do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace rmsnorm {

// f8e4m3 and i8 are output-only: the quantised outputs (quant_forward) are written in them.
//   f8e4m3  OCP fp8 E4M3 "fn" (PyTorch's float8_e4m3fn): 1 sign, 4 exponent (bias 7) and 3
//           mantissa bits, finite values up to +-448, no infinities, NaN = S.1111.111
//   i8      signed 8-bit integer (int8), used symmetrically: -127..127
enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3, f8e4m3 = 4, i8 = 5 };

// Bytes per element.
std::size_t dtype_size(DType t) noexcept;
// "f32", "f16", "bf16", "f64", "f8e4m3", "i8".
const char* dtype_name(DType t) noexcept;
// Accepts the names above and the aliases "fp32", "float32", "fp16", "float16", "half",
// "bfloat16", "fp64", "float64", "float8_e4m3fn", "e4m3", "int8". Throws rmsnorm::Error
// naming `what` on anything else ("f8" alone is refused: it does not say which fp8).
DType parse_dtype(const std::string& name, const char* what = "dtype");

// IEEE binary16 and bfloat16 <-> float, round to nearest even, NaN kept (quiet), overflow
// to infinity. Inline and branch-free (every case is computed, the right one selected) so
// that the CPU backend's loops over 16-bit data vectorise.
namespace detail {
inline float bits_to_float(std::uint32_t bits) noexcept {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline std::uint32_t float_to_bits(float f) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}
}  // namespace detail

inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t shifted = static_cast<std::uint32_t>(h & 0x7fffu) << 13;  // exponent and mantissa
  const std::uint32_t exp = shifted & 0x0f800000u;
  // normal: rebias the exponent (15 -> 127); inf/NaN: all-ones exponent stays all ones
  const std::uint32_t normal = shifted + ((127u - 15u) << 23) + (exp == 0x0f800000u ? (128u - 16u) << 23 : 0u);
  // zero/subnormal: read as 2^-14 * (1 + m/1024) and subtract 2^-14, leaving m * 2^-24 exactly
  const float subnormal = detail::bits_to_float(shifted + (113u << 23)) - detail::bits_to_float(113u << 23);
  const std::uint32_t magnitude = exp == 0 ? detail::float_to_bits(subnormal) : normal;
  return detail::bits_to_float(magnitude | sign);
}

inline std::uint16_t float_to_half_bits(float value) noexcept {
  const std::uint32_t x = detail::float_to_bits(value);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t a = x & 0x7fffffffu;
  // below 2^-14: adding 0.5 puts the half-subnormal unit (2^-24) at the float's last mantissa
  // bit, so the FPU rounds to nearest even for us
  const std::uint32_t subnormal = detail::float_to_bits(detail::bits_to_float(a) + 0.5f) - 0x3f000000u;
  // normal: rebias the exponent (127 -> 15) and round to nearest even at bit 13 (a carry
  // into the exponent is correct rounding, up to infinity)
  const std::uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
  std::uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477ff000u ? 0x7c00u : h;  // >= 65520 rounds to infinity
  h = a > 0x7f800000u ? 0x7e00u : h;   // NaN
  return static_cast<std::uint16_t>(sign | h);
}

inline float bf16_bits_to_float(std::uint16_t bits) noexcept {
  return detail::bits_to_float(static_cast<std::uint32_t>(bits) << 16);
}

inline std::uint16_t float_to_bf16_bits(float value) noexcept {
  const std::uint32_t x = detail::float_to_bits(value);
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;  // round to nearest even
  const std::uint32_t quiet_nan = (x >> 16) | 0x40u;
  return static_cast<std::uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

// fp8 e4m3 ("fn": no infinities) <-> float.
//
// float_to_f8e4m3_bits rounds to nearest even and saturates: every finite value beyond 448
// in magnitude, and +-infinity, become +-448; NaN stays NaN (0x7f with the input's sign).
// This is PyTorch's `v.clamp(-448, 448).to(torch.float8_e4m3fn)` bit for bit (its cast
// alone turns magnitudes from 464 up into NaN, hence the clamp every quantiser applies
// first), and what the GPU's saturating conversion (cvt.rn.satfinite.e4m3x2.f32) gives.
// Signed zeros keep their sign. Values below 2^-6 are subnormal, spaced 2^-9 apart.
inline float f8e4m3_bits_to_float(std::uint8_t b) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(b & 0x80u) << 24;
  const std::uint32_t exp = (b >> 3) & 0xfu, mant = b & 0x7u;
  if (exp == 0xfu && mant == 0x7u) return detail::bits_to_float(sign | 0x7fc00000u);  // NaN
  // Subnormal (exp 0): mant * 2^-9, exact in float; normal: rebias the exponent (7 -> 127).
  const float magnitude = exp == 0 ? static_cast<float>(mant) * (1.0f / 512.0f)
                                   : detail::bits_to_float(((exp + 120u) << 23) | (mant << 20));
  return detail::bits_to_float(detail::float_to_bits(magnitude) | sign);
}

inline std::uint8_t float_to_f8e4m3_bits(float value) noexcept {
  // Branch-free (every case computed, then selected), so that a loop of conversions
  // vectorises; the same codes as the branching form for every one of the 2^32 inputs.
  const std::uint32_t x = detail::float_to_bits(value);
  const std::uint32_t magnitude = x & 0x7fffffffu;
  const std::uint32_t a = magnitude > 0x43e00000u ? 0x43e00000u : magnitude;  // saturate at 448
  // Below 2^-6 (subnormal): adding 2^14 puts the subnormal spacing 2^-9 at the float's last
  // mantissa bit, so the FPU rounds to nearest even; what is left above 2^14 is the count
  // of 2^-9 steps (8 of them is 2^-6, the smallest normal: still right).
  const std::uint32_t subnormal = detail::float_to_bits(detail::bits_to_float(a) + 16384.0f) - 0x46800000u;
  // Normal: rebias the exponent (127 -> 7) and round to nearest even at bit 20. No carry
  // can pass 448 (0x7e): a is at most 448 itself. (Meaningless, and not selected, below 2^-6.)
  const std::uint32_t normal = (a - (120u << 23) + 0x7ffffu + ((a >> 20) & 1u)) >> 20;
  std::uint32_t q = a < 0x3c800000u ? subnormal : normal;
  q = magnitude > 0x7f800000u ? 0x7fu : q;  // NaN
  return static_cast<std::uint8_t>(((x >> 24) & 0x80u) | q);
}

// int8 from float: round half to even, saturated to the symmetric range -127..127 (never
// -128); NaN becomes 0, as the GPU's saturating conversion (cvt.rni.sat.s8.f32) gives.
// Branch-free, as above.
inline std::int8_t float_to_i8(float value) noexcept {
  const float clamped = value < -127.0f ? -127.0f : value > 127.0f ? 127.0f : value;  // NaN stays NaN
  // 1.5 * 2^23 shifts the fraction out of a float of magnitude < 2^22: the FPU's round to
  // nearest even does the rounding, and the integer reads off the low mantissa bits.
  const float shifted = clamped + 12582912.0f;
  const std::int32_t q = static_cast<std::int32_t>(detail::float_to_bits(shifted) & 0x7fffffu) - 0x400000;
  return static_cast<std::int8_t>(value == value ? q : 0);
}

// Reads element `i` of a host array of type `t` as double, and writes `v` (rounded once to
// `t`) into element `i`. Slow; for tests, the CLI and setup code, never for a hot loop.
// f8e4m3 and i8 are rounded from the double directly, with the saturation of the
// conversions above.
double load_as_double(const void* data, DType t, std::int64_t i) noexcept;
void store_from_double(void* data, DType t, std::int64_t i, double v) noexcept;

}  // namespace rmsnorm
