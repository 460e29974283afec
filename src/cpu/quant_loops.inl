// The quantised store's loops over a row's fp32 values (cpu/steps.h's QuantizeRow), written
// once as plain loops and compiled for each instruction set: included inside the namespace
// of forward.cpp's portable loops and, between their target pragmas, of kernels_avx2.cpp and
// kernels_avx512.cpp, where the compiler vectorises them. The rules are quantize.h's and
// dtype.h's (the conversions are branch-free so that they vectorise), so every instruction
// set gives the same codes and scales (tests/test_cpu_paths.cpp).

// max |y_j| over y[0, n) as the bits of a float, a NaN y_j ignored: std::fmax(amax, |y_j|)
// from 0, taken on the bit patterns, which order as the magnitudes do (below the NaNs).
inline std::uint32_t quant_amax_bits(const float* y, std::int64_t n) {
  std::int32_t amax = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    const std::uint32_t m = float_to_bits(y[j]) & 0x7fffffffu;
    const std::int32_t counted = m > 0x7f800000u ? 0 : static_cast<std::int32_t>(m);
    amax = counted > amax ? counted : amax;
  }
  return static_cast<std::uint32_t>(amax);
}

// q[j] = the code of y[j] / s (correctly rounded), or of y[j] * r when `multiply` (Divisor):
// fp8 e4m3 bits (Code std::uint8_t) or int8.
template <class Code>
inline void quant_codes(const float* y, std::int64_t n, float s, float r, bool multiply, Code* q) {
  const auto code = [](float t) {
    if constexpr (std::is_same_v<Code, std::uint8_t>)
      return float_to_f8e4m3_bits(t);
    else
      return float_to_i8(t);
  };
  if (multiply) {
    for (std::int64_t j = 0; j < n; ++j) q[j] = code(y[j] * r);
  } else {
    for (std::int64_t j = 0; j < n; ++j) q[j] = code(y[j] / s);
  }
}

inline QuantLoops quant_loops() { return {&quant_amax_bits, &quant_codes<std::uint8_t>, &quant_codes<std::int8_t>}; }
