// Element access for the CPU baselines' loops: a 16-bit or f32 element read as float and
// a float rounded once into the dtype, inline so that the loops stay tight.
#pragma once

#include <cstdint>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::bench {

inline float load_float(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::f16:
      return half_bits_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::bf16:
      return bf16_bits_to_float(static_cast<const std::uint16_t*>(p)[i]);
    case DType::f64:
      return static_cast<float>(static_cast<const double*>(p)[i]);
    case DType::f8e4m3:
      return f8e4m3_bits_to_float(static_cast<const std::uint8_t*>(p)[i]);
    case DType::i8:
      return static_cast<const std::int8_t*>(p)[i];
    case DType::f32:
      break;
  }
  return static_cast<const float*>(p)[i];
}

inline void store_float(void* p, DType t, std::int64_t i, float v) {
  switch (t) {
    case DType::f16:
      static_cast<std::uint16_t*>(p)[i] = float_to_half_bits(v);
      return;
    case DType::bf16:
      static_cast<std::uint16_t*>(p)[i] = float_to_bf16_bits(v);
      return;
    case DType::f64:
      static_cast<double*>(p)[i] = v;
      return;
    case DType::f8e4m3:  // saturating, as `.clamp(-448, 448).to(torch.float8_e4m3fn)`
      static_cast<std::uint8_t*>(p)[i] = float_to_f8e4m3_bits(v);
      return;
    case DType::i8:  // round half to even, saturated to -127..127
      static_cast<std::int8_t*>(p)[i] = float_to_i8(v);
      return;
    case DType::f32:
      break;
  }
  static_cast<float*>(p)[i] = v;
}

}  // namespace rmsnorm::bench
