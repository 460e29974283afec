// Helpers every benchmark backend uses: the oracle checks before timing, and records.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "bench.h"
#include "harness.h"
#include "oracle.h"
#include "table.h"
#include "tolerances.h"
#include "unfused.h"
#include "unfused_backward.h"

namespace rmsnorm::cli {

BackwardSetLayout::BackwardSetLayout(DType t, std::int64_t rows, std::int64_t cols)
    : matrix(static_cast<std::size_t>(rows * cols) * dtype_size(t)),
      pitch(round_up(matrix)),
      bytes(3 * pitch + round_up(static_cast<std::size_t>(rows) * sizeof(float))),
      copy(3 * matrix / 2),
      saved(round_up(bench::unfused_saved_bytes(t, rows, cols))),
      scratch(bench::unfused_backward_scratch_bytes(t, rows, cols)),
      forward_scratch(bench::unfused_scratch_bytes(t, rows, cols)) {}

std::vector<std::pair<std::int64_t, std::int64_t>> rows_to_check(std::int64_t rows) {
  constexpr std::int64_t kEdge = 64;  // first and last rows: a wrong grid or tail shows there
  if (rows <= 2 * kEdge) return {{0, rows}};
  return {{0, kEdge}, {rows - kEdge, rows}};
}

std::string check_rows(const void* x, const void* y, const void* weight, DType t, std::int64_t rows, std::int64_t cols,
                       const Params& params) {
  namespace ref = rmsnorm::reference;
  const TensorView xv = TensorView::matrix(const_cast<void*>(x), t, Device::cpu(), rows, cols);
  const TensorView yv = TensorView::matrix(const_cast<void*>(y), t, Device::cpu(), rows, cols);
  const TensorView wv = TensorView::vector(const_cast<void*>(weight), t, Device::cpu(), cols);
  const ref::ForwardResult expected = ref::forward(xv, wv, t, params);
  const ref::Comparison c = ref::compare(yv, expected.y, ref::forward_tolerance(t, t, params.cast, cols));
  return c.passed() ? std::string() : c.describe();
}

std::string check_add_rows(const void* x, const void* r, const AddOutputs& got, const void* weight, DType t,
                           std::int64_t rows, std::int64_t cols, const Params& params) {
  namespace ref = rmsnorm::reference;
  const auto view = [&](const void* p) {
    return TensorView::matrix(const_cast<void*>(p), t, Device::cpu(), rows, cols);
  };
  const TensorView wv = TensorView::vector(const_cast<void*>(weight), t, Device::cpu(), cols);
  const ref::FusedAddResult want = ref::fused_add_forward(view(x), view(r), wv, params);
  const ref::Comparison rc = ref::compare(view(got.r_out), want.r_out, ref::Tolerance{0.0, 1e-300});
  if (!rc.passed()) return "r_out " + rc.describe();
  const ref::Comparison yc = ref::compare(view(got.y), want.norm.y, ref::forward_tolerance(t, t, params.cast, cols));
  if (!yc.passed()) return "y " + yc.describe();
  return {};
}

std::string compare_add_outputs(const AddOutputs& fused, const AddOutputs& unfused, DType t, std::int64_t rows,
                                std::int64_t cols) {
  namespace ref = rmsnorm::reference;
  const std::int64_t count = rows * cols;
  const std::size_t s = dtype_size(t);
  if (std::memcmp(fused.r_out, unfused.r_out, static_cast<std::size_t>(count) * s) != 0) {
    std::int64_t i = 0;
    while (std::memcmp(static_cast<const unsigned char*>(fused.r_out) + static_cast<std::size_t>(i) * s,
                       static_cast<const unsigned char*>(unfused.r_out) + static_cast<std::size_t>(i) * s, s) == 0)
      ++i;
    return format("r_out differs from the unfused baseline's at element %lld (%g vs %g)", static_cast<long long>(i),
                  load_as_double(fused.r_out, t, i), load_as_double(unfused.r_out, t, i));
  }
  std::vector<double> base(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) base[static_cast<std::size_t>(i)] = load_as_double(unfused.y, t, i);
  ref::Tolerance tol = ref::forward_tolerance(t, t, Cast::fp32, cols);
  tol.rtol *= 2;
  tol.atol *= 2;
  const ref::Comparison c =
      ref::compare(TensorView::matrix(const_cast<void*>(fused.y), t, Device::cpu(), rows, cols), base, tol);
  return c.passed() ? std::string() : "y against the unfused baseline's: " + c.describe();
}

std::string check_quant_rows(const void* x, const QuantOutputs& got, const void* weight, DType t, DType q,
                             QuantScale kind, std::int64_t group_size, std::int64_t rows, std::int64_t cols,
                             const Params& params, bool y_stored, QuantDivision division) {
  namespace ref = rmsnorm::reference;
  const TensorView xv = TensorView::matrix(const_cast<void*>(x), t, Device::cpu(), rows, cols);
  const TensorView wv = TensorView::vector(const_cast<void*>(weight), t, Device::cpu(), cols);
  const ref::ForwardResult want = ref::forward(xv, wv, t, params);
  const ref::Tolerance y_tol =
      y_stored ? ref::forward_tolerance(t, t, params.cast, cols) : ref::quant_y_tolerance(t, t, params.cast, cols);
  const ref::Comparison qc =
      ref::compare_quantized(TensorView::matrix(const_cast<void*>(got.q), q, Device::cpu(), rows, cols), want.y,
                             got.scales, group_size, y_tol, division);
  if (!qc.passed()) return "q " + qc.describe();
  if (kind != QuantScale::static_tensor) {
    ref::QuantSpec spec;
    spec.kind = kind;
    spec.q = q;
    spec.group_size = group_size;
    const std::vector<double> want_s = ref::quant_scales(want.y, rows, cols, spec);
    const ref::Comparison sc = ref::compare_scales(got.scales, want_s, ref::quant_scale_tolerance(y_tol), false);
    if (!sc.passed()) return "scales " + sc.describe();
  }
  return {};
}

namespace {

// The distance between a code of magnitude `a` and the next larger one: 1 for int8; for fp8
// e4m3 (3 mantissa bits) 2^(e - 3) in the binade [2^e, 2^(e+1)), and the subnormals' 2^-9
// below 2^-6.
double code_spacing(DType q, double a) {
  if (q != DType::f8e4m3) return 1.0;
  if (a < std::ldexp(1.0, -6)) return std::ldexp(1.0, -9);
  return std::ldexp(1.0, static_cast<int>(std::floor(std::log2(a))) - 3);
}

}  // namespace

std::string compare_quant_outputs(const QuantOutputs& fused, const QuantOutputs& unfused, DType t, DType q,
                                  std::int64_t group_size, std::int64_t rows, std::int64_t cols) {
  namespace ref = rmsnorm::reference;
  const std::int64_t groups = cols / group_size;
  const ref::Tolerance tf = ref::quant_y_tolerance(t, t, Cast::fp32, cols),
                       tu = ref::forward_tolerance(t, t, Cast::fp32, cols);
  std::int64_t failures = 0, worst_at = -1;
  double worst = 0.0;  // |difference| in steps
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const std::size_t g = static_cast<std::size_t>((i / cols) * groups + (i % cols) / group_size);
    const double sf = fused.scales[g], su = unfused.scales[g];
    const double cf = load_as_double(fused.q, q, i), cu = load_as_double(unfused.q, q, i);
    const double vf = cf * sf, vu = cu * su, v = std::max(std::fabs(vf), std::fabs(vu));
    const double step = code_spacing(q, std::max(std::fabs(cf), std::fabs(cu))) * std::max(sf, su);
    // y's tolerances, and the fp32 divisions' roundings
    const double slack = (tf.rtol + tu.rtol + std::ldexp(1.0, -22)) * v + tf.atol + tu.atol;
    const double diff = std::fabs(vf - vu);
    if (!(diff <= step + slack)) ++failures;  // NaN fails
    const double steps = std::isnan(diff) ? INFINITY : diff / step;
    if (worst_at < 0 || steps > worst) {
      worst = steps;
      worst_at = i;
    }
  }
  if (!failures) return {};
  const std::size_t g = static_cast<std::size_t>((worst_at / cols) * groups + (worst_at % cols) / group_size);
  return format(
      "q against the unfused baseline's: %lld of %lld codes more than one step apart (worst %.3g steps at "
      "%lld: %g x %g vs %g x %g)",
      static_cast<long long>(failures), static_cast<long long>(rows * cols), worst, static_cast<long long>(worst_at),
      load_as_double(fused.q, q, worst_at), fused.scales[g], load_as_double(unfused.q, q, worst_at), unfused.scales[g]);
}

BackwardExpected backward_expected(const void* x, const void* dy, const void* weight, DType t, std::int64_t rows,
                                   std::int64_t cols, const Params& params) {
  namespace ref = rmsnorm::reference;
  const std::size_t row_bytes = static_cast<std::size_t>(cols) * dtype_size(t);
  const auto* xb = static_cast<const unsigned char*>(x);
  const auto* dyb = static_cast<const unsigned char*>(dy);
  const auto matrix = [&](const unsigned char* base, std::int64_t begin, std::int64_t count) {
    return TensorView::matrix(const_cast<unsigned char*>(base) + static_cast<std::size_t>(begin) * row_bytes, t,
                              Device::cpu(), count, cols);
  };
  const TensorView wv = TensorView::vector(const_cast<void*>(weight), t, Device::cpu(), cols);
  BackwardExpected out;
  for (auto [b, e] : rows_to_check(rows)) {
    const ref::BackwardResult r = ref::backward(matrix(dyb, b, e - b), matrix(xb, b, e - b), wv, params);
    out.dx.insert(out.dx.end(), r.dx.begin(), r.dx.end());
    out.dx_scale.insert(out.dx_scale.end(), r.dx_scale.begin(), r.dx_scale.end());
  }
  // dw: stripes of rows in parallel, each in chunks of about 2^18 elements (the oracle
  // keeps dx for a whole chunk), each stripe's sums in its own accumulator; the stripes
  // are then added in order, so the answer does not depend on the thread count.
  constexpr std::int64_t kStripes = 64;
  const std::int64_t stripes = std::min<std::int64_t>(kStripes, rows);
  const std::int64_t chunk_rows = std::max<std::int64_t>(1, (std::int64_t(1) << 18) / cols);
  std::vector<std::vector<double>> dw(static_cast<std::size_t>(stripes)), dw_scale(dw.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t st = 0; st < stripes; ++st) {
    std::vector<double>& acc = dw[static_cast<std::size_t>(st)];
    std::vector<double>& acc_scale = dw_scale[static_cast<std::size_t>(st)];
    acc.assign(static_cast<std::size_t>(cols), 0.0);
    acc_scale.assign(static_cast<std::size_t>(cols), 0.0);
    const std::int64_t end = (st + 1) * rows / stripes;
    for (std::int64_t b = st * rows / stripes; b < end; b += chunk_rows) {
      const std::int64_t count = std::min(chunk_rows, end - b);
      const ref::BackwardResult r = ref::backward(matrix(dyb, b, count), matrix(xb, b, count), wv, params);
      for (std::size_t j = 0; j < acc.size(); ++j) {
        acc[j] += r.dw[j];
        acc_scale[j] += r.dw_scale[j];
      }
    }
  }
  out.dw.assign(static_cast<std::size_t>(cols), 0.0);
  out.dw_scale.assign(static_cast<std::size_t>(cols), 0.0);
  for (std::size_t st = 0; st < dw.size(); ++st)
    for (std::size_t j = 0; j < out.dw.size(); ++j) {
      out.dw[j] += dw[st][j];
      out.dw_scale[j] += dw_scale[st][j];
    }
  return out;
}

std::string check_backward(const BackwardExpected& expected, const void* dx_rows, const void* dw, DType t,
                           std::int64_t rows, std::int64_t cols, int eager_roundings) {
  namespace ref = rmsnorm::reference;
  const std::int64_t checked = static_cast<std::int64_t>(expected.dx.size()) / cols;
  ref::Tolerance dx_tol = ref::dx_tolerance(t, cols), dw_tol = ref::dw_tolerance(t, t, rows, cols);
  dx_tol.atol += eager_roundings * ref::unit_roundoff(t);
  dw_tol.atol += eager_roundings * ref::unit_roundoff(t);
  const TensorView dxv = TensorView::matrix(const_cast<void*>(dx_rows), t, Device::cpu(), checked, cols);
  const ref::Comparison dxc = ref::compare_scaled(dxv, expected.dx, expected.dx_scale, dx_tol);
  if (!dxc.passed()) return "dx " + dxc.describe();
  if (!dw) return {};
  const ref::Comparison dwc = ref::compare_vector_scaled(dw, t, expected.dw, expected.dw_scale, dw_tol);
  if (!dwc.passed()) return "dw " + dwc.describe();
  return {};
}

std::size_t quant_scale_bytes(QuantScale kind, std::int64_t rows, std::int64_t cols) {
  if (kind == QuantScale::static_tensor) return 4;
  if (kind == QuantScale::per_row) return static_cast<std::size_t>(rows) * 4;
  return static_cast<std::size_t>(rows * (cols / kBenchGroupSize)) * 4;
}

double model_bytes(const BenchContext& ctx, std::int64_t rows, std::int64_t cols) {
  const double mn = static_cast<double>(rows) * static_cast<double>(cols),
               s = static_cast<double>(dtype_size(ctx.dtype));
  if (ctx.op == "quant") return mn * s + mn + static_cast<double>(quant_scale_bytes(ctx.quant, rows, cols));
  return (ctx.op == "backward" ? 3 : ctx.op == "add" ? 4 : 2) * mn * s;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

Record make_record(const BenchContext& ctx, const BenchShape& shape, const std::string& impl, const std::string& mode,
                   double us, std::int64_t sets, std::int64_t calls, int reps) {
  Record r;
  r.op = ctx.op;
  r.dtype = dtype_name(ctx.dtype);
  r.rows = shape.rows;
  r.cols = shape.cols;
  r.impl = impl;
  r.mode = mode;
  r.suite = shape.suite;
  r.bytes = model_bytes(ctx, shape.rows, shape.cols);
  r.us = us;
  r.gbps = r.bytes / (us * 1e3);  // bytes / (us * 1e-6 s) / 1e9
  r.sets = sets;
  r.calls = calls;
  r.reps = reps;
  r.device = ctx.device.name;
  r.commit = ctx.commit;
  r.date = ctx.date;
  return r;
}

}  // namespace rmsnorm::cli
