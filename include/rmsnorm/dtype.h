// Element types and host-side conversions for the 16-bit formats.
//
// The CPU backend, the CLI and the tests need fp16/bf16 on the host without any CUDA
// header, so the conversions live here as plain bit manipulation (round to nearest even,
// NaN kept quiet, overflow to infinity), matching what the GPU's conversion instructions do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace rmsnorm {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2, f64 = 3 };

// Bytes per element.
std::size_t dtype_size(DType t) noexcept;
// "f32", "f16", "bf16", "f64".
const char* dtype_name(DType t) noexcept;
// Accepts the names above and the aliases "fp32", "float32", "fp16", "float16", "half",
// "bfloat16", "fp64", "float64". Throws rmsnorm::Error naming `what` on anything else.
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

// Reads element `i` of a host array of type `t` as double, and writes `v` (rounded once to
// `t`) into element `i`. Slow; for tests, the CLI and setup code, never for a hot loop.
double load_as_double(const void* data, DType t, std::int64_t i) noexcept;
void store_from_double(void* data, DType t, std::int64_t i, double v) noexcept;

}  // namespace rmsnorm
