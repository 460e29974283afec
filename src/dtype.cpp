#include "rmsnorm/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm {

std::size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::f64:
      return 8;
  }
  return 0;
}

const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::f16:
      return "f16";
    case DType::bf16:
      return "bf16";
    case DType::f64:
      return "f64";
  }
  return "unknown";
}

DType parse_dtype(const std::string& s, const char* what) {
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float") return DType::f32;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::f16;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  if (s == "f64" || s == "fp64" || s == "float64" || s == "double") return DType::f64;
  throw Error(Code::invalid_argument,
              std::string(what) + ": unknown dtype '" + s + "' (expected f32, f16, bf16 or f64)");
}

double load_as_double(const void* data, DType t, std::int64_t i) noexcept {
  switch (t) {
    case DType::f32:
      return static_cast<const float*>(data)[i];
    case DType::f16:
      return half_bits_to_float(static_cast<const std::uint16_t*>(data)[i]);
    case DType::bf16:
      return bf16_bits_to_float(static_cast<const std::uint16_t*>(data)[i]);
    case DType::f64:
      return static_cast<const double*>(data)[i];
  }
  return 0.0;
}

namespace {
// Rounds a double straight to a 16-bit format's precision (nearest, ties to even), keeping
// it a double: the result is then exact in float, so converting it costs no second rounding.
double round_to_16bit(double v, int precision, int min_exp, double max_finite) {
  if (!std::isfinite(v) || v == 0.0) return v;
  int e = 0;
  std::frexp(v, &e);  // leading bit 2^(e-1)
  const int lead = std::max(e - 1, min_exp);
  const double spacing = std::ldexp(1.0, lead - (precision - 1));
  const double r = std::nearbyint(v / spacing) * spacing;
  return std::fabs(r) > max_finite ? std::copysign(HUGE_VAL, v) : r;
}
}  // namespace

void store_from_double(void* data, DType t, std::int64_t i, double v) noexcept {
  switch (t) {
    case DType::f32:
      static_cast<float*>(data)[i] = static_cast<float>(v);
      break;
    case DType::f16:
      static_cast<std::uint16_t*>(data)[i] =
          float_to_half_bits(static_cast<float>(round_to_16bit(v, 11, -14, 65504.0)));
      break;
    case DType::bf16:
      static_cast<std::uint16_t*>(data)[i] =
          float_to_bf16_bits(static_cast<float>(round_to_16bit(v, 8, -126, std::ldexp(255.0 / 128.0, 127))));
      break;
    case DType::f64:
      static_cast<double*>(data)[i] = v;
      break;
  }
}

}  // namespace rmsnorm
