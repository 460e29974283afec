// The validated forward problem handed from the API layer to a backend: plain data only,
// so that the CUDA kernels can take it by value.
#pragma once

#include <cstdint>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail {

struct ForwardProblem {
  const void* x = nullptr;
  void* y = nullptr;
  const void* weight = nullptr;  // nullptr: no weight
  void* rstd = nullptr;          // nullptr: not requested
  DType x_dtype = DType::f32;
  DType y_dtype = DType::f32;
  DType w_dtype = DType::f32;  // meaningful only with a weight
  std::int64_t batch = 1, rows = 0, cols = 0;
  std::int64_t x_batch_stride = 0, x_row_stride = 0;
  std::int64_t y_batch_stride = 0, y_row_stride = 0;
  double eps = 1e-6;
  double weight_offset = 0.0;
  Cast cast = Cast::fp32;
  bool pdl = true;  // Params::pdl
  std::int64_t total_rows() const { return batch * rows; }
};

struct BackwardProblem {
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* weight = nullptr;  // nullptr: no weight
  const void* rstd = nullptr;    // nullptr: recompute from x
  void* dx = nullptr;
  void* dw = nullptr;          // nullptr: not requested
  DType x_dtype = DType::f32;  // also dy's and dx's
  DType w_dtype = DType::f32;
  DType dw_dtype = DType::f32;
  std::int64_t batch = 1, rows = 0, cols = 0;
  std::int64_t dy_batch_stride = 0, dy_row_stride = 0;
  std::int64_t x_batch_stride = 0, x_row_stride = 0;
  std::int64_t dx_batch_stride = 0, dx_row_stride = 0;
  double eps = 1e-6;
  double weight_offset = 0.0;
  bool pdl = true;  // Params::pdl
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  std::int64_t total_rows() const { return batch * rows; }
};

// Throws rmsnorm::Error naming the first bad argument. Also checks pointer residency when
// params.check_pointers is set (CUDA builds only).
ForwardProblem validate_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const Params& params, const std::optional<TensorView>& rstd);

// The backward's checks; the workspace size is checked by the caller.
BackwardProblem validate_backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                                  const std::optional<TensorView>& rstd, const TensorView& dx,
                                  const std::optional<TensorView>& dw, const Params& params);

// Backends.
void cpu_forward(const ForwardProblem& p);
std::size_t cpu_backward_workspace(std::int64_t total_rows, std::int64_t cols, bool want_dw, DType x_dtype);
void cpu_backward(const BackwardProblem& p);
#if defined(RMSNORM_HAVE_CUDA)
void cuda_forward(const ForwardProblem& p, const Plan& plan, int device, Stream stream);
std::size_t cuda_backward_workspace(std::int64_t total_rows, std::int64_t cols, int device);
void cuda_backward(const BackwardProblem& p, const Plan& plan, int device, Stream stream);
// Throws Error(invalid_argument) unless `ptr` is memory of `device` (a CUDA ordinal, or the
// host when device.kind is cpu). `what` names the argument.
int cuda_cc_major(int device);
void check_pointer_residency(const void* ptr, Device device, const char* what);
#endif

// Plan of a validated problem (shared by plan_forward and the CUDA dispatch).
// cc_major is the device's compute capability major version (clusters need 9).
Plan plan_problem(const ForwardProblem& p, Strategy requested, int cc_major);
Plan plan_backward(const BackwardProblem& p, Strategy requested, int cc_major);

}  // namespace rmsnorm::detail
