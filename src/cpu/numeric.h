// Element types of the CPU backend, their conversions, and the arithmetic that every
// instruction set's loops share. The 16-bit formats are stored as their bit patterns;
// arithmetic happens in the accumulator type.
//
// The CPU sources are compiled with -ffp-contract=off (src/CMakeLists.txt): a multiply
// followed by an add stays two roundings on every path, where GCC would otherwise fuse them
// into one FMA in the loops compiled for AVX-512 (and in any build for a CPU with FMA), and
// the paths would give different bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
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

// The lanes of a row's sums: element j goes to lane j % kLanes.
constexpr int kLanes = 16;

// Adds the lanes pairwise (lane k and k + 8, then k + 4, ...) and returns the total: the
// last step of every row sum, on every instruction set (the vector loops end with this on
// their 16 lanes, so their sums have the bits of lane_sum's).
template <class Acc>
inline Acc combine_lanes(Acc* lanes) {
  for (int width = kLanes / 2; width > 0; width /= 2)
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  return lanes[0];
}

// Sum of f(j) for j < n in a fixed order: sixteen independent partial sums (which the
// compiler can keep in vector registers, where one running sum would be a serial chain it
// may not reorder), combined pairwise. The order never depends on threads or vector width.
template <class Acc, class F>
inline Acc lane_sum(std::int64_t n, F f) {
  Acc lanes[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lanes[k] += f(j + k);
  for (int k = 0; j < n; ++j, ++k) lanes[k] += f(j);
  return combine_lanes(lanes);
}

// Every result is stored through this: a NaN becomes the positive quiet NaN without payload.
// Which operand's NaN (sign and payload) an operation passes on depends on the order of its
// operands, and compilers swap the operands of a product or a sum freely; canonical NaNs
// make a NaN result's bits the same on every path too.
template <class Acc>
inline Acc canonical_nan(Acc v) {
  return v == v ? v : std::numeric_limits<Acc>::quiet_NaN();
}

// rstd from a row's sum of squares: the mean as sum * (1/cols), then eps, as PyTorch does.
template <class Acc>
inline Acc rstd_of(Acc sum_squares, Acc inv_n, Acc eps) {
  return canonical_nan(Acc(1) / std::sqrt(sum_squares * inv_n + eps));
}

// The backward's coefficient of x in dx = rstd * g - coef * x, from gx = sum(g * x).
template <class Acc>
inline Acc dx_coef(Acc rstd, Acc gx, Acc inv_n) {
  return rstd * rstd * rstd * gx * inv_n;
}

// PyTorch's type promotion for a product: equal types stay, anything with f32 is f32.
template <class A, class B>
using Promoted = std::conditional_t<std::is_same_v<A, B>, A, float>;

}  // namespace rmsnorm::detail::cpu
