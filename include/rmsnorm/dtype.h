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

// IEEE binary16 <-> float. Inline: the CPU backend converts in its inner loops.
inline float half_bits_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t mant = h & 0x3ffu;
  std::uint32_t bits;
  if (exp == 0) {
    // zero or subnormal: mant * 2^-24, exact in float
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline std::uint16_t float_to_half_bits(float value) noexcept {
  std::uint32_t x;
  std::memcpy(&x, &value, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  std::uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<std::uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a < 0x38800000u) {
    // below 2^-14: adding 0.5 puts the half-subnormal unit (2^-24) at the float's last
    // mantissa bit, so the FPU performs the round-to-nearest-even for us.
    float f;
    std::memcpy(&f, &a, 4);
    f += 0.5f;
    std::uint32_t b;
    std::memcpy(&b, &f, 4);
    return static_cast<std::uint16_t>(sign | (b - 0x3f000000u));
  }
  // normal: rebias the exponent (127 -> 15) and round to nearest even at bit 13
  a += 0xc8000fffu + ((a >> 13) & 1u);
  return static_cast<std::uint16_t>(sign | (a >> 13));
}

// bfloat16 <-> float.
inline float bf16_bits_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t x = static_cast<std::uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &x, 4);
  return out;
}

inline std::uint16_t float_to_bf16_bits(float value) noexcept {
  std::uint32_t x;
  std::memcpy(&x, &value, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);                                                            // round to nearest even
  return static_cast<std::uint16_t>(x >> 16);
}

// Reads element `i` of a host array of type `t` as double, and writes `v` (rounded once to
// `t`) into element `i`. Slow; for tests, the CLI and setup code, never for a hot loop.
double load_as_double(const void* data, DType t, std::int64_t i) noexcept;
void store_from_double(void* data, DType t, std::int64_t i, double v) noexcept;

}  // namespace rmsnorm
