// Element types of the CPU backend and their conversions. The 16-bit formats are stored as
// their bit patterns; arithmetic happens in the accumulator type.
#pragma once

#include <cstdint>
#include <type_traits>

#include "rmsnorm/dtype.h"

namespace rmsnorm::detail::cpu {

struct F16 {
  std::uint16_t bits;
};
struct BF16 {
  std::uint16_t bits;
};

template <class Acc>
inline Acc to_acc(float v) {
  return static_cast<Acc>(v);
}
template <class Acc>
inline Acc to_acc(double v) {
  return static_cast<Acc>(v);
}
template <class Acc>
inline Acc to_acc(F16 v) {
  return static_cast<Acc>(half_bits_to_float(v.bits));
}
template <class Acc>
inline Acc to_acc(BF16 v) {
  return static_cast<Acc>(bf16_bits_to_float(v.bits));
}

template <class T>
inline T from_acc(float v);
template <>
inline float from_acc<float>(float v) {
  return v;
}
template <>
inline F16 from_acc<F16>(float v) {
  return F16{float_to_half_bits(v)};
}
template <>
inline BF16 from_acc<BF16>(float v) {
  return BF16{float_to_bf16_bits(v)};
}
template <class T>
inline T from_acc(double v);
template <>
inline double from_acc<double>(double v) {
  return v;
}

// Rounds an accumulator value to T's precision, keeping the accumulator type.
template <class T, class Acc>
inline Acc round_as(Acc v) {
  return to_acc<Acc>(from_acc<T>(v));
}

// Sum of f(j) for j < n in a fixed order: sixteen independent partial sums (which the
// compiler can keep in vector registers, where one running sum would be a serial chain it
// may not reorder), combined pairwise. The order never depends on threads or vector width.
template <class Acc, class F>
inline Acc lane_sum(std::int64_t n, F f) {
  constexpr int kLanes = 16;
  Acc lanes[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lanes[k] += f(j + k);
  for (int k = 0; j < n; ++j, ++k) lanes[k] += f(j);
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  return lanes[0];
}

// PyTorch's type promotion for a product: equal types stay, anything with f32 is f32.
template <class A, class B>
using Promoted = std::conditional_t<std::is_same_v<A, B>, A, float>;

}  // namespace rmsnorm::detail::cpu
