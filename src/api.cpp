// The public entry points: validate once, then route to a backend.
#include <string>

#include "problem.h"
#include "rmsnorm/rmsnorm.h"

#ifndef RMSNORM_VERSION_STRING
#define RMSNORM_VERSION_STRING "0.1.0"
#endif

namespace rmsnorm {

TensorView TensorView::matrix(void* data, DType dtype, Device device, std::int64_t rows,
                              std::int64_t cols, std::int64_t row_stride) noexcept {
  const std::int64_t rs = row_stride < 0 ? cols : row_stride;
  return TensorView{data, dtype, device, 1, rows, cols, rows * rs, rs};
}

TensorView TensorView::batched(void* data, DType dtype, Device device, std::int64_t batch,
                               std::int64_t rows, std::int64_t cols, std::int64_t batch_stride,
                               std::int64_t row_stride) noexcept {
  return TensorView{data, dtype, device, batch, rows, cols, batch_stride, row_stride};
}

TensorView TensorView::vector(void* data, DType dtype, Device device, std::int64_t n) noexcept {
  return TensorView{data, dtype, device, 1, 1, n, n, n};
}

const char* strategy_name(Strategy s) noexcept {
  switch (s) {
    case Strategy::automatic: return "auto";
    case Strategy::warp_rows: return "warp_rows";
    case Strategy::block_row: return "block_row";
    case Strategy::long_row: return "long_row";
  }
  return "unknown";
}

Strategy parse_strategy(const std::string& s) {
  if (s == "auto" || s == "automatic") return Strategy::automatic;
  if (s == "warp_rows") return Strategy::warp_rows;
  if (s == "block_row") return Strategy::block_row;
  if (s == "long_row") return Strategy::long_row;
  throw Error(Code::invalid_argument,
              "strategy: unknown '" + s + "' (expected auto, warp_rows, block_row or long_row)");
}

const char* code_name(Code c) noexcept {
  switch (c) {
    case Code::ok: return "ok";
    case Code::invalid_argument: return "invalid_argument";
    case Code::unsupported: return "unsupported";
    case Code::cuda_error: return "cuda_error";
    case Code::internal: return "internal";
  }
  return "unknown";
}

void forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
             const Params& params, const std::optional<TensorView>& rstd, Stream stream) {
  const detail::ForwardProblem p = detail::validate_forward(x, weight, y, params, rstd);
  if (p.total_rows() == 0) return;
  if (x.device.kind == DeviceKind::cpu) {
    detail::cpu_forward(p);
    return;
  }
#if defined(RMSNORM_HAVE_CUDA)
  detail::cuda_forward(p, detail::plan_problem(p, params.strategy), x.device.index, stream);
#else
  (void)stream;
#endif
}

Status forward_status(const TensorView& x, const std::optional<TensorView>& weight,
                      const TensorView& y, const Params& params,
                      const std::optional<TensorView>& rstd, Stream stream) noexcept {
  try {
    forward(x, weight, y, params, rstd, stream);
    return {};
  } catch (const Error& e) {
    return {e.code(), e.what()};
  } catch (const std::exception& e) {
    return {Code::internal, e.what()};
  } catch (...) {
    return {Code::internal, "unknown exception"};
  }
}

Plan plan_forward(const TensorView& x, const TensorView& y, Strategy requested) {
  Params params;
  params.check_pointers = false;
  const detail::ForwardProblem p = detail::validate_forward(x, std::nullopt, y, params, std::nullopt);
  return detail::plan_problem(p, requested);
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
