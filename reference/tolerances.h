// The one table of tolerances used by the tests and by `rmsnorm check`.
//
// An element passes when |got - ref| <= atol + rtol * |ref|, with ref from the fp64 oracle.
// Each term has its reason next to it. u(t) is the unit roundoff of dtype t (half an ulp,
// relative): f32 2^-24, f16 2^-11, bf16 2^-8, f64 2^-53.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::reference {

struct Tolerance {
  double rtol = 0;
  double atol = 0;
  double floor = 0;  // an absolute term that does not scale (compare_scaled's outputs)
};

inline double unit_roundoff(DType t) {
  switch (t) {
    case DType::f32:
      return std::ldexp(1.0, -24);
    case DType::f16:
      return std::ldexp(1.0, -11);
    case DType::bf16:
      return std::ldexp(1.0, -8);
    case DType::f64:
      return std::ldexp(1.0, -53);
    case DType::f8e4m3:
      return std::ldexp(1.0, -4);
    case DType::i8:  // integers: no relative roundoff (quant_code_range judges them)
      break;
  }
  return 1.0;
}

// Relative error of rstd computed with an accumulator of dtype `acc` over n squares.
// The backends sum in fp32 (fp64 for f64) in blocked/tree order; for random data the
// rounding errors of such a sum grow like sqrt(n) (a random walk), and a bound of
// 4 * sqrt(n) * u has never been approached in the sweeps. rstd = (ss/n + eps)^-1/2 halves
// the relative error of ss, and the mean, sqrt and division add a few roundings: 8 u.
inline double rstd_rtol(DType acc, std::int64_t n) {
  const double u = unit_roundoff(acc);
  return u * (8.0 + 4.0 * std::sqrt(static_cast<double>(n)));
}

// Tolerance for y.
//  - fp32 cast: the result is rounded once to y's dtype (u(y)); before that, fp32 math
//    carries the rstd error plus two products (rstd_rtol + 2 u(acc)).
//  - llama cast: x * rstd is rounded to x's dtype, and the backend's fp32 rstd may differ
//    from the oracle's fp64 one by rstd_rtol, so that rounding can land one ulp apart
//    (2 u(x)); the weight product is then rounded to y's dtype (one more ulp: 2 u(y)).
//  - atol covers outputs in f16's subnormal range, whose spacing is absolute (2^-24):
//    two roundings there can differ by one spacing. bf16 and f32 share float's exponent
//    range, so their subnormals never occur with these inputs: a negligible atol.
inline Tolerance forward_tolerance(DType x, DType y, Cast cast, std::int64_t cols) {
  const DType acc = x == DType::f64 ? DType::f64 : DType::f32;
  Tolerance t;
  const double fp = rstd_rtol(acc, cols) + 2.0 * unit_roundoff(acc);
  if (cast == Cast::llama && x != DType::f32 && x != DType::f64) {
    t.rtol = fp + 2.0 * unit_roundoff(x) + 2.0 * unit_roundoff(y);
  } else {
    t.rtol = fp + unit_roundoff(y);
  }
  t.atol = (y == DType::f16 || x == DType::f16) ? std::ldexp(1.0, -23) : 1e-300;
  return t;
}

// Tolerance for the y a quantised forward divides by its scale (y is never stored, so no
// store rounding): under Cast::fp32 the fp32 math's error only (forward_tolerance with an f32
// y); under Cast::llama the cast's roundings too, the last one to the promoted dtype of x
// and the weight (x's without a weight), as forward_tolerance has them for such a y.
inline Tolerance quant_y_tolerance(DType x, std::optional<DType> w, Cast cast, std::int64_t cols) {
  if (cast != Cast::llama) return forward_tolerance(x, DType::f32, cast, cols);
  const DType promoted = !w || *w == x ? x : DType::f32;
  return forward_tolerance(x, promoted, cast, cols);
}

// Tolerance for a computed scale, max|y| / qmax: y's relative error (the max of values each
// within y's tolerance is within it too), plus the fp32 division and the fp32 constant of
// the minimum scale (one rounding each: 2 u(f32)); y's atol, divided by qmax >= 127, stays
// below y's.
inline Tolerance quant_scale_tolerance(const Tolerance& y_tol) {
  return {y_tol.rtol + 2.0 * unit_roundoff(DType::f32), y_tol.atol};
}

// The quantised codes themselves are judged by compare_quantized (harness.h): a code passes
// when it is the code of some value within y's tolerance (divided by the scale, plus the
// division's rounding) of the exact quotient, i.e. the exact code, or its neighbour where
// the exact quotient lies that close to a rounding boundary between two codes.

// Tolerance for the rstd output (stored in fp32, or fp64 for f64).
inline Tolerance rstd_tolerance(DType x, std::int64_t cols) {
  const DType acc = x == DType::f64 ? DType::f64 : DType::f32;
  return {rstd_rtol(acc, cols) + unit_roundoff(acc), 1e-300};
}

// Backward tolerances are per element: atol * scale, with `scale` from the oracle (the
// magnitudes of the terms that were added), plus rtol * |ref| for the final rounding, plus
// a floor for f16 outputs below 2^-14, whose rounding step is absolute (2^-24): two
// roundings there may land one step apart whatever the scale.

// dx = rstd*g - coef*x with coef = rstd^3 s / cols, s = sum(g x): the fp32 error of rstd is
// relative to rstd (rstd_rtol; it enters coef cubed: 3 rstd_rtol), that of s is relative to
// sum |g x|, not to |s| (a sum of terms of either sign can cancel). So the bound is on
// scale = |rstd g| + rstd^3 / cols * |x| * sum |g x| (the oracle's dx_scale), which may far
// exceed |dx| where the two terms cancel. Then one rounding to dx's dtype.
inline Tolerance dx_tolerance(DType x, std::int64_t cols) {
  const DType acc = x == DType::f64 ? DType::f64 : DType::f32;
  return {unit_roundoff(x), 3.0 * rstd_rtol(acc, cols) + 4.0 * unit_roundoff(acc),
          x == DType::f16 ? std::ldexp(1.0, -24) : 0.0};
}

// dw_j = sum over all rows of dy x rstd: the fp32 per-block partial sums and their
// fixed-order total accumulate rounding errors that grow like sqrt(rows) for random data
// (QuACK's tests note the same), relative to sum |dy x rstd| (the scale), plus the rstd
// error of each row; then one rounding to dw's dtype.
inline Tolerance dw_tolerance(DType x, DType dw, std::int64_t rows, std::int64_t cols) {
  const DType acc = x == DType::f64 ? DType::f64 : DType::f32;
  const double u = unit_roundoff(acc);
  return {unit_roundoff(dw), rstd_rtol(acc, cols) + u * (8.0 + 4.0 * std::sqrt(static_cast<double>(rows))),
          dw == DType::f16 ? std::ldexp(1.0, -24) : 0.0};
}

}  // namespace rmsnorm::reference
