#include "normal_fill.h"

#include <cstdint>

namespace rmsnorm::bench {

void fill_normal_host(void* data, DType t, std::int64_t n, std::uint64_t seed, float mean, float stddev) {
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < n; ++i) {
    const float v = normal_at(seed, static_cast<std::uint64_t>(i), mean, stddev);
    switch (t) {
      case DType::f32:
        static_cast<float*>(data)[i] = v;
        break;
      case DType::f64:
        static_cast<double*>(data)[i] = v;
        break;
      case DType::f16:
        static_cast<std::uint16_t*>(data)[i] = float_to_half_bits(v);
        break;
      case DType::bf16:
        static_cast<std::uint16_t*>(data)[i] = float_to_bf16_bits(v);
        break;
      case DType::f8e4m3:  // output-only dtypes: filled only to poison-check a benchmark
        static_cast<std::uint8_t*>(data)[i] = float_to_f8e4m3_bits(v);
        break;
      case DType::i8:
        static_cast<std::int8_t*>(data)[i] = float_to_i8(v);
        break;
    }
  }
}

}  // namespace rmsnorm::bench
