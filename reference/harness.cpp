#include "harness.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "oracle.h"

namespace rmsnorm::reference {

std::int64_t span_elements(const TensorView& v) {
  if (v.total_rows() == 0 || v.cols == 0) return 0;
  return (v.batch - 1) * v.batch_stride + (v.rows - 1) * v.row_stride + v.cols;
}

HostTensor make_host(DType dtype, std::int64_t batch, std::int64_t rows, std::int64_t cols, std::int64_t batch_stride,
                     std::int64_t row_stride) {
  HostTensor t;
  if (row_stride < 0) row_stride = cols;
  if (batch_stride < 0) batch_stride = rows * row_stride;
  t.view = TensorView::batched(nullptr, dtype, Device::cpu(), batch, rows, cols, batch_stride, row_stride);
  const std::int64_t n = std::max<std::int64_t>(span_elements(t.view), 1);
  t.bytes.assign(static_cast<std::size_t>(n) * dtype_size(dtype), kPoisonByte);
  t.view.data = t.bytes.data();
  return t;
}

HostTensor make_host_vector(DType dtype, std::int64_t n) {
  HostTensor t;
  t.bytes.assign(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)) * dtype_size(dtype), kPoisonByte);
  t.view = TensorView::vector(t.bytes.data(), dtype, Device::cpu(), n);
  return t;
}

namespace {
template <class F>
void for_each_offset(const TensorView& v, F f) {
  for (std::int64_t b = 0; b < v.batch; ++b)
    for (std::int64_t r = 0; r < v.rows; ++r)
      for (std::int64_t c = 0; c < v.cols; ++c) f(b * v.batch_stride + r * v.row_stride + c);
}
}  // namespace

void fill_normal(const TensorView& v, std::uint64_t seed, double mean, double stddev) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(mean, stddev);
  for_each_offset(v, [&](std::int64_t off) {
    double s = dist(gen);
    store_from_double(v.data, v.dtype, off, s);
    if (load_as_double(v.data, v.dtype, off) == 0.0) store_from_double(v.data, v.dtype, off, mean + stddev);
  });
}

void poison(const TensorView& v) {
  const std::int64_t n = span_elements(v);
  if (n > 0) std::memset(v.data, kPoisonByte, static_cast<std::size_t>(n) * dtype_size(v.dtype));
}

std::string Comparison::describe() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "worst %.3g of tolerance (abs %.3g at %lld)%s", worst_ratio, worst_abs,
                static_cast<long long>(worst_index),
                failures ? (", " + std::to_string(failures) + " bad").c_str() : "");
  return buf;
}

namespace {
void check_one(Comparison& c, double got, double ref, Tolerance tol, std::int64_t index) {
  ++c.checked;
  const double err = std::fabs(got - ref);
  double ratio = err / (tol.atol + tol.rtol * std::fabs(ref));
  if (std::isnan(got) != std::isnan(ref) || std::isnan(ratio)) ratio = INFINITY;
  if (ratio > 1.0) ++c.failures;
  if (ratio > c.worst_ratio || c.worst_index < 0) {
    c.worst_ratio = ratio;
    c.worst_abs = err;
    c.worst_index = index;
  }
}
}  // namespace

Comparison compare(const TensorView& got, const std::vector<double>& ref, Tolerance tol) {
  Comparison c;
  std::int64_t i = 0;
  for_each_offset(got, [&](std::int64_t off) {
    check_one(c, load_as_double(got.data, got.dtype, off), ref[static_cast<std::size_t>(i)], tol, i);
    ++i;
  });
  return c;
}

Comparison compare_vector(const void* got, DType dtype, const std::vector<double>& ref, Tolerance tol) {
  Comparison c;
  for (std::size_t i = 0; i < ref.size(); ++i)
    check_one(c, load_as_double(got, dtype, static_cast<std::int64_t>(i)), ref[i], tol, static_cast<std::int64_t>(i));
  return c;
}

Comparison compare_scaled(const TensorView& got, const std::vector<double>& ref, const std::vector<double>& scale,
                          Tolerance tol) {
  Comparison c;
  std::int64_t i = 0;
  for_each_offset(got, [&](std::int64_t off) {
    const std::size_t k = static_cast<std::size_t>(i);
    check_one(c, load_as_double(got.data, got.dtype, off), ref[k], {tol.rtol, tol.atol * scale[k] + tol.floor + 1e-300},
              i);
    ++i;
  });
  return c;
}

Comparison compare_vector_scaled(const void* got, DType dtype, const std::vector<double>& ref,
                                 const std::vector<double>& scale, Tolerance tol) {
  Comparison c;
  for (std::size_t i = 0; i < ref.size(); ++i)
    check_one(c, load_as_double(got, dtype, static_cast<std::int64_t>(i)), ref[i],
              {tol.rtol, tol.atol * scale[i] + tol.floor + 1e-300}, static_cast<std::int64_t>(i));
  return c;
}

Comparison compare_quantized(const TensorView& q, const std::vector<double>& y, const std::vector<double>& scales,
                             std::int64_t group_size, Tolerance y_tol, QuantDivision division) {
  Comparison c;
  const double rounding = std::ldexp(1.0, division == QuantDivision::reciprocal ? -22 : -24);
  const std::int64_t groups = q.cols / group_size;
  std::int64_t i = 0;
  for_each_offset(q, [&](std::int64_t off) {
    const std::int64_t row = i / q.cols, col = i % q.cols;
    const double s = scales[static_cast<std::size_t>(row * groups + col / group_size)];
    const double yv = y[static_cast<std::size_t>(i)];
    const double t = yv / s;
    const double e = (y_tol.atol + y_tol.rtol * std::fabs(yv)) / s + std::fabs(t) * rounding;
    const double got = load_as_double(q.data, q.dtype, off);
    const double exact = quant_code(q.dtype, t), lo = quant_code(q.dtype, t - e), hi = quant_code(q.dtype, t + e);
    ++c.checked;
    double ratio = 0.0;
    if (got != exact) {
      ratio = got >= lo && got <= hi ? 0.5 : INFINITY;  // NaN fails too
      if (ratio <= 1.0) ++c.boundary;
    }
    if (ratio > 1.0) ++c.failures;
    if (ratio > c.worst_ratio || c.worst_index < 0) {
      c.worst_ratio = ratio;
      c.worst_abs = std::fabs(got - exact);
      c.worst_index = i;
    }
    ++i;
  });
  return c;
}

Comparison compare_scales(const std::vector<double>& got, const std::vector<double>& ref, Tolerance tol, bool pow2) {
  if (!pow2) return compare_vector(got.data(), DType::f64, ref, tol);
  Comparison c;
  const auto up = [](double s) { return std::ldexp(1.0, static_cast<int>(std::ceil(std::log2(s)))); };
  for (std::size_t i = 0; i < ref.size(); ++i) {
    const double e = tol.atol + tol.rtol * ref[i];
    const double exact = up(ref[i]), lo = up(ref[i] - e), hi = up(ref[i] + e);
    ++c.checked;
    double ratio = 0.0;
    if (got[i] != exact) {
      ratio = got[i] >= lo && got[i] <= hi ? 0.5 : INFINITY;
      if (ratio <= 1.0) ++c.boundary;
    }
    if (ratio > 1.0) ++c.failures;
    if (ratio > c.worst_ratio || c.worst_index < 0) {
      c.worst_ratio = ratio;
      c.worst_abs = std::fabs(got[i] - exact);
      c.worst_index = static_cast<std::int64_t>(i);
    }
  }
  return c;
}

std::int64_t count_stray_writes(const std::vector<unsigned char>& buffer, const TensorView& v) {
  std::vector<char> inside(buffer.size(), 0);
  const std::size_t es = dtype_size(v.dtype);
  const auto* base = static_cast<const unsigned char*>(v.data);
  const std::ptrdiff_t shift = base - buffer.data();
  for_each_offset(v, [&](std::int64_t off) {
    const std::ptrdiff_t at = shift + static_cast<std::ptrdiff_t>(off * static_cast<std::int64_t>(es));
    for (std::size_t k = 0; k < es; ++k)
      if (at + static_cast<std::ptrdiff_t>(k) >= 0 &&
          at + static_cast<std::ptrdiff_t>(k) < static_cast<std::ptrdiff_t>(buffer.size()))
        inside[static_cast<std::size_t>(at) + k] = 1;
  });
  std::int64_t stray = 0;
  for (std::size_t i = 0; i < buffer.size(); ++i)
    if (!inside[i] && buffer[i] != kPoisonByte) ++stray;
  return stray;
}

void merge(Comparison& into, const Comparison& o) {
  if (o.worst_ratio > into.worst_ratio || into.worst_index < 0) {
    into.worst_ratio = o.worst_ratio;
    into.worst_abs = o.worst_abs;
    into.worst_index = o.worst_index;
  }
  into.checked += o.checked;
  into.failures += o.failures;
  into.boundary += o.boundary;
}

}  // namespace rmsnorm::reference
