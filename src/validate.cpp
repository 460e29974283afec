// Argument checking for every entry point: all of it happens before anything is written.
#include <cmath>
#include <initializer_list>
#include <sstream>
#include <string>
#include <utility>

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
}

void check_x_dtype(const TensorView& x) {
  const DType xt = x.dtype;
  if (xt != DType::f32 && xt != DType::f16 && xt != DType::bf16 && xt != DType::f64) fail("x: unknown dtype");
  if (xt == DType::f64 && x.device.kind == DeviceKind::cuda)
    unsupported("x: f64 is supported on the CPU only (got a CUDA view)");
}

void check_weight_dtype(const std::optional<TensorView>& weight, DType xt) {
  if (!weight) return;
  const DType wt = weight->dtype;
  const bool ok = wt == xt || (wt == DType::f32 && (xt == DType::f16 || xt == DType::bf16));
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

}  // namespace

ForwardProblem validate_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const Params& params, const std::optional<TensorView>& rstd) {
  check_layout(x, "x");
  check_layout(y, "y");
  if (y.batch != x.batch || y.rows != x.rows || y.cols != x.cols)
    fail("y: shape must match x " + shape_of(x) + ", got " + shape_of(y));
  check_rows_disjoint(y, "y");
  same_device(y, x, "y");

  // dtypes
  const DType xt = x.dtype;
  check_x_dtype(x);
  check_weight_dtype(weight, xt);
  {
    const bool y_ok = y.dtype == xt || (y.dtype == DType::f32 && weight && weight->dtype == DType::f32 &&
                                        (xt == DType::f16 || xt == DType::bf16));
    if (!y_ok)
      unsupported("y: dtype combination not supported (" + combo(xt, weight, y.dtype) +
                  "); y must have x's dtype, or be f32 when x is f16/bf16 and the weight is f32");
  }

  check_weight(weight, x, params);
  check_rstd(rstd, x);
  check_params(params);

  // aliasing: y may be exactly x; nothing else may share memory with an output
  if (!same_view(x, y) && views_overlap(x, y))
    fail("y: overlaps x partially (y may alias x only exactly: same data, strides and dtype)");
  if (rstd && x.total_rows() > 0) {
    const TensorView& r = *rstd;
    const TensorView rv = as_vector(r, x.total_rows());
    if (views_overlap(rv, x)) fail("rstd: overlaps x");
    if (views_overlap(rv, y)) fail("rstd: overlaps y");
    if (weight && views_overlap(rv, *weight)) fail("rstd: overlaps weight");
  }
  if (weight && x.total_rows() > 0 && views_overlap(*weight, y)) fail("weight: overlaps y");

  check_residency(params, x.total_rows(), {{&x, "x"}, {&y, "y"}, {ptr(weight), "weight"}, {ptr(rstd), "rstd"}});

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
  // Normalise strides of size-1 dimensions so that backends may use them blindly.
  p.x_row_stride = x.rows > 1 ? x.row_stride : x.cols;
  p.y_row_stride = y.rows > 1 ? y.row_stride : y.cols;
  p.x_batch_stride = x.batch > 1 ? x.batch_stride : x.rows * p.x_row_stride;
  p.y_batch_stride = y.batch > 1 ? y.batch_stride : y.rows * p.y_row_stride;
  p.eps = params.eps;
  p.weight_offset = params.weight_offset;
  p.cast = params.cast;
  p.pdl = params.pdl;
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
