#include "oracle.h"

#include <algorithm>
#include <cmath>

namespace rmsnorm::reference {

// Rounds v to dtype t (once: store_from_double rounds straight from double).
double round_to(DType t, double v) {
  if (t == DType::f64) return v;
  unsigned char buf[8];
  store_from_double(buf, t, 0, v);
  return load_as_double(buf, t, 0);
}

namespace {
std::int64_t offset_of(const TensorView& v, std::int64_t row, std::int64_t col) {
  const std::int64_t b = row / v.rows, r = row % v.rows;
  return b * v.batch_stride + r * v.row_stride + col;
}
// The dtype Python/PyTorch promotion gives for a product of two tensors.
DType promote(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::f64 || b == DType::f64) return DType::f64;
  return DType::f32;  // f16 x bf16 and 16-bit x f32 both promote to f32
}
}  // namespace

namespace {

// The norm of `m` rows of `n` values, value(row, j) giving them exactly; `round` is the dtype
// Cast::llama rounds x * rstd to, `acc` the backends' accumulator (w + offset is in it).
template <class Value>
ForwardResult normalise(std::int64_t m, std::int64_t n, Value value, DType round, DType acc,
                        const std::optional<TensorView>& weight, const Params& p) {
  ForwardResult out;
  out.y.resize(static_cast<std::size_t>(m * n));
  out.rstd.resize(static_cast<std::size_t>(m));
  for (std::int64_t row = 0; row < m; ++row) {
    double ss = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = value(row, j);
      ss += v * v;
    }
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + p.eps);
    out.rstd[static_cast<std::size_t>(row)] = rstd;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = value(row, j);
      double w = 1.0;
      // The library defines w + offset as computed in fp32 (fp64 for f64), as Gemma does
      // with `1.0 + weight.float()`: for w near -offset that sum cancels, so it is part of
      // the function being checked, not an error.
      if (weight) w = round_to(acc, load_as_double(weight->data, weight->dtype, j) + p.weight_offset);
      double y;
      if (p.cast == Cast::llama) {
        const double h = round_to(round, v * rstd);
        if (weight) {
          w = round_to(weight->dtype, w);
          y = round_to(promote(round, weight->dtype), h * w);
        } else {
          y = h;
        }
      } else {
        y = v * rstd * w;
      }
      out.y[static_cast<std::size_t>(row * n + j)] = y;
    }
  }
  return out;
}

DType accumulator(DType t) { return t == DType::f64 ? DType::f64 : DType::f32; }

}  // namespace

ForwardResult forward(const TensorView& x, const std::optional<TensorView>& weight, DType y_dtype, const Params& p) {
  (void)y_dtype;
  const auto value = [&](std::int64_t row, std::int64_t j) {
    return load_as_double(x.data, x.dtype, offset_of(x, row, j));
  };
  return normalise(x.total_rows(), x.cols, value, x.dtype, accumulator(x.dtype), weight, p);
}

FusedAddResult fused_add_forward(const TensorView& x, const TensorView& residual,
                                 const std::optional<TensorView>& weight, const Params& p) {
  const std::int64_t m = x.total_rows(), n = x.cols;
  FusedAddResult out;
  out.r_out.resize(static_cast<std::size_t>(m * n));
  // The library adds in fp32 and rounds to r's dtype; here the sum is rounded once, from
  // fp64, to r's dtype. The two agree: a sum whose exact value needs more bits than fp32 has
  // comes from a much smaller operand (beyond the f32 result's or the 16-bit format's
  // precision relative to the larger one), so the exact sum lies next to a value of the
  // larger operand's grid and never within fp32's rounding of a 16-bit rounding boundary.
  // tests/test_fused.cpp compares r_out bit for bit.
  for (std::int64_t row = 0; row < m; ++row)
    for (std::int64_t j = 0; j < n; ++j)
      out.r_out[static_cast<std::size_t>(row * n + j)] =
          round_to(residual.dtype, load_as_double(x.data, x.dtype, offset_of(x, row, j)) +
                                       load_as_double(residual.data, residual.dtype, offset_of(residual, row, j)));
  const auto value = [&](std::int64_t row, std::int64_t j) { return out.r_out[static_cast<std::size_t>(row * n + j)]; };
  // The norm reads r_out (its dtype's accumulator); Cast::llama rounds to x's dtype.
  out.norm = normalise(m, n, value, x.dtype, accumulator(residual.dtype), weight, p);
  return out;
}

BackwardResult backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                        const Params& p) {
  const std::int64_t m = x.total_rows(), n = x.cols;
  BackwardResult out;
  out.dx.resize(static_cast<std::size_t>(m * n));
  out.dx_scale.resize(out.dx.size());
  out.rstd.resize(static_cast<std::size_t>(m));
  if (weight) {
    out.dw.assign(static_cast<std::size_t>(n), 0.0);
    out.dw_scale.assign(static_cast<std::size_t>(n), 0.0);
  }
  const DType acc = x.dtype == DType::f64 ? DType::f64 : DType::f32;
  const auto w_at = [&](std::int64_t j) {  // w + offset in fp32, as in forward
    return weight ? round_to(acc, load_as_double(weight->data, weight->dtype, j) + p.weight_offset) : 1.0;
  };
  for (std::int64_t row = 0; row < m; ++row) {
    double ss = 0.0, gx = 0.0, gx_abs = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double xv = load_as_double(x.data, x.dtype, offset_of(x, row, j));
      const double g = load_as_double(dy.data, dy.dtype, offset_of(dy, row, j)) * w_at(j);
      ss += xv * xv;
      gx += g * xv;
      gx_abs += std::fabs(g * xv);
    }
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + p.eps);
    out.rstd[static_cast<std::size_t>(row)] = rstd;
    const double coef = rstd * rstd * rstd * gx / static_cast<double>(n);
    for (std::int64_t j = 0; j < n; ++j) {
      const double xv = load_as_double(x.data, x.dtype, offset_of(x, row, j));
      const double dyv = load_as_double(dy.data, dy.dtype, offset_of(dy, row, j));
      const std::size_t at = static_cast<std::size_t>(row * n + j);
      out.dx[at] = rstd * dyv * w_at(j) - coef * xv;
      out.dx_scale[at] =
          std::fabs(rstd * dyv * w_at(j)) + rstd * rstd * rstd * gx_abs / static_cast<double>(n) * std::fabs(xv);
      if (weight) {
        out.dw[static_cast<std::size_t>(j)] += dyv * xv * rstd;
        out.dw_scale[static_cast<std::size_t>(j)] += std::fabs(dyv * xv * rstd);
      }
    }
  }
  return out;
}

}  // namespace rmsnorm::reference

namespace rmsnorm::reference {

BackwardResult fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                  const std::optional<TensorView>& weight, const Params& params) {
  BackwardResult out = backward(dy, r_out, weight, params);
  const std::int64_t n = r_out.cols;
  for (std::int64_t row = 0; row < r_out.total_rows(); ++row)
    for (std::int64_t j = 0; j < n; ++j) {
      const std::size_t at = static_cast<std::size_t>(row * n + j);
      const double g = load_as_double(dr_out.data, dr_out.dtype, offset_of(dr_out, row, j));
      out.dx[at] += g;
      out.dx_scale[at] += std::fabs(g);
    }
  return out;
}

double quant_code(DType q, double t) {
  if (q == DType::i8) {
    if (std::isnan(t)) return 0.0;
    return std::nearbyint(std::min(127.0, std::max(-127.0, t)));  // half to even (default mode)
  }
  // fp8 e4m3: 3 mantissa bits, normals from 2^-6, subnormals spaced 2^-9, saturated at 448.
  if (std::isnan(t)) return t;
  const double a = std::min(std::fabs(t), 448.0);
  if (a == 0.0) return t;
  int e = 0;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  const double spacing = std::ldexp(1.0, std::max(e - 1, -6) - 3);
  return std::copysign(std::min(448.0, std::nearbyint(a / spacing) * spacing), t);
}

double quant_scale(const QuantSpec& spec, double amax) {
  const double qmax = spec.q == DType::f8e4m3 ? 448.0 : 127.0;
  const double a = spec.scale_ub ? std::min(amax, *spec.scale_ub) : amax;
  double s = std::max(a / qmax, 1.0 / (qmax * 512.0));
  if (spec.pow2) s = std::ldexp(1.0, static_cast<int>(std::ceil(std::log2(s))));
  return s;
}

std::vector<double> quant_scales(const std::vector<double>& y, std::int64_t rows, std::int64_t cols,
                                 const QuantSpec& spec) {
  const std::int64_t g_size = spec.kind == QuantScale::per_group ? spec.group_size : cols;
  const std::int64_t groups = cols / g_size;
  std::vector<double> out(static_cast<std::size_t>(rows * groups));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t g = 0; g < groups; ++g) {
      double amax = 0.0;
      for (std::int64_t j = g * g_size; j < (g + 1) * g_size; ++j)
        amax = std::max(amax, std::fabs(y[static_cast<std::size_t>(r * cols + j)]));
      out[static_cast<std::size_t>(r * groups + g)] = quant_scale(spec, amax);
    }
  return out;
}

}  // namespace rmsnorm::reference
