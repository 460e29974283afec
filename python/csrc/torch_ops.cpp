// The PyTorch binding of rmsnorm: the only file of the project that includes torch.
//
// It declares the ops once (TORCH_LIBRARY), maps tensors onto the library's
// (batch, rows, cols) views without copying, and registers one implementation for the CPU
// and, in CUDA builds, the same one for CUDA (TORCH_LIBRARY_IMPL). Fake kernels and autograd
// live in Python (rmsnorm/_ops.py), as in pytorch/extension-cpp. No pybind11: the shared
// library is loaded with torch.ops.load_library and needs only libtorch and libc10.
//
// CUDA-graph safety: every tensor, workspace included, comes from torch's allocator, kernels
// go to the current stream, and nothing here synchronises with the host.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#if defined(RMSNORM_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "rmsnorm/rmsnorm.h"

namespace {

using at::Tensor;
using rmsnorm::DType;

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

// Messages are built from strings only; numbers and shapes go through std::to_string.
// Built with GCC 13.3 on the H100 machine (torch 2.11), streaming an int64 or an IntArrayRef
// into a TORCH_CHECK message crashed the process (SIGSEGV) while strings, dtypes and devices
// were fine; the cause is not understood, so this file streams nothing else.
// Formats a shape as Python does: "(2, 3, 64)", "(64,)".
std::string shape_str(at::IntArrayRef v) {
  std::string s = "(";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + (v.size() == 1 ? ",)" : ")");
}

DType to_dtype(const Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::f32;
    case at::kHalf:
      return DType::f16;
    case at::kBFloat16:
      return DType::bf16;
    case at::kDouble:
      TORCH_CHECK_TYPE(!t.is_cuda(), "rmsnorm: ", name, " is float64 on CUDA; float64 is supported on the CPU only");
      return DType::f64;
    case at::kFloat8_e4m3fn:  // the quantised outputs' dtypes (the library refuses them as inputs)
      return DType::f8e4m3;
    case at::kChar:
      return DType::i8;
    default:
      TORCH_CHECK_TYPE(false, "rmsnorm: ", name, " has dtype ", t.scalar_type(),
                       "; expected float32, float16 or bfloat16 (float64 on the CPU)");
  }
}

rmsnorm::Cast parse_cast(c10::string_view cast) {
  if (cast == "fp32") return rmsnorm::Cast::fp32;
  if (cast == "llama") return rmsnorm::Cast::llama;
  TORCH_CHECK_VALUE(false, "rmsnorm: cast must be \"fp32\" or \"llama\", got \"", std::string(cast), "\"");
}

rmsnorm::Device lib_device(const Tensor& t) {
  return t.is_cuda() ? rmsnorm::Device::cuda(t.get_device()) : rmsnorm::Device::cpu();
}

// `x_name` is what the op calls its x (partials[0] in fused_allreduce_add_rms_norm).
void check_same_device(const Tensor& t, const Tensor& x, const char* name, const char* x_name = "x") {
  TORCH_CHECK_VALUE(t.device() == x.device(), "rmsnorm: ", name, " is on ", t.device(), " but ", x_name, " is on ",
                    x.device(), "; all tensors must be on the same device");
}

void check_x(const Tensor& x, const char* name = "x") {
  TORCH_CHECK_VALUE(x.dim() >= 1, "rmsnorm: ", name, " must have at least one dimension (the normalised one)");
  TORCH_CHECK_VALUE(x.size(-1) >= 1, "rmsnorm: ", name, "'s last dimension must not be empty, got shape ",
                    shape_str(x.sizes()));
  const DType t = to_dtype(x, name);
  TORCH_CHECK_TYPE(t != DType::f8e4m3 && t != DType::i8, "rmsnorm: ", name, " has dtype ", x.scalar_type(),
                   "; expected float32, float16 or bfloat16 (float64 on the CPU)");
}

// The weight, checked against x; returns it contiguous (a copy of at most cols elements when
// it was a strided vector, which the kernels cannot read).
std::optional<Tensor> checked_weight(const std::optional<Tensor>& weight, const Tensor& x, double offset,
                                     const char* x_name = "x") {
  if (!weight.has_value() || !weight->defined()) {
    TORCH_CHECK_VALUE(offset == 0.0, "rmsnorm: offset must be 0 without a weight, got ", std::to_string(offset));
    return std::nullopt;
  }
  const Tensor& w = *weight;
  check_same_device(w, x, "weight", x_name);
  TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == x.size(-1), "rmsnorm: weight must have shape (",
                    std::to_string(x.size(-1)), ",) to match ", x_name, "'s last dimension, got ",
                    shape_str(w.sizes()));
  const DType wt = to_dtype(w, "weight"), xt = to_dtype(x, x_name);
  TORCH_CHECK_TYPE(wt == xt || (wt == DType::f32 && (xt == DType::f16 || xt == DType::bf16)),
                   "rmsnorm: weight has dtype ", w.scalar_type(), " and ", x_name, " ", x.scalar_type(),
                   "; the weight must have ", x_name, "'s dtype, or be float32 with float16/bfloat16 ", x_name);
  return w.contiguous();
}

// y's dtype: x's, except under the llama cast with a float32 weight and 16-bit x, where Hugging
// Face's LlamaRMSNorm returns the promoted dtype (float32).
at::ScalarType output_dtype(const Tensor& x, const std::optional<Tensor>& w, rmsnorm::Cast cast) {
  if (cast == rmsnorm::Cast::llama && w && w->scalar_type() == at::kFloat &&
      (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16))
    return at::kFloat;
  return x.scalar_type();
}

// ---------------------------------------------------------------------------------------
// Tensors as (batch, rows, cols) views
// ---------------------------------------------------------------------------------------
//
// The library reads rows of `cols` contiguous elements at data + b * batch_stride +
// r * row_stride. A tensor (d_0, ..., d_{k-1}, cols) with a contiguous last dimension fits
// when its leading dimensions fall into at most two groups, each of which collapses into one
// dimension with one stride (d_i's stride == d_{i+1}'s stride * d_{i+1}, size-1 dimensions
// ignored): the outer group is the batch, the inner one the rows. `split` is the index of
// the first leading dimension of the inner group (0: everything is rows, batch = 1). The row
// order b * rows + r is the row-major order of the leading dimensions, so a contiguous rstd
// of shape x.shape[:-1] lines up with it.

struct Group {
  std::int64_t size = 1;
  std::int64_t stride = 0;
  bool ok = true;
};

Group collapse(const Tensor& t, std::int64_t begin, std::int64_t end) {
  Group g;
  bool first = true;
  for (std::int64_t d = begin; d < end; ++d) {
    const std::int64_t n = t.size(d), s = t.stride(d);
    if (n == 1) continue;
    if (first) {
      g = {n, s, true};
      first = false;
    } else if (g.stride == s * n) {
      g.size *= n;
      g.stride = s;
    } else {
      g.ok = false;
      return g;
    }
  }
  return g;
}

std::optional<rmsnorm::TensorView> view_at(const Tensor& t, std::int64_t split) {
  const std::int64_t cols = t.size(-1);
  if (cols > 1 && t.stride(-1) != 1) return std::nullopt;
  const std::int64_t lead = t.dim() - 1;
  const Group outer = collapse(t, 0, split), inner = collapse(t, split, lead);
  if (!outer.ok || !inner.ok) return std::nullopt;
  std::int64_t rows = inner.size, row_stride = inner.size > 1 ? inner.stride : cols;
  std::int64_t batch = outer.size, batch_stride = outer.size > 1 ? outer.stride : rows * row_stride;
  // Rows that overlap (a stride-0 expand, say) are outside the library's contract.
  if (rows > 1 && row_stride < cols) return std::nullopt;
  if (batch > 1 && batch_stride < 0) return std::nullopt;
  if (t.numel() == 0) {  // any strides will do for no rows
    batch = 1;
    rows = 0;
    row_stride = cols;
    batch_stride = 0;
  }
  return rmsnorm::TensorView::batched(t.data_ptr(), to_dtype(t, "tensor"), lib_device(t), batch, rows, cols,
                                      batch_stride, row_stride);
}

// The split at which `t` is a view, preferring a single matrix (split 0).
std::optional<std::int64_t> find_split(const Tensor& t) {
  const std::int64_t lead = t.dim() - 1;
  if (view_at(t, 0)) return 0;
  // The only candidate is the first place where collapsing fails.
  std::int64_t prev = -1;
  for (std::int64_t d = 0; d < lead; ++d) {
    if (t.size(d) == 1) continue;
    if (prev >= 0 && t.stride(prev) != t.stride(d) * t.size(d)) return view_at(t, d) ? std::optional(d) : std::nullopt;
    prev = d;
  }
  return std::nullopt;
}

// An input as a view at `split`; when it is not one (a non-contiguous last dimension, three or
// more stride groups, overlapping rows), a contiguous copy of it: the documented fallback.
rmsnorm::TensorView input_view(Tensor& t, std::int64_t split) {
  if (auto v = view_at(t, split)) return *v;
  t = t.contiguous();
  return *view_at(t, split);
}

// ---------------------------------------------------------------------------------------
// Calls into the library
// ---------------------------------------------------------------------------------------

// rmsnorm::Error -> the Python exception that fits: a bad argument is a ValueError, a valid
// request this build or device cannot serve a NotImplementedError, a CUDA error a RuntimeError.
template <class F>
void call_library(F&& f) {
  try {
    f();
  } catch (const rmsnorm::Error& e) {
    switch (e.code()) {
      case rmsnorm::Code::invalid_argument:
        TORCH_CHECK_VALUE(false, "rmsnorm: ", e.what());
      case rmsnorm::Code::unsupported:
        TORCH_CHECK_NOT_IMPLEMENTED(false, "rmsnorm: ", e.what());
      default:
        TORCH_CHECK(false, "rmsnorm (", rmsnorm::code_name(e.code()), "): ", e.what());
    }
  }
}

// Makes x's device current (so that torch allocates there) and gives its current stream.
struct DeviceContext {
#if defined(RMSNORM_TORCH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard;
#endif
  rmsnorm::Stream stream = nullptr;

  explicit DeviceContext(const Tensor& x) {
#if defined(RMSNORM_TORCH_CUDA)
    if (x.is_cuda()) {
      guard.emplace(x.device());
      stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
    }
#else
    (void)x;
#endif
  }
};

rmsnorm::Params params_of(double eps, double offset, rmsnorm::Cast cast) {
  rmsnorm::Params p;
  p.eps = eps;
  p.weight_offset = offset;
  p.cast = cast;
  p.check_pointers = false;  // torch already knows every tensor's device
  return p;
}

std::optional<rmsnorm::TensorView> weight_view(const std::optional<Tensor>& w) {
  if (!w) return std::nullopt;
  return rmsnorm::TensorView::vector(w->data_ptr(), to_dtype(*w, "weight"), lib_device(*w), w->numel());
}

// y = rms_norm(x) * (w + offset) into a fresh y, and rstd when `rstd_out` is given.
Tensor forward_into(const Tensor& x_in, const std::optional<Tensor>& weight, double eps, double offset,
                    c10::string_view cast_name, Tensor* rstd_out) {
  check_x(x_in);
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  DeviceContext ctx(x_in);

  Tensor x = x_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split);
  Tensor y = at::empty(x.sizes(), x.options().dtype(output_dtype(x, w, cast)));
  const rmsnorm::TensorView yv = *view_at(y, split);
  std::optional<rmsnorm::TensorView> rv;
  if (rstd_out) {
    const auto rstd_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    *rstd_out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(rstd_dtype));
    rv = rmsnorm::TensorView::vector(rstd_out->data_ptr(), to_dtype(*rstd_out, "rstd"), lib_device(x),
                                     rstd_out->numel());
  }
  call_library([&] { rmsnorm::forward(xv, weight_view(w), yv, params_of(eps, offset, cast), rv, ctx.stream); });
  return y;
}

// rmsnorm::rms_norm: the inference op (no rstd, no autograd).
Tensor rms_norm(const Tensor& x, const std::optional<Tensor>& weight, double eps, double offset,
                c10::string_view cast) {
  return forward_into(x, weight, eps, offset, cast, nullptr);
}

// rmsnorm::rms_norm_fwd: (y, rstd), the op that autograd wraps.
std::tuple<Tensor, Tensor> rms_norm_fwd(const Tensor& x, const std::optional<Tensor>& weight, double eps, double offset,
                                        c10::string_view cast) {
  Tensor rstd;
  Tensor y = forward_into(x, weight, eps, offset, cast, &rstd);
  return {y, rstd};
}

// rmsnorm::rms_norm_: x = rms_norm(x) * (w + offset) in place (a QK-norm on a slice of a
// fused QKV buffer, say). x must be a (batch, rows, cols) view: there is no copy to fall back on.
void rms_norm_(const Tensor& x, const std::optional<Tensor>& weight, double eps, double offset,
               c10::string_view cast_name) {
  check_x(x);
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x, offset);
  TORCH_CHECK_TYPE(output_dtype(x, w, cast) == x.scalar_type(),
                   "rmsnorm: rms_norm_ cannot write the float32 result of cast=\"llama\" with a float32 weight "
                   "into ",
                   x.scalar_type(), " x in place; use rms_norm");
  const auto split = find_split(x);
  TORCH_CHECK_VALUE(split.has_value(),
                    "rmsnorm: rms_norm_ needs x's last dimension contiguous and its leading "
                    "dimensions expressible as (batch, rows) with one stride each and no overlapping rows; got "
                    "shape ",
                    shape_str(x.sizes()), " strides ", shape_str(x.strides()));
  DeviceContext ctx(x);
  const rmsnorm::TensorView xv = *view_at(x, *split);
  call_library(
      [&] { rmsnorm::forward(xv, weight_view(w), xv, params_of(eps, offset, cast), std::nullopt, ctx.stream); });
}

// rmsnorm::rms_norm_bwd: (dx, dw) from dy, x and the forward's rstd (recomputed when None).
// dw has the weight's dtype, or is empty when there is no weight or want_dw is false.
std::tuple<Tensor, Tensor> rms_norm_bwd(const Tensor& dy_in, const Tensor& x_in, const std::optional<Tensor>& weight,
                                        const std::optional<Tensor>& rstd_in, double eps, double offset, bool want_dw) {
  check_x(x_in);
  check_same_device(dy_in, x_in, "dy");
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes(), "rmsnorm: dy has shape ", shape_str(dy_in.sizes()), " but x has ",
                    shape_str(x_in.sizes()));
  TORCH_CHECK_TYPE(dy_in.scalar_type() == x_in.scalar_type(), "rmsnorm: dy has dtype ", dy_in.scalar_type(),
                   " but x has ", x_in.scalar_type(), "; they must match");
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  std::optional<Tensor> rstd;
  if (rstd_in.has_value() && rstd_in->defined()) {
    check_same_device(*rstd_in, x_in, "rstd");
    const auto want = x_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK_TYPE(rstd_in->scalar_type() == want, "rmsnorm: rstd has dtype ", rstd_in->scalar_type(), "; expected ",
                     want);
    TORCH_CHECK_VALUE(rstd_in->sizes() == x_in.sizes().slice(0, x_in.dim() - 1), "rmsnorm: rstd has shape ",
                      shape_str(rstd_in->sizes()),
                      "; expected x.shape[:-1] = ", shape_str(x_in.sizes().slice(0, x_in.dim() - 1)));
    rstd = rstd_in->contiguous();
  }
  DeviceContext ctx(x_in);

  Tensor x = x_in, dy = dy_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split);
  const rmsnorm::TensorView dyv = input_view(dy, split);
  Tensor dx = at::empty(x.sizes(), x.options());
  const rmsnorm::TensorView dxv = *view_at(dx, split);
  const bool with_dw = want_dw && w.has_value();
  Tensor dw = with_dw ? at::empty({x.size(-1)}, w->options()) : at::empty({0}, x.options());
  if (x.numel() == 0) {  // no rows: nothing to normalise, and the weight gradient is a sum over none
    if (with_dw) dw.zero_();
    return {dx, dw};
  }
  std::optional<rmsnorm::TensorView> dwv;
  if (with_dw) dwv = rmsnorm::TensorView::vector(dw.data_ptr(), to_dtype(dw, "dw"), lib_device(dw), dw.numel());
  std::optional<rmsnorm::TensorView> rv;
  if (rstd)
    rv = rmsnorm::TensorView::vector(rstd->data_ptr(), to_dtype(*rstd, "rstd"), lib_device(*rstd), rstd->numel());

  const rmsnorm::Params params = params_of(eps, offset, rmsnorm::Cast::fp32);
  call_library([&] {
    const std::size_t bytes = rmsnorm::backward_workspace_size(xv, dwv, params);
    // Scratch from torch's caching allocator: no cudaMalloc, so CUDA-graph capture works.
    Tensor workspace = at::empty({static_cast<std::int64_t>(bytes)}, x.options().dtype(at::kByte));
    rmsnorm::backward(dyv, xv, weight_view(w), rv, dxv, dwv, params, bytes ? workspace.data_ptr() : nullptr, bytes,
                      ctx.stream);
  });
  return {dx, dw};
}

// ---------------------------------------------------------------------------------------
// The residual add (fused_add_forward) and its backward
// ---------------------------------------------------------------------------------------

// The residual, checked against x: x's shape and device; x's dtype, or float32 with 16-bit x.
void check_residual(const Tensor& residual, const Tensor& x, const char* name = "residual", const char* x_name = "x") {
  check_same_device(residual, x, name, x_name);
  TORCH_CHECK_VALUE(residual.sizes() == x.sizes(), "rmsnorm: ", name, " has shape ", shape_str(residual.sizes()),
                    " but ", x_name, " has ", shape_str(x.sizes()), "; they must match");
  const DType rt = to_dtype(residual, name), xt = to_dtype(x, x_name);
  TORCH_CHECK_TYPE(rt == xt || (rt == DType::f32 && (xt == DType::f16 || xt == DType::bf16)), "rmsnorm: ", name,
                   " has dtype ", residual.scalar_type(), " and ", x_name, " ", x.scalar_type(), "; the ", name,
                   " must have ", x_name, "'s dtype, or be float32 with float16/bfloat16 ", x_name);
}

rmsnorm::TensorView vector_view(const Tensor& t, const char* name) {
  return rmsnorm::TensorView::vector(t.data_ptr(), to_dtype(t, name), lib_device(t), t.numel());
}

// The quantised output's description; `scales` is filled in by the caller.
struct QuantArgs {
  rmsnorm::QuantScale kind = rmsnorm::QuantScale::per_row;
  at::ScalarType qdtype = at::kFloat8_e4m3fn;
  std::int64_t group_size = 128;
  bool column_major = false, pow2 = false;
  rmsnorm::QuantDivision division = rmsnorm::QuantDivision::exact;
  std::optional<Tensor> scale, scale_ub;  // the static scale; the cap
};

rmsnorm::QuantScale parse_scale_kind(c10::string_view kind) {
  if (kind == "static") return rmsnorm::QuantScale::static_tensor;
  if (kind == "row") return rmsnorm::QuantScale::per_row;
  if (kind == "group") return rmsnorm::QuantScale::per_group;
  TORCH_CHECK_VALUE(false, "rmsnorm: scale must be a tensor (static), \"row\" or \"group\", got \"", std::string(kind),
                    "\"");
}

rmsnorm::QuantDivision parse_division(c10::string_view division) {
  if (division == "exact") return rmsnorm::QuantDivision::exact;
  if (division == "reciprocal") return rmsnorm::QuantDivision::reciprocal;
  TORCH_CHECK_VALUE(false, "rmsnorm: division must be \"exact\" or \"reciprocal\", got \"", std::string(division),
                    "\"");
}

// A one-element float32 tensor on x's device (the static scale, scale_ub).
Tensor checked_scalar(const Tensor& t, const Tensor& x, const char* name) {
  check_same_device(t, x, name);
  TORCH_CHECK_VALUE(t.numel() == 1, "rmsnorm: ", name, " must have one element, got shape ", shape_str(t.sizes()));
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "rmsnorm: ", name, " has dtype ", t.scalar_type(),
                   "; expected float32");
  return t.contiguous();
}

// y = rms_norm(x + residual) (and residual_out = x + residual) into fresh tensors, or, with
// `quant`, q and its scales in place of y. rstd when `rstd_out` is given.
struct FusedOutputs {
  Tensor y, residual_out, rstd, scales;
};

FusedOutputs fused_forward(const Tensor& x_in, const std::optional<Tensor>& residual_in,
                           const std::optional<Tensor>& weight, double eps, double offset, c10::string_view cast_name,
                           const QuantArgs* quant, bool want_rstd) {
  check_x(x_in);
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  if (residual_in) check_residual(*residual_in, x_in);
  DeviceContext ctx(x_in);

  Tensor x = x_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split);
  FusedOutputs out;
  const at::ScalarType out_dtype = quant ? quant->qdtype : output_dtype(x, w, cast);
  out.y = at::empty(x.sizes(), x.options().dtype(out_dtype));
  const rmsnorm::TensorView yv = *view_at(out.y, split);
  std::optional<Tensor> residual;
  std::optional<rmsnorm::TensorView> rv, rov;
  if (residual_in) {
    residual = *residual_in;
    rv = input_view(*residual, split);
    out.residual_out = at::empty(x.sizes(), residual->options());
    rov = *view_at(out.residual_out, split);
  }
  std::optional<rmsnorm::TensorView> rstd_v;
  if (want_rstd) {
    const auto rstd_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    out.rstd = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(rstd_dtype));
    rstd_v = vector_view(out.rstd, "rstd");
  }
  rmsnorm::Quant q;
  Tensor static_scale, ub;
  if (quant) {
    q.kind = quant->kind;
    q.group_size = quant->group_size;
    q.column_major_scales = quant->column_major;
    q.pow2_scales = quant->pow2;
    q.division = quant->division;
    const auto lead = x.sizes().slice(0, x.dim() - 1);
    const std::int64_t rows = x.numel() / x.size(-1);
    if (quant->kind == rmsnorm::QuantScale::static_tensor) {
      TORCH_CHECK_VALUE(quant->scale.has_value(), "rmsnorm: a static scale needs the scale tensor");
      static_scale = checked_scalar(*quant->scale, x, "scale");
      q.scales = vector_view(static_scale, "scale");
    } else if (quant->kind == rmsnorm::QuantScale::per_row) {
      std::vector<std::int64_t> shape(lead.begin(), lead.end());
      shape.push_back(1);  // (..., 1): broadcasts against q, as vLLM's per-token scales
      out.scales = at::empty(shape, x.options().dtype(at::kFloat));
      q.scales = vector_view(out.scales, "scales");
    } else {
      TORCH_CHECK_VALUE(quant->group_size >= 1 && x.size(-1) % quant->group_size == 0,
                        "rmsnorm: group_size must divide x's last dimension (", std::to_string(x.size(-1)), "), got ",
                        std::to_string(quant->group_size));
      const std::int64_t groups = x.size(-1) / quant->group_size;
      std::vector<std::int64_t> shape(lead.begin(), lead.end());
      shape.push_back(groups);
      if (quant->column_major) {
        // (groups, rows) in memory, seen as (..., groups): each group's scales contiguous.
        const Tensor storage = at::empty({groups, rows}, x.options().dtype(at::kFloat));
        out.scales = storage.t().view(shape);
        q.scales = rmsnorm::TensorView::matrix(storage.data_ptr(), DType::f32, lib_device(x), groups, rows);
      } else {
        out.scales = at::empty(shape, x.options().dtype(at::kFloat));
        q.scales = rmsnorm::TensorView::matrix(out.scales.data_ptr(), DType::f32, lib_device(x), rows, groups);
      }
    }
    if (quant->scale_ub) {
      ub = checked_scalar(*quant->scale_ub, x, "scale_ub");
      q.scale_ub = vector_view(ub, "scale_ub");
    }
  }
  if (x.numel() == 0) return out;
  const rmsnorm::Params params = params_of(eps, offset, cast);
  call_library([&] {
    if (quant && rv)
      rmsnorm::fused_add_quant_forward(xv, *rv, weight_view(w), yv, *rov, q, params, rstd_v, ctx.stream);
    else if (quant)
      rmsnorm::quant_forward(xv, weight_view(w), yv, q, params, rstd_v, ctx.stream);
    else
      rmsnorm::fused_add_forward(xv, *rv, weight_view(w), yv, *rov, params, rstd_v, ctx.stream);
  });
  return out;
}

// rmsnorm::fused_add_rms_norm: (y, residual_out), the inference op.
std::tuple<Tensor, Tensor> fused_add_rms_norm(const Tensor& x, const Tensor& residual,
                                              const std::optional<Tensor>& weight, double eps, double offset,
                                              c10::string_view cast) {
  FusedOutputs o = fused_forward(x, residual, weight, eps, offset, cast, nullptr, false);
  return {o.y, o.residual_out};
}

// rmsnorm::fused_add_rms_norm_fwd: (y, residual_out, rstd), the op that autograd wraps.
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_fwd(const Tensor& x, const Tensor& residual,
                                                          const std::optional<Tensor>& weight, double eps,
                                                          double offset, c10::string_view cast) {
  FusedOutputs o = fused_forward(x, residual, weight, eps, offset, cast, nullptr, true);
  return {o.y, o.residual_out, o.rstd};
}

// rmsnorm::fused_add_rms_norm_: vLLM's fused_add_rms_norm, in place: residual = x + residual,
// x = rms_norm(residual) * (w + offset). Both must be (batch, rows) views (no copy fallback).
void fused_add_rms_norm_(const Tensor& x, const Tensor& residual, const std::optional<Tensor>& weight, double eps,
                         double offset, c10::string_view cast_name) {
  check_x(x);
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x, offset);
  check_residual(residual, x);
  TORCH_CHECK_TYPE(output_dtype(x, w, cast) == x.scalar_type(),
                   "rmsnorm: fused_add_rms_norm_ cannot write the float32 result of cast=\"llama\" with a float32 "
                   "weight into ",
                   x.scalar_type(), " x in place; use fused_add_rms_norm");
  const auto split = find_split(x);
  const auto view_or_fail = [&](const Tensor& t, const char* name) {
    const std::optional<rmsnorm::TensorView> v = split ? view_at(t, *split) : std::nullopt;
    TORCH_CHECK_VALUE(v.has_value(), "rmsnorm: fused_add_rms_norm_ needs ", name,
                      "'s last dimension contiguous and its leading dimensions expressible as x's (batch, rows) "
                      "with one stride each and no overlapping rows; got shape ",
                      shape_str(t.sizes()), " strides ", shape_str(t.strides()));
    return *v;
  };
  const rmsnorm::TensorView xv = view_or_fail(x, "x"), rv = view_or_fail(residual, "residual");
  if (x.numel() == 0) return;
  DeviceContext ctx(x);
  call_library([&] {
    rmsnorm::fused_add_forward(xv, rv, weight_view(w), xv, rv, params_of(eps, offset, cast), std::nullopt, ctx.stream);
  });
}

// rmsnorm::fused_add_rms_norm_bwd: (dx, dr, dw) from dy, dr_out (the gradient at
// residual_out), residual_out and the forward's rstd. dx has dx_dtype (x's), dr the
// residual's dtype when want_dr (else empty: dr is dx), dw the weight's (empty without).
std::tuple<Tensor, Tensor, Tensor> fused_add_rms_norm_bwd(const Tensor& dy_in, const Tensor& dr_out_in,
                                                          const Tensor& r_out_in, const std::optional<Tensor>& weight,
                                                          const std::optional<Tensor>& rstd_in, double eps,
                                                          double offset, bool want_dw, at::ScalarType dx_dtype,
                                                          bool want_dr) {
  check_x(r_out_in, "residual_out");
  check_same_device(dy_in, r_out_in, "dy");
  check_same_device(dr_out_in, r_out_in, "dr_out");
  TORCH_CHECK_VALUE(dy_in.sizes() == r_out_in.sizes() && dr_out_in.sizes() == r_out_in.sizes(),
                    "rmsnorm: dy has shape ", shape_str(dy_in.sizes()), " and dr_out ", shape_str(dr_out_in.sizes()),
                    " but residual_out has ", shape_str(r_out_in.sizes()));
  TORCH_CHECK_TYPE(dy_in.scalar_type() == dx_dtype, "rmsnorm: dy has dtype ", dy_in.scalar_type(), "; expected ",
                   dx_dtype);
  TORCH_CHECK_TYPE(dr_out_in.scalar_type() == r_out_in.scalar_type(), "rmsnorm: dr_out has dtype ",
                   dr_out_in.scalar_type(), " but residual_out ", r_out_in.scalar_type());
  const Tensor x_like = at::empty({0}, dy_in.options());  // x's dtype and device, for the weight's checks
  std::optional<Tensor> w;
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK_VALUE(weight->dim() == 1 && weight->size(0) == r_out_in.size(-1), "rmsnorm: weight must have shape (",
                      std::to_string(r_out_in.size(-1)), ",), got ", shape_str(weight->sizes()));
    w = weight->contiguous();
  } else {
    TORCH_CHECK_VALUE(offset == 0.0, "rmsnorm: offset must be 0 without a weight, got ", std::to_string(offset));
  }
  std::optional<Tensor> rstd;
  if (rstd_in.has_value() && rstd_in->defined()) rstd = rstd_in->contiguous();
  DeviceContext ctx(r_out_in);

  Tensor r_out = r_out_in, dy = dy_in, dr_out = dr_out_in;
  const std::int64_t split = find_split(r_out).value_or(0);
  const rmsnorm::TensorView rv = input_view(r_out, split), dyv = input_view(dy, split),
                            drov = input_view(dr_out, split);
  Tensor dx = at::empty(r_out.sizes(), r_out.options().dtype(dx_dtype));
  Tensor dr = want_dr ? at::empty(r_out.sizes(), r_out.options()) : at::empty({0}, r_out.options());
  const bool with_dw = want_dw && w.has_value();
  Tensor dw = with_dw ? at::empty({r_out.size(-1)}, w->options()) : at::empty({0}, r_out.options());
  if (r_out.numel() == 0) {
    if (with_dw) dw.zero_();
    return {dx, dr, dw};
  }
  std::optional<rmsnorm::TensorView> drv, dwv, rstd_v;
  if (want_dr) drv = *view_at(dr, split);
  if (with_dw) dwv = vector_view(dw, "dw");
  if (rstd) rstd_v = vector_view(*rstd, "rstd");
  const rmsnorm::Params params = params_of(eps, offset, rmsnorm::Cast::fp32);
  call_library([&] {
    const std::size_t bytes = rmsnorm::backward_workspace_size(rv, dwv, params);
    Tensor workspace = at::empty({static_cast<std::int64_t>(bytes)}, r_out.options().dtype(at::kByte));
    rmsnorm::fused_add_backward(dyv, drov, rv, weight_view(w), rstd_v, *view_at(dx, split), drv, dwv, params,
                                bytes ? workspace.data_ptr() : nullptr, bytes, ctx.stream);
  });
  return {dx, dr, dw};
}

// ---------------------------------------------------------------------------------------
// The ranks' sum with the residual add (fused_allreduce_add_forward)
// ---------------------------------------------------------------------------------------

// Whether b is laid out as a: the same stride in every dimension longer than 1 (a dimension
// of size 1 addresses nothing, and torch may give it any stride).
bool same_layout(const Tensor& a, const Tensor& b) {
  for (std::int64_t d = 0; d < a.dim(); ++d)
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  return true;
}

// partials[k] (k >= 1) against partials[0]: one dtype, shape and layout, as the library
// requires of the ranks' buffers. On CUDA a peer's partial may be memory of another device
// mapped into this one (symmetric memory, CUDA IPC, peer access); that this device can read
// it is the caller's contract, so only its being CUDA memory is checked.
void check_partial(const Tensor& p, const Tensor& x0, const std::string& name) {
  if (x0.is_cuda()) {
    TORCH_CHECK_VALUE(p.is_cuda(), "rmsnorm: ", name, " is on ", p.device(), " but partials[0] is on ", x0.device(),
                      "; with CUDA partials every partial must be a CUDA tensor");
  } else {
    check_same_device(p, x0, name.c_str(), "partials[0]");
  }
  TORCH_CHECK_TYPE(p.scalar_type() == x0.scalar_type(), "rmsnorm: ", name, " has dtype ", p.scalar_type(),
                   " but partials[0] has ", x0.scalar_type(), "; all partials must have one dtype");
  TORCH_CHECK_VALUE(p.sizes() == x0.sizes(), "rmsnorm: ", name, " has shape ", shape_str(p.sizes()),
                    " but partials[0] has ", shape_str(x0.sizes()), "; all partials must have one shape");
  TORCH_CHECK_VALUE(same_layout(x0, p), "rmsnorm: ", name, " has strides ", shape_str(p.strides()),
                    " but partials[0] has ", shape_str(x0.strides()), "; all partials must share one layout");
}

// rmsnorm::fused_allreduce_add_rms_norm: (y, residual_out) from the ranks' partial outputs,
// read directly: s = partials[0] + ... + partials[count - 1] in fp32 in this order,
// residual_out = s + residual rounded once to the residual's dtype, y = rms_norm(residual_out)
// * (w + offset). The barriers around the call are the caller's (rmsnorm/allreduce.py).
std::tuple<Tensor, Tensor> fused_allreduce_add_rms_norm(at::TensorList partials_in, const Tensor& residual_in,
                                                        const std::optional<Tensor>& weight, double eps, double offset,
                                                        c10::string_view cast_name) {
  const std::size_t count = partials_in.size();
  TORCH_CHECK_VALUE(count >= 1 && count <= rmsnorm::kMaxAllReduceRanks, "rmsnorm: partials: expected 1 to ",
                    std::to_string(rmsnorm::kMaxAllReduceRanks), " tensors, got ", std::to_string(count));
  const Tensor& x0 = partials_in[0];
  check_x(x0, "partials[0]");
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x0, offset, "partials[0]");
  check_residual(residual_in, x0, "residual", "partials[0]");
  for (std::size_t k = 1; k < count; ++k) check_partial(partials_in[k], x0, "partials[" + std::to_string(k) + "]");
  DeviceContext ctx(x0);

  const std::int64_t split = find_split(x0).value_or(0);
  // Partials that are no (batch, rows) view are read from contiguous copies, all of them
  // (they share one layout, so either all are views or none is). The copies are made on
  // partials[0]'s device, where the kernel runs, by copy_, which orders a copy from another
  // device with this device's stream.
  const bool copy = !view_at(x0, split).has_value();
  std::vector<Tensor> partials(partials_in.begin(), partials_in.end());
  std::vector<rmsnorm::TensorView> views;
  views.reserve(count);
  for (Tensor& p : partials) {
    if (copy) p = at::empty(x0.sizes(), x0.options()).copy_(p);
    rmsnorm::TensorView v = *view_at(p, split);
    v.device = lib_device(x0);  // read from x0's device, whichever device holds the memory
    views.push_back(v);
  }
  Tensor residual = residual_in;
  const rmsnorm::TensorView rv = input_view(residual, split);
  Tensor y = at::empty(x0.sizes(), x0.options().dtype(output_dtype(x0, w, cast)));
  Tensor residual_out = at::empty(x0.sizes(), residual.options());
  if (x0.numel() == 0) return {y, residual_out};
  const rmsnorm::TensorView yv = *view_at(y, split), rov = *view_at(residual_out, split);
  call_library([&] {
    rmsnorm::fused_allreduce_add_forward(views.data(), count, rv, weight_view(w), yv, rov, params_of(eps, offset, cast),
                                         std::nullopt, ctx.stream);
  });
  return {y, residual_out};
}

// ---------------------------------------------------------------------------------------
// The quantised output (quant_forward, fused_add_quant_forward)
// ---------------------------------------------------------------------------------------

// rmsnorm::rms_norm_quant: (q, scales, residual_out). scales is empty for a static scale
// (the caller has it), residual_out empty without a residual.
std::tuple<Tensor, Tensor, Tensor> rms_norm_quant(const Tensor& x, const std::optional<Tensor>& weight,
                                                  const std::optional<Tensor>& residual, double eps, double offset,
                                                  c10::string_view cast, at::ScalarType qdtype,
                                                  c10::string_view scale_kind, const std::optional<Tensor>& scale,
                                                  int64_t group_size, const std::optional<Tensor>& scale_ub,
                                                  bool column_major_scales, bool pow2_scales,
                                                  c10::string_view division) {
  TORCH_CHECK_TYPE(qdtype == at::kFloat8_e4m3fn || qdtype == at::kChar, "rmsnorm: qdtype must be ",
                   "torch.float8_e4m3fn or torch.int8, got ", qdtype);
  QuantArgs q;
  q.kind = parse_scale_kind(scale_kind);
  q.qdtype = qdtype;
  q.group_size = group_size;
  q.column_major = column_major_scales;
  q.pow2 = pow2_scales;
  q.division = parse_division(division);
  if (scale.has_value() && scale->defined()) q.scale = *scale;
  if (scale_ub.has_value() && scale_ub->defined()) q.scale_ub = *scale_ub;
  const std::optional<Tensor> r =
      residual.has_value() && residual->defined() ? std::optional<Tensor>(*residual) : std::nullopt;
  FusedOutputs o = fused_forward(x, r, weight, eps, offset, cast, &q, false);
  const Tensor none = at::empty({0}, x.options().dtype(at::kFloat));
  return {o.y, o.scales.defined() ? o.scales : none,
          o.residual_out.defined() ? o.residual_out : at::empty({0}, x.options())};
}

}  // namespace

// The schemas, declared once. `Tensor(a!)` marks the argument that rms_norm_ writes.
TORCH_LIBRARY(rmsnorm, m) {
  // The fake (meta) kernels are registered by this Python module; torch imports it when it
  // needs them (torch.compile) and the library was loaded some other way.
  m.set_python_module("rmsnorm._ops");
  m.def("rms_norm(Tensor x, Tensor? weight, float eps, float offset, str cast) -> Tensor");
  m.def("rms_norm_fwd(Tensor x, Tensor? weight, float eps, float offset, str cast) -> (Tensor y, Tensor rstd)");
  m.def(
      "rms_norm_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor? rstd, float eps, float offset, bool want_dw)"
      " -> (Tensor dx, Tensor dw)");
  m.def("rms_norm_(Tensor(a!) x, Tensor? weight, float eps, float offset, str cast) -> ()");
  m.def(
      "fused_add_rms_norm(Tensor x, Tensor residual, Tensor? weight, float eps, float offset, str cast)"
      " -> (Tensor y, Tensor residual_out)");
  m.def(
      "fused_add_rms_norm_fwd(Tensor x, Tensor residual, Tensor? weight, float eps, float offset, str cast)"
      " -> (Tensor y, Tensor residual_out, Tensor rstd)");
  m.def(
      "fused_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor? weight, float eps, float offset, str cast)"
      " -> ()");
  m.def(
      "fused_add_rms_norm_bwd(Tensor dy, Tensor dr_out, Tensor residual_out, Tensor? weight, Tensor? rstd, "
      "float eps, float offset, bool want_dw, ScalarType dx_dtype, bool want_dr) -> (Tensor dx, Tensor dr, Tensor dw)");
  m.def(
      "rms_norm_quant(Tensor x, Tensor? weight, Tensor? residual, float eps, float offset, str cast, "
      "ScalarType qdtype, str scale_kind, Tensor? scale, int group_size, Tensor? scale_ub, "
      "bool column_major_scales, bool pow2_scales, str division=\"exact\") -> "
      "(Tensor q, Tensor scales, Tensor residual_out)");
  m.def(
      "fused_allreduce_add_rms_norm(Tensor[] partials, Tensor residual, Tensor? weight, float eps, float offset, "
      "str cast) -> (Tensor y, Tensor residual_out)");
}

// One implementation serves both backends: the library routes on the views' device.
#define RMSNORM_REGISTER_IMPLS(m)                            \
  m.impl("rms_norm", &rms_norm);                             \
  m.impl("rms_norm_fwd", &rms_norm_fwd);                     \
  m.impl("rms_norm_bwd", &rms_norm_bwd);                     \
  m.impl("rms_norm_", &rms_norm_);                           \
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);         \
  m.impl("fused_add_rms_norm_fwd", &fused_add_rms_norm_fwd); \
  m.impl("fused_add_rms_norm_", &fused_add_rms_norm_);       \
  m.impl("fused_add_rms_norm_bwd", &fused_add_rms_norm_bwd); \
  m.impl("rms_norm_quant", &rms_norm_quant);                 \
  m.impl("fused_allreduce_add_rms_norm", &fused_allreduce_add_rms_norm)

// ---------------------------------------------------------------------------------------
// Rows split across ranks (rmsnorm.h, "Rows split across ranks")
// ---------------------------------------------------------------------------------------
//
// The library's steps as ops; the all-reduces between them are the caller's
// (rmsnorm/distributed.py: torch.distributed on a process group, or DTensor's own
// redistribution of a Partial sum). Their fake kernels and autograd live in
// rmsnorm/_sharded_ops.py.

namespace {

at::ScalarType acc_dtype(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// A per-row input (sums, dots, rstd): shape x.shape[:-1], f32 (f64 for f64 x), on x's device;
// returned contiguous.
Tensor checked_row_tensor(const Tensor& t, const Tensor& x, const char* name) {
  check_same_device(t, x, name);
  TORCH_CHECK_TYPE(t.scalar_type() == acc_dtype(x), "rmsnorm: ", name, " has dtype ", t.scalar_type(), "; expected ",
                   acc_dtype(x));
  TORCH_CHECK_VALUE(t.sizes() == x.sizes().slice(0, x.dim() - 1), "rmsnorm: ", name, " has shape ",
                    shape_str(t.sizes()), "; expected x.shape[:-1] = ", shape_str(x.sizes().slice(0, x.dim() - 1)));
  return t.contiguous();
}

rmsnorm::TensorView row_view(const Tensor& t) {
  return rmsnorm::TensorView::vector(t.data_ptr(), to_dtype(t, "sums"), lib_device(t), t.numel());
}

Tensor new_row_tensor(const Tensor& x) {
  return at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(acc_dtype(x)));
}

void check_full_cols(int64_t full_cols, const Tensor& x) {
  TORCH_CHECK_VALUE(full_cols >= x.size(-1),
                    "rmsnorm: full_cols (the whole row's length) must be >= x's last "
                    "dimension (",
                    std::to_string(x.size(-1)), "), got ", std::to_string(full_cols));
}

// rmsnorm::partial_sum_squares: sums = (x.float() ** 2).sum(-1) in the library's fixed order.
Tensor partial_sum_squares(const Tensor& x_in) {
  check_x(x_in);
  DeviceContext ctx(x_in);
  Tensor x = x_in;
  const rmsnorm::TensorView xv = input_view(x, find_split(x).value_or(0));
  Tensor sums = new_row_tensor(x);
  const rmsnorm::Params params = params_of(1e-6, 0.0, rmsnorm::Cast::fp32);
  call_library([&] { rmsnorm::partial_sum_squares(xv, row_view(sums), params, ctx.stream); });
  return sums;
}

// rmsnorm::rms_norm_from_sums: (y, rstd) of a shard of each row, given the whole rows' sums of
// squares (reduced over the shards) and their length.
std::tuple<Tensor, Tensor> rms_norm_from_sums(const Tensor& x_in, const std::optional<Tensor>& weight,
                                              const Tensor& sums_in, int64_t full_cols, double eps, double offset,
                                              c10::string_view cast_name) {
  check_x(x_in);
  const rmsnorm::Cast cast = parse_cast(cast_name);
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  const Tensor sums = checked_row_tensor(sums_in, x_in, "sums");
  check_full_cols(full_cols, x_in);
  DeviceContext ctx(x_in);
  Tensor x = x_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split);
  Tensor y = at::empty(x.sizes(), x.options().dtype(output_dtype(x, w, cast)));
  Tensor rstd = new_row_tensor(x);
  call_library([&] {
    rmsnorm::forward_from_sums(xv, weight_view(w), *view_at(y, split), row_view(sums), full_cols,
                               params_of(eps, offset, cast), row_view(rstd), ctx.stream);
  });
  return {y, rstd};
}

// rmsnorm::partial_grad_dot: dots = (dy * (w + offset) * x).sum(-1) over the shard, in fp32.
Tensor partial_grad_dot(const Tensor& dy_in, const Tensor& x_in, const std::optional<Tensor>& weight, double offset) {
  check_x(x_in);
  check_same_device(dy_in, x_in, "dy");
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes(), "rmsnorm: dy has shape ", shape_str(dy_in.sizes()), " but x has ",
                    shape_str(x_in.sizes()));
  TORCH_CHECK_TYPE(dy_in.scalar_type() == x_in.scalar_type(), "rmsnorm: dy has dtype ", dy_in.scalar_type(),
                   " but x has ", x_in.scalar_type(), "; they must match");
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  DeviceContext ctx(x_in);
  Tensor x = x_in, dy = dy_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split), dyv = input_view(dy, split);
  Tensor dots = new_row_tensor(x);
  call_library([&] {
    rmsnorm::partial_grad_dot(dyv, xv, weight_view(w), row_view(dots), params_of(1e-6, offset, rmsnorm::Cast::fp32),
                              ctx.stream);
  });
  return dots;
}

// rmsnorm::rms_norm_from_sums_bwd: (dx, dw) of a shard given the forward's rstd and the whole
// rows' dots; dw is this shard's columns (empty when there is no weight or want_dw is false).
std::tuple<Tensor, Tensor> rms_norm_from_sums_bwd(const Tensor& dy_in, const Tensor& x_in,
                                                  const std::optional<Tensor>& weight, const Tensor& rstd_in,
                                                  const Tensor& dots_in, int64_t full_cols, double offset,
                                                  bool want_dw) {
  check_x(x_in);
  check_same_device(dy_in, x_in, "dy");
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes(), "rmsnorm: dy has shape ", shape_str(dy_in.sizes()), " but x has ",
                    shape_str(x_in.sizes()));
  TORCH_CHECK_TYPE(dy_in.scalar_type() == x_in.scalar_type(), "rmsnorm: dy has dtype ", dy_in.scalar_type(),
                   " but x has ", x_in.scalar_type(), "; they must match");
  const std::optional<Tensor> w = checked_weight(weight, x_in, offset);
  const Tensor rstd = checked_row_tensor(rstd_in, x_in, "rstd");
  const Tensor dots = checked_row_tensor(dots_in, x_in, "dots");
  check_full_cols(full_cols, x_in);
  DeviceContext ctx(x_in);
  Tensor x = x_in, dy = dy_in;
  const std::int64_t split = find_split(x).value_or(0);
  const rmsnorm::TensorView xv = input_view(x, split), dyv = input_view(dy, split);
  Tensor dx = at::empty(x.sizes(), x.options());
  const bool with_dw = want_dw && w.has_value();
  Tensor dw = with_dw ? at::empty({x.size(-1)}, w->options()) : at::empty({0}, x.options());
  std::optional<rmsnorm::TensorView> dwv;
  if (with_dw) dwv = rmsnorm::TensorView::vector(dw.data_ptr(), to_dtype(dw, "dw"), lib_device(dw), dw.numel());
  const rmsnorm::Params params = params_of(1e-6, offset, rmsnorm::Cast::fp32);
  call_library([&] {
    const std::size_t bytes = rmsnorm::backward_workspace_size(xv, dwv, params);
    Tensor workspace = at::empty({static_cast<std::int64_t>(bytes)}, x.options().dtype(at::kByte));
    rmsnorm::backward_from_sums(dyv, xv, weight_view(w), row_view(rstd), row_view(dots), full_cols, *view_at(dx, split),
                                dwv, params, bytes ? workspace.data_ptr() : nullptr, bytes, ctx.stream);
  });
  return {dx, dw};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(rmsnorm, m) {
  m.set_python_module("rmsnorm._sharded_ops");
  m.def("partial_sum_squares(Tensor x) -> Tensor sums");
  m.def(
      "rms_norm_from_sums(Tensor x, Tensor? weight, Tensor sums, int full_cols, float eps, float offset, str cast)"
      " -> (Tensor y, Tensor rstd)");
  m.def("partial_grad_dot(Tensor dy, Tensor x, Tensor? weight, float offset) -> Tensor dots");
  m.def(
      "rms_norm_from_sums_bwd(Tensor dy, Tensor x, Tensor? weight, Tensor rstd, Tensor dots, int full_cols,"
      " float offset, bool want_dw) -> (Tensor dx, Tensor dw)");
}

#define RMSNORM_REGISTER_SHARDED_IMPLS(m)              \
  m.impl("partial_sum_squares", &partial_sum_squares); \
  m.impl("rms_norm_from_sums", &rms_norm_from_sums);   \
  m.impl("partial_grad_dot", &partial_grad_dot);       \
  m.impl("rms_norm_from_sums_bwd", &rms_norm_from_sums_bwd)

// Every op's kernels, once per backend.
TORCH_LIBRARY_IMPL(rmsnorm, CPU, m) {
  RMSNORM_REGISTER_IMPLS(m);
  RMSNORM_REGISTER_SHARDED_IMPLS(m);
}

#if defined(RMSNORM_TORCH_CUDA)
TORCH_LIBRARY_IMPL(rmsnorm, CUDA, m) {
  RMSNORM_REGISTER_IMPLS(m);
  RMSNORM_REGISTER_SHARDED_IMPLS(m);
}
#endif
