// The validated problems of the sharded-row steps (rows whose columns are split across
// ranks; see "Rows split across ranks" in rmsnorm.h), handed from the API layer to a backend.
// The apply steps are forward / backward problems plus the reduced per-row sums, so a
// backend serves them with its forward and backward machinery and another source of the
// row's sum.
#pragma once

#include <cstdint>

#include "problem.h"

namespace rmsnorm::detail {

// A per-row sum over a shard's columns, into `sums` (f32; f64 for f64 x): of x^2 when dy is
// null (partial_sum_squares), of dy * (w + offset) * x otherwise (partial_grad_dot).
struct PartialSumsProblem {
  const void* x = nullptr;
  const void* dy = nullptr;      // nullptr: sum of squares
  const void* weight = nullptr;  // nullptr: w = 1 (only read with dy)
  void* sums = nullptr;
  DType x_dtype = DType::f32;  // also dy's
  DType w_dtype = DType::f32;
  std::int64_t batch = 1, rows = 0, cols = 0;
  std::int64_t x_batch_stride = 0, x_row_stride = 0;
  std::int64_t dy_batch_stride = 0, dy_row_stride = 0;
  double weight_offset = 0.0;
  bool pdl = true;
  std::int64_t total_rows() const { return batch * rows; }
};

// forward with rstd from the reduced sums of squares of whole rows of full_cols elements.
struct ForwardFromSumsProblem {
  ForwardProblem forward;
  const void* sums = nullptr;  // total_rows f32 (f64 for f64 x)
  std::int64_t full_cols = 0;  // N of the mean, >= forward.cols
};

// backward with the row dot products from the reduced dots of whole rows (rstd is required).
struct BackwardFromSumsProblem {
  BackwardProblem backward;    // backward.rstd is never null
  const void* dots = nullptr;  // total_rows f32 (f64 for f64 x)
  std::int64_t full_cols = 0;
};

// Validation (src/validate.cpp): throws rmsnorm::Error naming the first bad argument.
PartialSumsProblem validate_partial_sum_squares(const TensorView& x, const TensorView& sums, const Params& params);
PartialSumsProblem validate_partial_grad_dot(const TensorView& dy, const TensorView& x,
                                             const std::optional<TensorView>& weight, const TensorView& dots,
                                             const Params& params);
ForwardFromSumsProblem validate_forward_from_sums(const TensorView& x, const std::optional<TensorView>& weight,
                                                  const TensorView& y, const TensorView& sums, std::int64_t full_cols,
                                                  const Params& params, const std::optional<TensorView>& rstd);
BackwardFromSumsProblem validate_backward_from_sums(const TensorView& dy, const TensorView& x,
                                                    const std::optional<TensorView>& weight, const TensorView& rstd,
                                                    const TensorView& dots, std::int64_t full_cols,
                                                    const TensorView& dx, const std::optional<TensorView>& dw,
                                                    const Params& params);

// The CPU backend (src/cpu/sharded.cpp). The backward's workspace is cpu_backward_workspace's.
void cpu_partial_sums(const PartialSumsProblem& p);
void cpu_forward_from_sums(const ForwardFromSumsProblem& p);
void cpu_backward_from_sums(const BackwardFromSumsProblem& p);

#if defined(RMSNORM_HAVE_CUDA)
// The CUDA backend (src/cuda/dispatch.cu; the partial sums' kernel is src/cuda/sharded.cu,
// the apply steps run the forward and backward kernels of `plan`: plan_problem of
// p.forward, plan_backward of p.backward). The backward's workspace is
// cuda_backward_workspace's. f32, f16 and bf16 x; f64 throws Code::unsupported.
void cuda_partial_sums(const PartialSumsProblem& p, int device, Stream stream);
void cuda_forward_from_sums(const ForwardFromSumsProblem& p, const Plan& plan, int device, Stream stream);
void cuda_backward_from_sums(const BackwardFromSumsProblem& p, const Plan& plan, int device, Stream stream);
#endif

}  // namespace rmsnorm::detail
