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

ForwardResult forward(const TensorView& x, const std::optional<TensorView>& weight, DType y_dtype, const Params& p) {
  (void)y_dtype;
  const std::int64_t m = x.total_rows(), n = x.cols;
  const DType acc = x.dtype == DType::f64 ? DType::f64 : DType::f32;
  ForwardResult out;
  out.y.resize(static_cast<std::size_t>(m * n));
  out.rstd.resize(static_cast<std::size_t>(m));
  for (std::int64_t row = 0; row < m; ++row) {
    double ss = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = load_as_double(x.data, x.dtype, offset_of(x, row, j));
      ss += v * v;
    }
    const double rstd = 1.0 / std::sqrt(ss / static_cast<double>(n) + p.eps);
    out.rstd[static_cast<std::size_t>(row)] = rstd;
    for (std::int64_t j = 0; j < n; ++j) {
      const double v = load_as_double(x.data, x.dtype, offset_of(x, row, j));
      double w = 1.0;
      // The library defines w + offset as computed in fp32 (fp64 for f64), as Gemma does
      // with `1.0 + weight.float()`: for w near -offset that sum cancels, so it is part of
      // the function being checked, not an error.
      if (weight) w = round_to(acc, load_as_double(weight->data, weight->dtype, j) + p.weight_offset);
      double y;
      if (p.cast == Cast::llama) {
        const double h = round_to(x.dtype, v * rstd);
        if (weight) {
          w = round_to(weight->dtype, w);
          y = round_to(promote(x.dtype, weight->dtype), h * w);
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
