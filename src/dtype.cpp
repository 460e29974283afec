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
    case DType::f8e4m3:
    case DType::i8:
      return 1;
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
    case DType::f8e4m3:
      return "f8e4m3";
    case DType::i8:
      return "i8";
  }
  return "unknown";
}

DType parse_dtype(const std::string& s, const char* what) {
  if (s == "f32" || s == "fp32" || s == "float32" || s == "float") return DType::f32;
  if (s == "f16" || s == "fp16" || s == "float16" || s == "half") return DType::f16;
  if (s == "bf16" || s == "bfloat16") return DType::bf16;
  if (s == "f64" || s == "fp64" || s == "float64" || s == "double") return DType::f64;
  if (s == "f8e4m3" || s == "float8_e4m3fn" || s == "e4m3" || s == "fp8_e4m3") return DType::f8e4m3;
  if (s == "i8" || s == "int8") return DType::i8;
  throw Error(Code::invalid_argument,
              std::string(what) + ": unknown dtype '" + s + "' (expected f32, f16, bf16, f64, f8e4m3 or i8)");
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
    case DType::f8e4m3:
      return f8e4m3_bits_to_float(static_cast<const std::uint8_t*>(data)[i]);
    case DType::i8:
      return static_cast<const std::int8_t*>(data)[i];
  }
  return 0.0;
}

namespace {
// Rounds a double straight to a narrow format's precision (nearest, ties to even), keeping
// it a double: the result is then exact in float, so converting it costs no second rounding.
// Beyond max_finite: infinity (f16, bf16), or max_finite itself when `saturate` (fp8).
double round_to_narrow(double v, int precision, int min_exp, double max_finite, bool saturate = false) {
  if (saturate && std::isinf(v)) return std::copysign(max_finite, v);
  if (!std::isfinite(v) || v == 0.0) return v;
  int e = 0;
  std::frexp(v, &e);  // leading bit 2^(e-1)
  const int lead = std::max(e - 1, min_exp);
  const double spacing = std::ldexp(1.0, lead - (precision - 1));
  const double r = std::nearbyint(v / spacing) * spacing;
  if (std::fabs(r) > max_finite) return std::copysign(saturate ? max_finite : HUGE_VAL, v);
  return r;
}
}  // namespace

void store_from_double(void* data, DType t, std::int64_t i, double v) noexcept {
  switch (t) {
    case DType::f32:
      static_cast<float*>(data)[i] = static_cast<float>(v);
      break;
    case DType::f16:
      static_cast<std::uint16_t*>(data)[i] =
          float_to_half_bits(static_cast<float>(round_to_narrow(v, 11, -14, 65504.0)));
      break;
    case DType::bf16:
      static_cast<std::uint16_t*>(data)[i] =
          float_to_bf16_bits(static_cast<float>(round_to_narrow(v, 8, -126, std::ldexp(255.0 / 128.0, 127))));
      break;
    case DType::f64:
      static_cast<double*>(data)[i] = v;
      break;
    case DType::f8e4m3:
      static_cast<std::uint8_t*>(data)[i] =
          float_to_f8e4m3_bits(static_cast<float>(round_to_narrow(v, 4, -6, 448.0, /*saturate=*/true)));
      break;
    case DType::i8: {
      // nearbyint rounds half to even in the default rounding mode; NaN becomes 0.
      const double r = std::isnan(v) ? 0.0 : std::nearbyint(std::min(127.0, std::max(-127.0, v)));
      static_cast<std::int8_t*>(data)[i] = static_cast<std::int8_t>(r);
      break;
    }
  }
}

}  // namespace rmsnorm
