// The public entry points: validate once, then route to a backend.
#include <string>

#include "problem.h"
#include "rmsnorm/rmsnorm.h"
#include "sharded_problem.h"

#ifndef RMSNORM_VERSION_STRING
#define RMSNORM_VERSION_STRING "0.1.0"
#endif

namespace rmsnorm {
namespace detail {
// Runs f, turning any exception into a Status.
template <class F>
Status to_status(F&& f) noexcept {
  try {
    f();
    return {};
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::exception& e) {
    return {Code::internal, e.what()};
  } catch (...) {
    return {Code::internal, "unknown exception"};
  }
}
}  // namespace detail

TensorView TensorView::matrix(void* data, DType dtype, Device device, std::int64_t rows, std::int64_t cols,
                              std::int64_t row_stride) noexcept {
  const std::int64_t rs = row_stride < 0 ? cols : row_stride;
  return TensorView{data, dtype, device, 1, rows, cols, rows * rs, rs};
}

TensorView TensorView::batched(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t rows,
                               std::int64_t cols, std::int64_t batch_stride, std::int64_t row_stride) noexcept {
  return TensorView{data, dtype, device, batch, rows, cols, batch_stride, row_stride};
}

TensorView TensorView::vector(void* data, DType dtype, Device device, std::int64_t n) noexcept {
  return TensorView{data, dtype, device, 1, 1, n, n, n};
}

const char* strategy_name(Strategy s) noexcept {
  switch (s) {
    case Strategy::automatic:
      return "auto";
    case Strategy::warp_rows:
      return "warp_rows";
    case Strategy::block_row:
      return "block_row";
    case Strategy::long_row:
      return "long_row";
    case Strategy::cluster_row:
      return "cluster_row";
  }
  return "unknown";
}

Strategy parse_strategy(const std::string& s) {
  if (s == "auto" || s == "automatic") return Strategy::automatic;
  if (s == "warp_rows") return Strategy::warp_rows;
  if (s == "block_row") return Strategy::block_row;
  if (s == "long_row") return Strategy::long_row;
  if (s == "cluster_row") return Strategy::cluster_row;
  throw Error(Code::invalid_argument,
              "strategy: unknown '" + s + "' (expected auto, warp_rows, block_row, long_row or cluster_row)");
}

const char* split_few_rows_name(SplitFewRows s) noexcept {
  switch (s) {
    case SplitFewRows::automatic:
      return "auto";
    case SplitFewRows::off:
      return "off";
    case SplitFewRows::on:
      return "on";
  }
  return "unknown";
}

const char* code_name(Code c) noexcept {
  switch (c) {
    case Code::ok:
      return "ok";
    case Code::invalid_argument:
      return "invalid_argument";
    case Code::unsupported:
      return "unsupported";
    case Code::cuda_error:
      return "cuda_error";
    case Code::internal:
      return "internal";
  }
  return "unknown";
}

void forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y, const Params& params,
             const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p = detail::validate_forward(x, weight, y, params, rstd);
  if (p.total_rows() == 0) return;
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_forward(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_forward(p, detail::plan_problem(p, params.strategy, detail::cuda_cc_major(x.device.index)),
                       x.device.index, stream);
#else
  (void)stream;
#endif
}

Status forward_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                      const Params& params, const std::optional<TensorView>& rstd, Stream stream) noexcept {
  return detail::to_status([&] { forward(x, weight, y, params, rstd, stream); });
}

std::size_t backward_workspace_size(const TensorView& x, const std::optional<TensorView>& dw, const Params& params) {
  (void)params;
  if (!dw || x.total_rows() <= 0 || x.cols <= 0) return 0;
  if (x.device.kind == DeviceKind::cpu) return detail::cpu_backward_workspace(x.total_rows(), x.cols, true, x.dtype);
#if defined(RMSNORM_HAVE_CUDA)
  return detail::cuda_backward_workspace(x.total_rows(), x.cols, x.device.index);
#else
  throw Error(Code::unsupported, "x: a CUDA view, but this build of rmsnorm has no CUDA backend");
#endif
}

void backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
              const std::optional<TensorView>& rstd, const TensorView& dx, const std::optional<TensorView>& dw,
              const Params& params, void* workspace, std::size_t workspace_bytes, Stream stream) {
  detail::BackwardProblem p = detail::validate_backward(dy, x, weight, rstd, dx, dw, params);
  const std::size_t required = backward_workspace_size(x, dw, params);
  if (workspace_bytes < required)
    throw Error(Code::invalid_argument, "workspace: needs " + std::to_string(required) +
                                            " bytes (see "
                                            "backward_workspace_size), got " +
                                            std::to_string(workspace_bytes));
  if (required > 0 && workspace == nullptr) throw Error(Code::invalid_argument, "workspace: data is null");
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  // Zero rows still define dw (a sum over nothing: zeros), so the backends run.
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_backward(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_backward(p, detail::plan_backward(p, params.strategy, detail::cuda_cc_major(x.device.index)),
                        x.device.index, stream);
#else
  (void)stream;
#endif
}

Status backward_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                       const std::optional<TensorView>& rstd, const TensorView& dx, const std::optional<TensorView>& dw,
                       const Params& params, void* workspace, std::size_t workspace_bytes, Stream stream) noexcept {
  return detail::to_status([&] { backward(dy, x, weight, rstd, dx, dw, params, workspace, workspace_bytes, stream); });
}

// ---------------------------------------------------------------------------------------
// The fused forms: one problem each, served by the backends' row loops with a prologue (the
// residual add) or an epilogue (the quantised store)
// ---------------------------------------------------------------------------------------

namespace {

// Runs a validated fused forward problem: on the CPU, or on CUDA once its kernels serve it.
void run_fused_forward(const detail::ForwardProblem& p, const TensorView& x, const Params& params, Stream stream,
                       const char* op) {
  if (p.total_rows() == 0) return;
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_forward(p);
    return;
  }
  const bool served = (!p.residual || detail::kCudaResidualAdd) && (!p.quantize || detail::kCudaQuantize);
  if (!served) throw Error(Code::unsupported, std::string(op) + ": not yet implemented on CUDA");
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_forward(p, detail::plan_problem(p, params.strategy, detail::cuda_cc_major(x.device.index)),
                       x.device.index, stream);
#else
  (void)params;
  (void)stream;
#endif
}

}  // namespace

void fused_add_forward(const TensorView& x, const TensorView& residual, const std::optional<TensorView>& weight,
                       const TensorView& y, const TensorView& residual_out, const Params& params,
                       const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p =
      detail::validate_fused_forward(x, &residual, &residual_out, weight, y, nullptr, params, rstd);
  run_fused_forward(p, x, params, stream, "fused_add_forward");
}

Status fused_add_forward_status(const TensorView& x, const TensorView& residual,
                                const std::optional<TensorView>& weight, const TensorView& y,
                                const TensorView& residual_out, const Params& params,
                                const std::optional<TensorView>& rstd, Stream stream) noexcept {
  return detail::to_status([&] { fused_add_forward(x, residual, weight, y, residual_out, params, rstd, stream); });
}

void fused_allreduce_add_forward(const TensorView* partials, std::size_t count, const TensorView& residual,
                                 const std::optional<TensorView>& weight, const TensorView& y,
                                 const TensorView& residual_out, const Params& params,
                                 const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p =
      detail::validate_allreduce_add_forward(partials, count, residual, residual_out, weight, y, params, rstd);
  // One rank's sum is its partial: the residual add's kernels serve it wherever they run.
  if (p.ranks > 1 && partials[0].device.kind == DeviceKind::cuda && !detail::kCudaRanksSum)
    throw Error(Code::unsupported,
                "partials: a sum over " + std::to_string(p.ranks) +
                    " ranks is not yet implemented on CUDA (one rank is; the CPU backend serves any count)");
  run_fused_forward(p, partials[0], params, stream, "fused_allreduce_add_forward");
}

Status fused_allreduce_add_forward_status(const TensorView* partials, std::size_t count, const TensorView& residual,
                                          const std::optional<TensorView>& weight, const TensorView& y,
                                          const TensorView& residual_out, const Params& params,
                                          const std::optional<TensorView>& rstd, Stream stream) noexcept {
  return detail::to_status(
      [&] { fused_allreduce_add_forward(partials, count, residual, weight, y, residual_out, params, rstd, stream); });
}

void quant_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& q,
                   const Quant& quant, const Params& params, const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p = detail::validate_fused_forward(x, nullptr, nullptr, weight, q, &quant, params, rstd);
  run_fused_forward(p, x, params, stream, "quant_forward");
}

Status quant_forward_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& q,
                            const Quant& quant, const Params& params, const std::optional<TensorView>& rstd,
                            Stream stream) noexcept {
  return detail::to_status([&] { quant_forward(x, weight, q, quant, params, rstd, stream); });
}

void fused_add_quant_forward(const TensorView& x, const TensorView& residual, const std::optional<TensorView>& weight,
                             const TensorView& q, const TensorView& residual_out, const Quant& quant,
                             const Params& params, const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p =
      detail::validate_fused_forward(x, &residual, &residual_out, weight, q, &quant, params, rstd);
  run_fused_forward(p, x, params, stream, "fused_add_quant_forward");
}

Status fused_add_quant_forward_status(const TensorView& x, const TensorView& residual,
                                      const std::optional<TensorView>& weight, const TensorView& q,
                                      const TensorView& residual_out, const Quant& quant, const Params& params,
                                      const std::optional<TensorView>& rstd, Stream stream) noexcept {
  return detail::to_status(
      [&] { fused_add_quant_forward(x, residual, weight, q, residual_out, quant, params, rstd, stream); });
}

void fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                        const std::optional<TensorView>& weight, const std::optional<TensorView>& rstd,
                        const TensorView& dx, const std::optional<TensorView>& dr, const std::optional<TensorView>& dw,
                        const Params& params, void* workspace, std::size_t workspace_bytes, Stream stream) {
  detail::BackwardProblem p = detail::validate_fused_add_backward(dy, dr_out, r_out, weight, rstd, dx, dr, dw, params);
  const std::size_t required = backward_workspace_size(r_out, dw, params);
  if (workspace_bytes < required)
    throw Error(Code::invalid_argument, "workspace: needs " + std::to_string(required) +
                                            " bytes (see backward_workspace_size of r_out), got " +
                                            std::to_string(workspace_bytes));
  if (required > 0 && workspace == nullptr) throw Error(Code::invalid_argument, "workspace: data is null");
  p.workspace = workspace;
  p.workspace_bytes = workspace_bytes;
  if (r_out.device.kind == DeviceKind::cpu) {
    detail::cpu_backward(p);
    return;
  }
  if (!detail::kCudaResidualBackward) throw Error(Code::unsupported, "fused_add_backward: not yet implemented on CUDA");
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_backward(p, detail::plan_backward(p, params.strategy, detail::cuda_cc_major(r_out.device.index)),
                        r_out.device.index, stream);
#else
  (void)stream;
#endif
}

Status fused_add_backward_status(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                 const std::optional<TensorView>& weight, const std::optional<TensorView>& rstd,
                                 const TensorView& dx, const std::optional<TensorView>& dr,
                                 const std::optional<TensorView>& dw, const Params& params, void* workspace,
                                 std::size_t workspace_bytes, Stream stream) noexcept {
  return detail::to_status([&] {
    fused_add_backward(dy, dr_out, r_out, weight, rstd, dx, dr, dw, params, workspace, workspace_bytes, stream);
  });
}

const char* quant_scale_name(QuantScale k) noexcept {
  switch (k) {
    case QuantScale::static_tensor:
      return "static";
    case QuantScale::per_row:
      return "row";
    case QuantScale::per_group:
      return "group";
  }
  return "unknown";
}

QuantScale parse_quant_scale(const std::string& s) {
  if (s == "static" || s == "static_tensor" || s == "tensor") return QuantScale::static_tensor;
  if (s == "row" || s == "per_row" || s == "token") return QuantScale::per_row;
  if (s == "group" || s == "per_group") return QuantScale::per_group;
  throw Error(Code::invalid_argument, "quant scale: unknown '" + s + "' (expected static, row or group)");
}

const char* quant_division_name(QuantDivision d) noexcept {
  switch (d) {
    case QuantDivision::exact:
      return "exact";
    case QuantDivision::reciprocal:
      return "reciprocal";
  }
  return "unknown";
}

QuantDivision parse_quant_division(const std::string& s) {
  if (s == "exact") return QuantDivision::exact;
  if (s == "reciprocal") return QuantDivision::reciprocal;
  throw Error(Code::invalid_argument, "quant division: unknown '" + s + "' (expected exact or reciprocal)");
}

float quant_max(DType q) noexcept {
  if (q == DType::f8e4m3) return 448.0f;
  if (q == DType::i8) return 127.0f;
  return 0.0f;
}

float quant_min_scale(DType q) noexcept {
  const float qmax = quant_max(q);
  return qmax > 0 ? 1.0f / (qmax * 512.0f) : 0.0f;  // qmax * 512 is exact in float
}

Plan plan_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                  Strategy requested) {
  Params params;
  params.check_pointers = false;
  const detail::ForwardProblem p = detail::validate_forward(x, weight, y, params, std::nullopt);
  int cc_major = 9;
#if defined(RMSNORM_HAVE_CUDA)
  if (x.device.kind == DeviceKind::cuda) cc_major = detail::cuda_cc_major(x.device.index);
#endif
  return detail::plan_problem(p, requested, cc_major);
}

Plan plan_forward(const TensorView& x, const TensorView& y, Strategy requested) {
  return plan_forward(x, std::nullopt, y, requested);
}

// ---------------------------------------------------------------------------------------
// Rows split across ranks
// ---------------------------------------------------------------------------------------

// The steps run on the views' device: arguments are validated first, then routed as forward
// and backward route theirs (a CUDA view in a build without CUDA was refused by validation).

namespace {
void run_partial_sums(const detail::PartialSumsProblem& p, const TensorView& x, Stream stream) {
  if (p.total_rows() == 0) return;
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_partial_sums(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_partial_sums(p, x.device.index, stream);
#else
  (void)stream;
#endif
}
}  // namespace

void partial_sum_squares(const TensorView& x, const TensorView& sums, const Params& params, Stream stream) {
  run_partial_sums(detail::validate_partial_sum_squares(x, sums, params), x, stream);
}

void forward_from_sums(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                       const TensorView& sums, std::int64_t full_cols, const Params& params,
                       const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardFromSumsProblem p =
      detail::validate_forward_from_sums(x, weight, y, sums, full_cols, params, rstd);
  if (p.forward.total_rows() == 0) return;
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_forward_from_sums(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  // The plan of the shard's rows (cols = the shard's), as forward plans them.
  detail::cuda_forward_from_sums(
      p, detail::plan_problem(p.forward, params.strategy, detail::cuda_cc_major(x.device.index)), x.device.index,
      stream);
#else
  (void)stream;
#endif
}

void partial_grad_dot(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                      const TensorView& dots, const Params& params, Stream stream) {
  run_partial_sums(detail::validate_partial_grad_dot(dy, x, weight, dots, params), x, stream);
}

void backward_from_sums(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                        const TensorView& rstd, const TensorView& dots, std::int64_t full_cols, const TensorView& dx,
                        const std::optional<TensorView>& dw, const Params& params, void* workspace,
                        std::size_t workspace_bytes, Stream stream) {
  detail::BackwardFromSumsProblem p =
      detail::validate_backward_from_sums(dy, x, weight, rstd, dots, full_cols, dx, dw, params);
  const std::size_t required = backward_workspace_size(x, dw, params);
  if (workspace_bytes < required)
    throw Error(Code::invalid_argument, "workspace: needs " + std::to_string(required) +
                                            " bytes (see backward_workspace_size), got " +
                                            std::to_string(workspace_bytes));
  if (required > 0 && workspace == nullptr) throw Error(Code::invalid_argument, "workspace: data is null");
  p.backward.workspace = workspace;
  p.backward.workspace_bytes = workspace_bytes;
  // Zero rows still define dw (a sum over nothing: zeros), as in backward.
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_backward_from_sums(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_backward_from_sums(
      p, detail::plan_backward(p.backward, params.strategy, detail::cuda_cc_major(x.device.index)), x.device.index,
      stream);
#else
  (void)stream;
#endif
}

Status partial_sum_squares_status(const TensorView& x, const TensorView& sums, const Params& params,
                                  Stream stream) noexcept {
  return detail::to_status([&] { partial_sum_squares(x, sums, params, stream); });
}

Status forward_from_sums_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const TensorView& sums, std::int64_t full_cols, const Params& params,
                                const std::optional<TensorView>& rstd, Stream stream) noexcept {
  return detail::to_status([&] { forward_from_sums(x, weight, y, sums, full_cols, params, rstd, stream); });
}

Status partial_grad_dot_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                               const TensorView& dots, const Params& params, Stream stream) noexcept {
  return detail::to_status([&] { partial_grad_dot(dy, x, weight, dots, params, stream); });
}

Status backward_from_sums_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                                 const TensorView& rstd, const TensorView& dots, std::int64_t full_cols,
                                 const TensorView& dx, const std::optional<TensorView>& dw, const Params& params,
                                 void* workspace, std::size_t workspace_bytes, Stream stream) noexcept {
  return detail::to_status([&] {
    backward_from_sums(dy, x, weight, rstd, dots, full_cols, dx, dw, params, workspace, workspace_bytes, stream);
  });
}

bool built_with_cuda() noexcept {
#if defined(RMSNORM_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

const char* version() noexcept { return RMSNORM_VERSION_STRING; }

#if !defined(RMSNORM_HAVE_CUDA)
int cuda_device_count() noexcept { return 0; }
std::string describe_device(Device device) {
  if (device.kind == DeviceKind::cuda) return "CUDA (not in this build)";
  return "CPU";
}
#endif

}  // namespace rmsnorm
