// Argument checking for every entry point: all of it happens before anything is written.
#include <cctype>
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "problem.h"
#include "sharded_problem.h"

namespace rmsnorm::detail {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error(Code::invalid_argument, msg); }
[[noreturn]] void unsupported(const std::string& msg) { throw Error(Code::unsupported, msg); }

std::string shape_of(const TensorView& v) {
  std::ostringstream s;
  s << "(" << v.batch << ", " << v.rows << ", " << v.cols << ") strides (" << v.batch_stride << ", " << v.row_stride
    << ", 1)";
  return s.str();
}

void check_layout(const TensorView& v, const char* name) {
  if (v.batch < 0 || v.rows < 0) fail(std::string(name) + ": batch and rows must be >= 0, got " + shape_of(v));
  if (v.cols < 1) fail(std::string(name) + ": cols must be >= 1, got " + std::to_string(v.cols));
  if (v.rows > 1 && v.row_stride < v.cols)
    fail(std::string(name) + ": row_stride must be >= cols (" + std::to_string(v.cols) + "), got " +
         std::to_string(v.row_stride));
  if (v.batch > 1 && v.batch_stride < 0)
    fail(std::string(name) + ": batch_stride must be >= 0, got " + std::to_string(v.batch_stride));
  if (v.total_rows() > 0 && v.data == nullptr) fail(std::string(name) + ": data is null");
}

// Byte range [lo, hi) covered by a view.
struct Extent {
  std::uintptr_t lo = 0, hi = 0;
};
Extent extent_of(const TensorView& v) {
  const std::int64_t es = static_cast<std::int64_t>(dtype_size(v.dtype));
  const std::int64_t last =
      (v.batch > 0 ? (v.batch - 1) * v.batch_stride : 0) + (v.rows > 0 ? (v.rows - 1) * v.row_stride : 0) + v.cols;
  const auto lo = reinterpret_cast<std::uintptr_t>(v.data);
  return {lo, lo + static_cast<std::uintptr_t>(last * es)};
}

bool extents_intersect(const TensorView& a, const TensorView& b) {
  if (a.total_rows() == 0 || b.total_rows() == 0) return false;
  const Extent ea = extent_of(a), eb = extent_of(b);
  return ea.lo < eb.hi && eb.lo < ea.hi;
}

// Whether two 2-D views with the same row pitch S (bytes) share a byte: rows of `a` cover
// [i*S, i*S + La), rows of `b` cover [d + j*S, d + j*S + Lb), d = b - a. They meet iff some
// k = j - i in [-(Ra-1), Rb-1] has -Lb < d + k*S < La; k*S grows with k, so only the largest
// k below the upper bound needs checking.
bool same_pitch_rows_overlap(std::int64_t d, std::int64_t S, std::int64_t La, std::int64_t Lb, std::int64_t Ra,
                             std::int64_t Rb) {
  auto floor_div = [](std::int64_t a, std::int64_t b) {
    std::int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
  };
  std::int64_t k = floor_div(La - 1 - d, S);
  if (k > Rb - 1) k = Rb - 1;
  if (k < -(Ra - 1)) return false;
  return d + k * S > -Lb;
}

// Collapses a view to `count` rows a fixed `pitch` (elements) apart, when it is one.
bool as_uniform_rows(const TensorView& v, std::int64_t& count, std::int64_t& pitch) {
  count = v.total_rows();
  if (count == 1)
    pitch = 0;
  else if (v.batch == 1)
    pitch = v.row_stride;
  else if (v.rows == 1)
    pitch = v.batch_stride;
  else if (v.batch_stride == v.rows * v.row_stride)
    pitch = v.row_stride;
  else
    return false;
  return count == 1 || pitch > 0;
}

bool views_overlap(const TensorView& a, const TensorView& b) {
  if (!extents_intersect(a, b)) return false;
  std::int64_t ra, pa, rb, pb;
  if (!as_uniform_rows(a, ra, pa) || !as_uniform_rows(b, rb, pb)) return true;  // conservative
  const std::int64_t la = a.cols * static_cast<std::int64_t>(dtype_size(a.dtype));
  const std::int64_t lb = b.cols * static_cast<std::int64_t>(dtype_size(b.dtype));
  pa *= static_cast<std::int64_t>(dtype_size(a.dtype));
  pb *= static_cast<std::int64_t>(dtype_size(b.dtype));
  std::int64_t pitch;
  if (ra == 1 && rb == 1)
    pitch = la + lb;  // any pitch longer than both rows
  else if (ra == 1)
    pitch = pb;
  else if (rb == 1 || pa == pb)
    pitch = pa;
  else
    return true;  // different pitches: conservative
  const std::int64_t d =
      static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(b.data) - reinterpret_cast<std::uintptr_t>(a.data));
  return same_pitch_rows_overlap(d, pitch, la, lb, ra, rb);
}

bool same_view(const TensorView& a, const TensorView& b) {
  return a.data == b.data && a.dtype == b.dtype && a.batch == b.batch && a.rows == b.rows && a.cols == b.cols &&
         (a.rows <= 1 || a.row_stride == b.row_stride) && (a.batch <= 1 || a.batch_stride == b.batch_stride);
}

// An output written by many threads must not have two rows on the same memory.
void check_rows_disjoint(const TensorView& v, const char* name) {
  if (v.batch <= 1 || v.rows == 0) return;
  // Rows are disjoint when the smaller of the two strides steps over a whole row and the
  // larger one steps over everything the smaller spans.
  std::int64_t s_small = v.row_stride, n_small = v.rows, s_large = v.batch_stride;
  if (v.rows == 1) return;  // batch rows only: batch_stride >= cols checked below
  if (s_large < s_small) {
    std::swap(s_small, s_large);
    n_small = v.batch;
  }
  if (s_small < v.cols || s_large < (n_small - 1) * s_small + v.cols)
    fail(std::string(name) + ": rows overlap each other in " + shape_of(v) + " (an output needs disjoint rows)");
}

std::string combo(DType x, const std::optional<TensorView>& w, DType y) {
  return std::string("x ") + dtype_name(x) + ", weight " + (w ? dtype_name(w->dtype) : "none") + ", y " + dtype_name(y);
}

void same_device(const TensorView& v, const TensorView& x, const char* name) {
  if (v.device.kind != x.device.kind || v.device.index != x.device.index)
    fail(std::string(name) + ": must be on the same device as x");
}

void check_weight(const std::optional<TensorView>& weight, const TensorView& x, const Params& params) {
  if (weight) {
    const TensorView& w = *weight;
    if (w.total_rows() != 1 || w.cols != x.cols)
      fail("weight: expected a contiguous vector of cols = " + std::to_string(x.cols) + " elements, got " +
           shape_of(w));
    if (w.data == nullptr) fail("weight: data is null");
    same_device(w, x, "weight");
  } else if (params.weight_offset != 0.0) {
    fail("weight_offset: must be 0 without a weight (got " + std::to_string(params.weight_offset) + ")");
  }
}

// A vector of one accumulator-typed value per row of x (f32, f64 for f64 x), contiguous:
// rstd, and the sharded rows' sums.
void check_row_vector(const TensorView& r, const TensorView& x, const char* name) {
  const std::string who(name);
  const DType want = x.dtype == DType::f64 ? DType::f64 : DType::f32;
  if (r.dtype != want) fail(who + ": dtype must be " + dtype_name(want) + ", got " + dtype_name(r.dtype));
  const std::int64_t n = r.batch * r.rows * (r.rows > 0 && r.batch > 0 ? r.cols : 0);
  const bool contiguous =
      r.total_rows() <= 1 || (r.row_stride == r.cols && (r.batch <= 1 || r.batch_stride == r.rows * r.cols));
  if (!contiguous || n != x.total_rows())
    fail(who + ": expected a contiguous vector of batch*rows = " + std::to_string(x.total_rows()) + " elements, got " +
         shape_of(r));
  if (r.data == nullptr && n > 0) fail(who + ": data is null");
  same_device(r, x, name);
}

void check_rstd(const std::optional<TensorView>& rstd, const TensorView& x) {
  if (rstd) check_row_vector(*rstd, x, "rstd");
}

void check_params(const Params& params) {
  if (!std::isfinite(params.eps) || params.eps < 0.0)
    fail("eps: must be finite and >= 0, got " + std::to_string(params.eps));
  if (!std::isfinite(params.weight_offset))
    fail("weight_offset: must be finite, got " + std::to_string(params.weight_offset));
  if (params.cast != Cast::fp32 && params.cast != Cast::llama) fail("cast: unknown value");
  if (params.split_few_rows != SplitFewRows::automatic && params.split_few_rows != SplitFewRows::off &&
      params.split_few_rows != SplitFewRows::on)
    fail("split_few_rows: unknown value " + std::to_string(static_cast<int>(params.split_few_rows)) +
         " (expected SplitFewRows::automatic, off or on)");
}

bool is_quantised(DType t) { return t == DType::f8e4m3 || t == DType::i8; }

// `name` is the argument the norm reads: x, or r_out for the residual add's backward.
void check_x_dtype(const TensorView& x, const char* name = "x") {
  const DType xt = x.dtype;
  if (is_quantised(xt))
    fail(std::string(name) + ": dtype " + dtype_name(xt) +
         " is for quantised outputs only (expected f32, f16, bf16 or f64)");
  if (xt != DType::f32 && xt != DType::f16 && xt != DType::bf16 && xt != DType::f64)
    fail(std::string(name) + ": unknown dtype");
  if (xt == DType::f64 && x.device.kind == DeviceKind::cuda)
    unsupported(std::string(name) + ": f64 is supported on the CPU only (got a CUDA view)");
}

bool is_16bit(DType t) { return t == DType::f16 || t == DType::bf16; }

void check_weight_dtype(const std::optional<TensorView>& weight, DType xt) {
  if (!weight) return;
  const DType wt = weight->dtype;
  const bool ok = wt == xt || (wt == DType::f32 && is_16bit(xt));
  if (!ok)
    unsupported("weight: dtype " + std::string(dtype_name(wt)) + " is not supported with x " + dtype_name(xt) +
                " (expected x's dtype, or f32 with f16/bf16 x)");
}

// A view as rstd-like contiguous vector of n elements, for overlap checks.
TensorView as_vector(const TensorView& v, std::int64_t n) { return TensorView::vector(v.data, v.dtype, v.device, n); }

void check_residency(const Params& params, std::int64_t total_rows,
                     std::initializer_list<std::pair<const TensorView*, const char*>> views) {
#if defined(RMSNORM_HAVE_CUDA)
  if (!params.check_pointers || total_rows == 0) return;
  for (const auto& [v, name] : views)
    if (v) check_pointer_residency(v->data, v->device, name);
#else
  (void)params;
  (void)total_rows;
  for (const auto& [v, name] : views)
    if (v && v->device.kind == DeviceKind::cuda)
      unsupported(std::string(name) + ": a CUDA view, but this build of rmsnorm has no CUDA backend");
#endif
}

const TensorView* ptr(const std::optional<TensorView>& v) { return v ? &*v : nullptr; }

void check_same_shape(const TensorView& v, const TensorView& x, const char* name, const char* x_name = "x") {
  if (v.batch != x.batch || v.rows != x.rows || v.cols != x.cols)
    fail(std::string(name) + ": shape must match " + x_name + " " + shape_of(x) + ", got " + shape_of(v));
}

// One argument of a fused call, for the overlap rule below.
struct Arg {
  const char* name;
  TensorView view;
  bool output;
};

// Every output against every other argument: nothing may share a byte with an output,
// except the pairs in `exact`, and those only as the same view (in place).
void check_no_overlap(const std::vector<Arg>& args, std::initializer_list<std::pair<const char*, const char*>> exact) {
  const auto allowed = [&](const char* a, const char* b) {
    for (const auto& [p, q] : exact)
      if ((std::string(p) == a && std::string(q) == b) || (std::string(p) == b && std::string(q) == a)) return true;
    return false;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (!args[i].output) continue;
    for (std::size_t j = 0; j < args.size(); ++j) {
      if (i == j || (args[j].output && j < i)) continue;  // each pair of outputs once
      const Arg &o = args[i], &a = args[j];
      const bool exact_pair = allowed(o.name, a.name);
      if (exact_pair && same_view(o.view, a.view)) continue;
      if (views_overlap(o.view, a.view))
        fail(std::string(o.name) + ": overlaps " + a.name +
             (exact_pair ? std::string(" partially (") + o.name + " may alias " + a.name +
                               " only exactly: same data, strides and dtype)"
                         : ""));
    }
  }
}

// A vector of n f32 elements: the static scale and scale_ub (n = 1), per-row scales.
void check_f32_vector(const TensorView& v, const TensorView& x, std::int64_t n, const char* name, const char* what) {
  if (v.dtype != DType::f32) fail(std::string(name) + ": dtype must be f32, got " + dtype_name(v.dtype));
  const bool contiguous =
      v.total_rows() <= 1 || (v.row_stride == v.cols && (v.batch <= 1 || v.batch_stride == v.rows * v.cols));
  if (!contiguous || v.total_rows() * v.cols != n)
    fail(std::string(name) + ": expected " + what + " (a contiguous f32 vector of " + std::to_string(n) +
         " elements), got " + shape_of(v));
  if (v.data == nullptr && n > 0) fail(std::string(name) + ": data is null");
  same_device(v, x, name);
}

// Where the scales of a quantised call live, for the problem.
struct ScaleLayout {
  std::int64_t group_size = 0, row_stride = 0, group_stride = 0;
};

ScaleLayout check_quant(const Quant& quant, const TensorView& x) {
  const std::int64_t m = x.total_rows(), n = x.cols;
  const char* kind = quant.kind == QuantScale::static_tensor ? "a static scale"
                     : quant.kind == QuantScale::per_row     ? "per-row scales"
                                                             : "per-group scales";
  if (quant.kind != QuantScale::static_tensor && quant.kind != QuantScale::per_row &&
      quant.kind != QuantScale::per_group)
    fail("quant.kind: unknown value (expected static_tensor, per_row or per_group)");
  if (quant.kind == QuantScale::static_tensor) {
    if (quant.scale_ub) fail("scale_ub: caps computed scales (per_row, per_group), not a static scale");
    if (quant.pow2_scales) fail("pow2_scales: rounds computed scales (per_row, per_group), not a static scale");
  }
  if (quant.division != QuantDivision::exact && quant.division != QuantDivision::reciprocal)
    fail("quant.division: unknown value (expected exact or reciprocal)");
  if (quant.column_major_scales && quant.kind != QuantScale::per_group)
    fail(std::string("column_major_scales: only per-group scales have a layout to choose, not ") + kind);
  if (quant.scale_ub) check_f32_vector(*quant.scale_ub, x, 1, "scale_ub", "one fp32 upper bound of the amax");

  ScaleLayout out;
  out.group_size = n;
  if (quant.kind == QuantScale::static_tensor) {
    check_f32_vector(quant.scales, x, 1, "scales", "one fp32 scale for the tensor");
    return out;
  }
  if (quant.kind == QuantScale::per_row) {
    check_f32_vector(quant.scales, x, m, "scales", "one fp32 scale per row, batch*rows of them");
    out.row_stride = 1;
    return out;
  }
  if (quant.group_size < 1 || n % quant.group_size != 0)
    fail("group_size: must divide cols (" + std::to_string(n) + "), got " + std::to_string(quant.group_size));
  out.group_size = quant.group_size;
  const std::int64_t groups = n / quant.group_size;
  const TensorView& s = quant.scales;
  if (s.dtype != DType::f32) fail(std::string("scales: dtype must be f32, got ") + dtype_name(s.dtype));
  if (m == 0) return out;  // nothing is written
  // Row-major: a (rows, groups) matrix; column-major: the (groups, rows) matrix of its
  // transpose. Either may be a batched view as long as its rows are evenly spaced.
  const std::int64_t want_rows = quant.column_major_scales ? groups : m;
  const std::int64_t want_cols = quant.column_major_scales ? m : groups;
  std::int64_t count = 0, pitch = 0;
  const bool uniform = s.batch >= 0 && s.rows >= 0 && as_uniform_rows(s, count, pitch);
  if (!uniform || count != want_rows || s.cols != want_cols || (count > 1 && pitch < want_cols))
    fail(std::string("scales: expected per-group scales as a (") + std::to_string(want_rows) + ", " +
         std::to_string(want_cols) + ") f32 matrix (" +
         (quant.column_major_scales ? "groups, rows: column-major" : "rows, cols / group_size: row-major") +
         ") with evenly spaced rows at least " + std::to_string(want_cols) + " apart, got " + shape_of(s));
  if (s.data == nullptr) fail("scales: data is null");
  same_device(s, x, "scales");
  out.row_stride = quant.column_major_scales ? 1 : pitch;
  out.group_stride = quant.column_major_scales ? pitch : 1;
  return out;
}

// The residual's dtype with x's: x's own, or f32 with 16-bit x.
void check_residual_dtypes(const TensorView& residual, const TensorView& residual_out, DType xt) {
  const DType rt = residual.dtype;
  if (!(rt == xt || (rt == DType::f32 && is_16bit(xt))))
    unsupported("residual: dtype " + std::string(dtype_name(rt)) + " is not supported with x " + dtype_name(xt) +
                " (expected x's dtype, or f32 with f16/bf16 x)");
  if (residual_out.dtype != rt)
    unsupported("residual_out: dtype must be the residual's (" + std::string(dtype_name(rt)) + "), got " +
                dtype_name(residual_out.dtype));
}

// Strides with those of size-1 dimensions normalised, so that backends may use them blindly.
void strides_of(const TensorView& v, std::int64_t& batch_stride, std::int64_t& row_stride) {
  row_stride = v.rows > 1 ? v.row_stride : v.cols;
  batch_stride = v.batch > 1 ? v.batch_stride : v.rows * row_stride;
}

}  // namespace

ForwardProblem validate_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const Params& params, const std::optional<TensorView>& rstd) {
  return validate_fused_forward(x, nullptr, nullptr, weight, y, nullptr, params, rstd);
}

ForwardProblem validate_fused_forward(const TensorView& x, const TensorView* residual, const TensorView* residual_out,
                                      const std::optional<TensorView>& weight, const TensorView& y, const Quant* quant,
                                      const Params& params, const std::optional<TensorView>& rstd) {
  if ((residual == nullptr) != (residual_out == nullptr))
    fail(residual ? "residual_out: missing (a residual add needs both residual and residual_out)"
                  : "residual: missing (a residual add needs both residual and residual_out)");
  const char* yn = quant ? "q" : "y";  // the output's name
  check_layout(x, "x");
  if (residual) {
    check_layout(*residual, "residual");
    check_layout(*residual_out, "residual_out");
  }
  check_layout(y, yn);
  check_same_shape(y, x, yn);
  if (residual) {
    check_same_shape(*residual, x, "residual");
    check_same_shape(*residual_out, x, "residual_out");
  }
  check_rows_disjoint(y, yn);
  same_device(y, x, yn);
  if (residual) {
    check_rows_disjoint(*residual_out, "residual_out");
    same_device(*residual, x, "residual");
    same_device(*residual_out, x, "residual_out");
  }

  // dtypes
  const DType xt = x.dtype;
  check_x_dtype(x);
  check_weight_dtype(weight, xt);
  if (residual) check_residual_dtypes(*residual, *residual_out, xt);
  if (quant) {
    if (xt == DType::f64) unsupported("x: f64 has no quantised output (quantised outputs take f32, f16 or bf16 x)");
    if (!is_quantised(y.dtype)) unsupported(std::string("q: dtype must be f8e4m3 or i8, got ") + dtype_name(y.dtype));
  } else {
    const bool y_ok = y.dtype == xt || (y.dtype == DType::f32 && weight && weight->dtype == DType::f32 && is_16bit(xt));
    if (!y_ok)
      unsupported("y: dtype combination not supported (" + combo(xt, weight, y.dtype) +
                  "); y must have x's dtype, or be f32 when x is f16/bf16 and the weight is f32");
  }

  check_weight(weight, x, params);
  check_rstd(rstd, x);
  check_params(params);
  const ScaleLayout scale_layout = quant ? check_quant(*quant, x) : ScaleLayout{};

  // aliasing: y may be exactly x; nothing else may share memory with an output
  if (quant && views_overlap(x, y)) fail("q: overlaps x");
  if (!quant && !same_view(x, y) && views_overlap(x, y))
    fail("y: overlaps x partially (y may alias x only exactly: same data, strides and dtype)");
  if (rstd && x.total_rows() > 0) {
    const TensorView& r = *rstd;
    const TensorView rv = as_vector(r, x.total_rows());
    if (views_overlap(rv, x)) fail("rstd: overlaps x");
    if (views_overlap(rv, y)) fail(std::string("rstd: overlaps ") + yn);
    if (weight && views_overlap(rv, *weight)) fail("rstd: overlaps weight");
  }
  if (weight && x.total_rows() > 0 && views_overlap(*weight, y)) fail(std::string("weight: overlaps ") + yn);
  if ((residual || quant) && x.total_rows() > 0) {
    // The fused arguments: outputs share no byte with anything but their one exact alias.
    const bool in_place = residual && same_view(*residual, *residual_out);
    std::vector<Arg> args = {{"x", x, false}, {yn, y, true}};
    if (weight) args.push_back({"weight", *weight, false});
    if (rstd) args.push_back({"rstd", as_vector(*rstd, x.total_rows()), true});
    if (residual) {
      args.push_back({"residual", *residual, in_place});
      if (!in_place) args.push_back({"residual_out", *residual_out, true});
    }
    if (quant) {
      const bool written = quant->kind != QuantScale::static_tensor;
      const TensorView& sv = quant->scales;
      args.push_back(
          {"scales", quant->kind == QuantScale::per_group ? sv : as_vector(sv, sv.total_rows() * sv.cols), written});
      if (quant->scale_ub) args.push_back({"scale_ub", as_vector(*quant->scale_ub, 1), false});
    }
    check_no_overlap(args, {{"y", "x"}, {"residual_out", "residual"}});
  }

  check_residency(params, x.total_rows(),
                  {{&x, "x"},
                   {&y, yn},
                   {ptr(weight), "weight"},
                   {ptr(rstd), "rstd"},
                   {residual, "residual"},
                   {residual_out, "residual_out"},
                   {quant ? &quant->scales : nullptr, "scales"},
                   {quant ? ptr(quant->scale_ub) : nullptr, "scale_ub"}});

  ForwardProblem p;
  p.x = x.data;
  p.y = y.data;
  p.weight = weight ? weight->data : nullptr;
  p.rstd = rstd ? rstd->data : nullptr;
  p.x_dtype = xt;
  p.y_dtype = y.dtype;
  p.w_dtype = weight ? weight->dtype : xt;
  p.batch = x.batch;
  p.rows = x.rows;
  p.cols = x.cols;
  strides_of(x, p.x_batch_stride, p.x_row_stride);
  strides_of(y, p.y_batch_stride, p.y_row_stride);
  p.eps = params.eps;
  p.weight_offset = params.weight_offset;
  p.cast = params.cast;
  p.pdl = params.pdl;
  p.split_few_rows = params.split_few_rows;
  if (residual) {
    p.residual = residual->data;
    p.residual_out = residual_out->data;
    p.r_dtype = residual->dtype;
    strides_of(*residual, p.r_batch_stride, p.r_row_stride);
    strides_of(*residual_out, p.r_out_batch_stride, p.r_out_row_stride);
  }
  if (quant) {
    p.quantize = true;
    p.quant_scale = quant->kind;
    p.scales = static_cast<float*>(quant->scales.data);
    p.group_size = scale_layout.group_size;
    p.scale_row_stride = scale_layout.row_stride;
    p.scale_group_stride = scale_layout.group_stride;
    p.scale_ub = quant->scale_ub ? static_cast<const float*>(quant->scale_ub->data) : nullptr;
    p.pow2_scales = quant->pow2_scales;
    p.reciprocal = quant->division == QuantDivision::reciprocal;
  }
  return p;
}

ForwardProblem validate_allreduce_add_forward(const TensorView* partials, std::size_t count, const TensorView& residual,
                                              const TensorView& residual_out, const std::optional<TensorView>& weight,
                                              const TensorView& y, const Params& params,
                                              const std::optional<TensorView>& rstd) {
  if (partials == nullptr || count == 0 || count > kMaxAllReduceRanks)
    fail("partials: expected 1 to " + std::to_string(kMaxAllReduceRanks) + " views, got " +
         (partials == nullptr ? std::string("a null array") : std::to_string(count)));
  ForwardProblem p;
  try {
    p = validate_fused_forward(partials[0], &residual, &residual_out, weight, y, nullptr, params, rstd);
  } catch (const Error& e) {
    // The messages of the residual add name its x: here that is partials[0].
    const auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    std::string m = e.what();
    for (std::size_t at = 0; (at = m.find('x', at)) != std::string::npos;) {
      const bool word = (at == 0 || !name_char(m[at - 1])) && (at + 1 == m.size() || !name_char(m[at + 1]));
      m.replace(at, word ? 1 : 0, word ? "partials[0]" : "");
      at += word ? 11 : 1;
    }
    throw Error(e.code(), m);
  }
  const TensorView& x = partials[0];
  std::vector<std::string> names(count);
  for (std::size_t k = 0; k < count; ++k) names[k] = "partials[" + std::to_string(k) + "]";
  for (std::size_t k = 1; k < count; ++k) {
    const TensorView& v = partials[k];
    const char* name = names[k].c_str();
    check_layout(v, name);
    check_same_shape(v, x, name, "partials[0]");
    same_device(v, x, name);
    if (v.dtype != x.dtype)
      unsupported(names[k] + ": dtype must be partials[0]'s (" + dtype_name(x.dtype) + "), got " + dtype_name(v.dtype));
    std::int64_t bs = 0, rs = 0;
    strides_of(v, bs, rs);
    if (bs != p.x_batch_stride || rs != p.x_row_stride)
      fail(names[k] + ": strides must be partials[0]'s (the ranks' buffers share one layout): " + shape_of(x) +
           ", got " + shape_of(v));
  }
  // No output may share a byte with a partial: the other ranks read them during the call.
  if (x.total_rows() > 0) {
    for (std::size_t k = 0; k < count; ++k) {
      const TensorView& v = partials[k];
      if (views_overlap(y, v)) fail("y: overlaps " + names[k] + " (the ranks read the partials while the call runs)");
      if (views_overlap(residual_out, v))
        fail("residual_out: overlaps " + names[k] + " (the ranks read the partials while the call runs)");
      if (rstd && views_overlap(as_vector(*rstd, x.total_rows()), v)) fail("rstd: overlaps " + names[k]);
    }
    if (params.check_pointers)
      for (std::size_t k = 1; k < count; ++k)
        check_residency(params, x.total_rows(), {{&partials[k], names[k].c_str()}});
  }
  p.ranks = static_cast<int>(count);
  for (std::size_t k = 0; k < count; ++k) p.rank_x[k] = partials[k].data;
  return p;
}

BackwardProblem validate_backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                                  const std::optional<TensorView>& rstd, const TensorView& dx,
                                  const std::optional<TensorView>& dw, const Params& params) {
  check_layout(x, "x");
  check_layout(dy, "dy");
  check_layout(dx, "dx");
  for (const auto& [v, name] : {std::pair<const TensorView*, const char*>{&dy, "dy"}, {&dx, "dx"}}) {
    if (v->batch != x.batch || v->rows != x.rows || v->cols != x.cols)
      fail(std::string(name) + ": shape must match x " + shape_of(x) + ", got " + shape_of(*v));
    same_device(*v, x, name);
    if (v->dtype != x.dtype)
      unsupported(std::string(name) + ": dtype must be x's (" + dtype_name(x.dtype) + "), got " + dtype_name(v->dtype));
  }
  check_rows_disjoint(dx, "dx");
  check_x_dtype(x);
  check_weight_dtype(weight, x.dtype);
  check_weight(weight, x, params);
  check_rstd(rstd, x);
  check_params(params);
  if (dw) {
    if (!weight) fail("dw: requested without a weight (there is no weight gradient without a weight)");
    const TensorView& g = *dw;
    if (g.total_rows() != 1 || g.cols != x.cols)
      fail("dw: expected a contiguous vector of cols = " + std::to_string(x.cols) + " elements, got " + shape_of(g));
    if (g.data == nullptr) fail("dw: data is null");
    same_device(g, x, "dw");
    const bool dw_ok = g.dtype == weight->dtype || (g.dtype == DType::f32 && weight->dtype != DType::f64);
    if (!dw_ok)
      unsupported(std::string("dw: dtype must be the weight's (") + dtype_name(weight->dtype) +
                  (weight->dtype == DType::f64 ? ")" : ") or f32") + ", got " + dtype_name(g.dtype));
  }

  // aliasing: dx may be exactly dy; outputs share memory with nothing else
  if (!same_view(dy, dx) && views_overlap(dy, dx))
    fail("dx: overlaps dy partially (dx may alias dy only exactly: same data, strides and dtype)");
  if (x.total_rows() > 0) {
    if (views_overlap(x, dx)) fail("dx: overlaps x");
    if (weight && views_overlap(*weight, dx)) fail("dx: overlaps weight");
    if (rstd && views_overlap(as_vector(*rstd, x.total_rows()), dx)) fail("dx: overlaps rstd");
  }
  if (dw) {
    const TensorView& g = *dw;
    if (views_overlap(g, dx) || views_overlap(g, dy) || views_overlap(g, x) || views_overlap(g, *weight) ||
        (rstd && views_overlap(g, as_vector(*rstd, x.total_rows()))))
      fail("dw: overlaps another argument");
  }
  check_residency(params, x.total_rows(),
                  {{&dy, "dy"}, {&x, "x"}, {&dx, "dx"}, {ptr(weight), "weight"}, {ptr(rstd), "rstd"}, {ptr(dw), "dw"}});

  BackwardProblem p;
  p.dy = dy.data;
  p.x = x.data;
  p.weight = weight ? weight->data : nullptr;
  p.rstd = rstd ? rstd->data : nullptr;
  p.dx = dx.data;
  p.dw = dw ? dw->data : nullptr;
  p.x_dtype = x.dtype;
  p.w_dtype = weight ? weight->dtype : x.dtype;
  p.dw_dtype = dw ? dw->dtype : p.w_dtype;
  p.batch = x.batch;
  p.rows = x.rows;
  p.cols = x.cols;
  const auto strides = [](const TensorView& v, std::int64_t& bs, std::int64_t& rs) {
    rs = v.rows > 1 ? v.row_stride : v.cols;
    bs = v.batch > 1 ? v.batch_stride : v.rows * rs;
  };
  strides(dy, p.dy_batch_stride, p.dy_row_stride);
  strides(x, p.x_batch_stride, p.x_row_stride);
  strides(dx, p.dx_batch_stride, p.dx_row_stride);
  p.dx_dtype = x.dtype;
  p.eps = params.eps;
  p.pdl = params.pdl;
  p.weight_offset = params.weight_offset;
  return p;
}

BackwardProblem validate_fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                            const std::optional<TensorView>& weight,
                                            const std::optional<TensorView>& rstd, const TensorView& dx,
                                            const std::optional<TensorView>& dr, const std::optional<TensorView>& dw,
                                            const Params& params) {
  check_layout(r_out, "r_out");
  check_layout(dy, "dy");
  check_layout(dr_out, "dr_out");
  check_layout(dx, "dx");
  if (dr) check_layout(*dr, "dr");
  for (const auto& [v, name] :
       {std::pair<const TensorView*, const char*>{&dy, "dy"}, {&dr_out, "dr_out"}, {&dx, "dx"}, {ptr(dr), "dr"}}) {
    if (!v) continue;
    check_same_shape(*v, r_out, name, "r_out");
    same_device(*v, r_out, name);
  }
  check_rows_disjoint(dx, "dx");
  if (dr) check_rows_disjoint(*dr, "dr");

  // dtypes: r_out (and dr_out, dr) the residual's; dy and dx x's, which is r_out's or 16-bit
  // with an f32 r_out; the weight x's or f32.
  const DType rt = r_out.dtype, xt = dx.dtype;
  check_x_dtype(r_out, "r_out");
  if (!(xt == rt || (rt == DType::f32 && is_16bit(xt))))
    unsupported("dx: dtype " + std::string(dtype_name(xt)) + " is not supported with r_out " + dtype_name(rt) +
                " (expected r_out's dtype, or f16/bf16 with an f32 r_out)");
  if (dy.dtype != xt)
    unsupported("dy: dtype must be dx's (" + std::string(dtype_name(xt)) + "), got " + dtype_name(dy.dtype));
  if (dr_out.dtype != rt)
    unsupported("dr_out: dtype must be r_out's (" + std::string(dtype_name(rt)) + "), got " + dtype_name(dr_out.dtype));
  if (dr && dr->dtype != rt)
    unsupported("dr: dtype must be r_out's (" + std::string(dtype_name(rt)) + "), got " + dtype_name(dr->dtype));
  check_weight_dtype(weight, xt);
  check_weight(weight, r_out, params);
  check_rstd(rstd, r_out);
  check_params(params);
  if (dw) {
    if (!weight) fail("dw: requested without a weight (there is no weight gradient without a weight)");
    const TensorView& g = *dw;
    if (g.total_rows() != 1 || g.cols != r_out.cols)
      fail("dw: expected a contiguous vector of cols = " + std::to_string(r_out.cols) + " elements, got " +
           shape_of(g));
    if (g.data == nullptr) fail("dw: data is null");
    same_device(g, r_out, "dw");
    const bool dw_ok = g.dtype == weight->dtype || (g.dtype == DType::f32 && weight->dtype != DType::f64);
    if (!dw_ok)
      unsupported(std::string("dw: dtype must be the weight's (") + dtype_name(weight->dtype) +
                  (weight->dtype == DType::f64 ? ")" : ") or f32") + ", got " + dtype_name(g.dtype));
  }

  // aliasing: dx may be exactly dy or dr_out, dr exactly dr_out; outputs share nothing else
  const std::int64_t m = r_out.total_rows();
  if (m > 0) {
    std::vector<Arg> args = {{"dy", dy, false}, {"dr_out", dr_out, false}, {"r_out", r_out, false}, {"dx", dx, true}};
    if (dr) args.push_back({"dr", *dr, true});
    if (weight) args.push_back({"weight", *weight, false});
    if (rstd) args.push_back({"rstd", as_vector(*rstd, m), false});
    if (dw) args.push_back({"dw", *dw, true});
    check_no_overlap(args, {{"dx", "dy"}, {"dx", "dr_out"}, {"dr", "dr_out"}});
  } else if (dw && weight && views_overlap(*dw, *weight)) {
    fail("dw: overlaps weight");
  }
  check_residency(params, m,
                  {{&dy, "dy"},
                   {&dr_out, "dr_out"},
                   {&r_out, "r_out"},
                   {&dx, "dx"},
                   {ptr(dr), "dr"},
                   {ptr(weight), "weight"},
                   {ptr(rstd), "rstd"},
                   {ptr(dw), "dw"}});

  BackwardProblem p;
  p.dy = dy.data;
  p.x = r_out.data;
  p.weight = weight ? weight->data : nullptr;
  p.rstd = rstd ? rstd->data : nullptr;
  p.dx = dx.data;
  p.dw = dw ? dw->data : nullptr;
  p.x_dtype = rt;
  p.dx_dtype = xt;
  p.w_dtype = weight ? weight->dtype : rt;
  p.dw_dtype = dw ? dw->dtype : p.w_dtype;
  p.batch = r_out.batch;
  p.rows = r_out.rows;
  p.cols = r_out.cols;
  strides_of(dy, p.dy_batch_stride, p.dy_row_stride);
  strides_of(r_out, p.x_batch_stride, p.x_row_stride);
  strides_of(dx, p.dx_batch_stride, p.dx_row_stride);
  p.dr_out = dr_out.data;
  strides_of(dr_out, p.dr_out_batch_stride, p.dr_out_row_stride);
  if (dr) {
    p.dr = dr->data;
    strides_of(*dr, p.dr_batch_stride, p.dr_row_stride);
  }
  p.eps = params.eps;
  p.pdl = params.pdl;
  p.weight_offset = params.weight_offset;
  return p;
}

// ---------------------------------------------------------------------------------------
// Sharded rows (sharded_problem.h): the forward's and backward's checks, plus the per-row
// sums and the full row length.
// ---------------------------------------------------------------------------------------

namespace {

void check_full_cols(std::int64_t full_cols, const TensorView& x) {
  if (full_cols < x.cols)
    fail("full_cols: the whole row's length must be >= the shard's cols (" + std::to_string(x.cols) + "), got " +
         std::to_string(full_cols));
}

// dy must be x's twin (shape, device, dtype), as in the backward.
void check_like_x(const TensorView& v, const TensorView& x, const char* name) {
  check_layout(v, name);
  if (v.batch != x.batch || v.rows != x.rows || v.cols != x.cols)
    fail(std::string(name) + ": shape must match x " + shape_of(x) + ", got " + shape_of(v));
  same_device(v, x, name);
  if (v.dtype != x.dtype)
    unsupported(std::string(name) + ": dtype must be x's (" + dtype_name(x.dtype) + "), got " + dtype_name(v.dtype));
}

void row_strides(const TensorView& v, std::int64_t& bs, std::int64_t& rs) {
  rs = v.rows > 1 ? v.row_stride : v.cols;
  bs = v.batch > 1 ? v.batch_stride : v.rows * rs;
}

}  // namespace

PartialSumsProblem validate_partial_sum_squares(const TensorView& x, const TensorView& sums, const Params& params) {
  check_layout(x, "x");
  check_x_dtype(x);
  check_row_vector(sums, x, "sums");
  if (views_overlap(as_vector(sums, x.total_rows()), x)) fail("sums: overlaps x");
  check_residency(params, x.total_rows(), {{&x, "x"}, {&sums, "sums"}});

  PartialSumsProblem p;
  p.x = x.data;
  p.sums = sums.data;
  p.x_dtype = x.dtype;
  p.w_dtype = x.dtype;
  p.batch = x.batch;
  p.rows = x.rows;
  p.cols = x.cols;
  row_strides(x, p.x_batch_stride, p.x_row_stride);
  p.pdl = params.pdl;
  return p;
}

PartialSumsProblem validate_partial_grad_dot(const TensorView& dy, const TensorView& x,
                                             const std::optional<TensorView>& weight, const TensorView& dots,
                                             const Params& params) {
  check_layout(x, "x");
  check_like_x(dy, x, "dy");
  check_x_dtype(x);
  check_weight_dtype(weight, x.dtype);
  check_weight(weight, x, params);
  check_params(params);
  check_row_vector(dots, x, "dots");
  const TensorView dv = as_vector(dots, x.total_rows());
  if (views_overlap(dv, x) || views_overlap(dv, dy) || (weight && views_overlap(dv, *weight)))
    fail("dots: overlaps another argument");
  check_residency(params, x.total_rows(), {{&dy, "dy"}, {&x, "x"}, {ptr(weight), "weight"}, {&dots, "dots"}});

  PartialSumsProblem p;
  p.x = x.data;
  p.dy = dy.data;
  p.weight = weight ? weight->data : nullptr;
  p.sums = dots.data;
  p.x_dtype = x.dtype;
  p.w_dtype = weight ? weight->dtype : x.dtype;
  p.batch = x.batch;
  p.rows = x.rows;
  p.cols = x.cols;
  row_strides(x, p.x_batch_stride, p.x_row_stride);
  row_strides(dy, p.dy_batch_stride, p.dy_row_stride);
  p.weight_offset = params.weight_offset;
  p.pdl = params.pdl;
  return p;
}

ForwardFromSumsProblem validate_forward_from_sums(const TensorView& x, const std::optional<TensorView>& weight,
                                                  const TensorView& y, const TensorView& sums, std::int64_t full_cols,
                                                  const Params& params, const std::optional<TensorView>& rstd) {
  ForwardFromSumsProblem p{validate_forward(x, weight, y, params, rstd), sums.data, full_cols};
  check_row_vector(sums, x, "sums");
  check_full_cols(full_cols, x);
  if (x.total_rows() > 0) {
    const TensorView sv = as_vector(sums, x.total_rows());
    if (views_overlap(sv, y)) fail("sums: overlaps y");
    if (rstd && views_overlap(sv, as_vector(*rstd, x.total_rows()))) fail("sums: overlaps rstd");
  }
  check_residency(params, x.total_rows(), {{&sums, "sums"}});
  return p;
}

BackwardFromSumsProblem validate_backward_from_sums(const TensorView& dy, const TensorView& x,
                                                    const std::optional<TensorView>& weight, const TensorView& rstd,
                                                    const TensorView& dots, std::int64_t full_cols,
                                                    const TensorView& dx, const std::optional<TensorView>& dw,
                                                    const Params& params) {
  BackwardFromSumsProblem p{validate_backward(dy, x, weight, rstd, dx, dw, params), dots.data, full_cols};
  check_row_vector(dots, x, "dots");
  check_full_cols(full_cols, x);
  if (x.total_rows() > 0) {
    const TensorView dv = as_vector(dots, x.total_rows());
    if (views_overlap(dv, dx)) fail("dots: overlaps dx");
    if (dw && views_overlap(dv, *dw)) fail("dots: overlaps dw");
  }
  check_residency(params, x.total_rows(), {{&dots, "dots"}});
  return p;
}

}  // namespace rmsnorm::detail
