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

namespace {
// The sharded-row steps have a CPU implementation only, so far. Arguments are validated
// first on every device, so a bad argument is reported as such on CUDA too.
void require_cpu(const TensorView& x, const char* entry) {
  if (x.device.kind != DeviceKind::cpu)
    throw Error(Code::unsupported, std::string(entry) + ": not yet implemented on CUDA");
}
}  // namespace

void partial_sum_squares(const TensorView& x, const TensorView& sums, const Params& params, Stream stream) {
  (void)stream;
  const detail::PartialSumsProblem p = detail::validate_partial_sum_squares(x, sums, params);
  require_cpu(x, "partial_sum_squares");
  if (p.total_rows() > 0) detail::cpu_partial_sums(p);
}

void forward_from_sums(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                       const TensorView& sums, std::int64_t full_cols, const Params& params,
                       const std::optional<TensorView>& rstd, Stream stream) {
  (void)stream;
  const detail::ForwardFromSumsProblem p =
      detail::validate_forward_from_sums(x, weight, y, sums, full_cols, params, rstd);
  require_cpu(x, "forward_from_sums");
  if (p.forward.total_rows() > 0) detail::cpu_forward_from_sums(p);
}

void partial_grad_dot(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                      const TensorView& dots, const Params& params, Stream stream) {
  (void)stream;
  const detail::PartialSumsProblem p = detail::validate_partial_grad_dot(dy, x, weight, dots, params);
  require_cpu(x, "partial_grad_dot");
  if (p.total_rows() > 0) detail::cpu_partial_sums(p);
}

void backward_from_sums(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                        const TensorView& rstd, const TensorView& dots, std::int64_t full_cols, const TensorView& dx,
                        const std::optional<TensorView>& dw, const Params& params, void* workspace,
                        std::size_t workspace_bytes, Stream stream) {
  (void)stream;
  detail::BackwardFromSumsProblem p =
      detail::validate_backward_from_sums(dy, x, weight, rstd, dots, full_cols, dx, dw, params);
  require_cpu(x, "backward_from_sums");
  const std::size_t required = backward_workspace_size(x, dw, params);
  if (workspace_bytes < required)
    throw Error(Code::invalid_argument, "workspace: needs " + std::to_string(required) +
                                            " bytes (see backward_workspace_size), got " +
                                            std::to_string(workspace_bytes));
  if (required > 0 && workspace == nullptr) throw Error(Code::invalid_argument, "workspace: data is null");
  p.backward.workspace = workspace;
  p.backward.workspace_bytes = workspace_bytes;
  // Zero rows still define dw (a sum over nothing: zeros), as in backward.
  detail::cpu_backward_from_sums(p);
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
