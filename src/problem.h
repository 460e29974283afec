// The validated forward and backward problems handed from the API layer to a backend, the
// fused forms' fields included: plain data only, so that the CUDA kernels can take them by
// value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

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
  bool pdl = true;                                        // Params::pdl
  SplitFewRows split_few_rows = SplitFewRows::automatic;  // Params::split_few_rows

  // Prologue, the residual add (fused_add_forward, fused_add_quant_forward), when `residual`
  // is set: the row to normalise is r_out = x + residual, added in fp32 (fp64 for f64) and
  // rounded once to r_dtype, stored to residual_out before the norm reads it (residual_out
  // may be residual itself: in place). rstd is r_out's. Cast::llama still rounds
  // r_out * rstd to x_dtype.
  const void* residual = nullptr;
  void* residual_out = nullptr;
  DType r_dtype = DType::f32;  // residual's and residual_out's: x_dtype, or f32 with 16-bit x
  std::int64_t r_batch_stride = 0, r_row_stride = 0;
  std::int64_t r_out_batch_stride = 0, r_out_row_stride = 0;

  // Prologue, the ranks' sum (fused_allreduce_add_forward), with the residual add: when
  // `ranks` > 1, the row added to the residual is the sum over k < ranks of the rows at
  // rank_x[k] (rank_x[0] == x; all with x's dtype and strides), in the accumulator type, in
  // rank order, never rounded before the residual is added.
  static constexpr int kMaxRanks = static_cast<int>(kMaxAllReduceRanks);
  int ranks = 1;
  const void* rank_x[kMaxRanks] = {};

  // Epilogue, the quantised store (quant_forward, fused_add_quant_forward), when `quantize`
  // is set: y is q (y_dtype f8e4m3 or i8, y_* strides q's) and receives sat(y_j / s) instead
  // of y_j (rmsnorm.h has the rules). A per_row problem is a per_group one with one group of
  // `cols` columns, so backends need one dynamic path.
  bool quantize = false;
  QuantScale quant_scale = QuantScale::static_tensor;
  // static_tensor: the one scale, read. per_row / per_group: written, the scale of (row, g)
  // (row = b * rows + r) at scales[row * scale_row_stride + g * scale_group_stride].
  float* scales = nullptr;
  std::int64_t group_size = 0;  // columns a group (divides cols; == cols for per_row)
  std::int64_t scale_row_stride = 0, scale_group_stride = 0;
  const float* scale_ub = nullptr;  // optional cap on the group's amax (dynamic scales only)
  bool pow2_scales = false;         // round computed scales up to a power of two
  // y * (1 / s), 1 / s rounded once to fp32, instead of the exact y / s, where 2^-64 <= |s| <=
  // 2^64 (QuantDivision::reciprocal); beyond, both divide exactly.
  bool reciprocal = false;
  std::int64_t groups() const { return group_size > 0 ? cols / group_size : 1; }

  // The sharded rows' apply step (forward_from_sums), when `row_sums` is set: the rows' sums
  // of squares over all `full_cols` columns of the whole row, all-reduced across the ranks
  // holding it, replace the kernel's own reduction (CUDA; the CPU has its own loop).
  const float* row_sums = nullptr;
  std::int64_t full_cols = 0;

  bool fused() const { return residual != nullptr || quantize; }
  std::int64_t total_rows() const { return batch * rows; }
};

struct BackwardProblem {
  const void* dy = nullptr;
  const void* x = nullptr;
  const void* weight = nullptr;  // nullptr: no weight
  const void* rstd = nullptr;    // nullptr: recompute from x
  void* dx = nullptr;
  void* dw = nullptr;          // nullptr: not requested
  DType x_dtype = DType::f32;  // the norm input's (x, or r_out); dy's and dx's is dx_dtype
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

  // The residual add's backward (fused_add_backward), when `dr_out` is set: x is the norm's
  // input r_out (x_dtype its dtype), dy and dx have dx_dtype (f16 / bf16 when r_out is f32,
  // else x_dtype), and dx_j = dnorm_j + dr_out_j, added in fp32 and rounded once; `dr`, when
  // set, receives the same fp32 value rounded to x_dtype. dx may be exactly dy or dr_out, dr
  // may be exactly dr_out. For the plain backward dx_dtype == x_dtype and both are null.
  DType dx_dtype = DType::f32;  // also dy's
  const void* dr_out = nullptr;
  void* dr = nullptr;
  std::int64_t dr_out_batch_stride = 0, dr_out_row_stride = 0;
  std::int64_t dr_batch_stride = 0, dr_row_stride = 0;

  // The sharded rows' apply step (backward_from_sums), when `row_dots` is set: the rows'
  // sum(g x) over all `full_cols` columns replace the kernel's own (CUDA).
  const float* row_dots = nullptr;
  std::int64_t full_cols = 0;

  bool fused() const { return dr_out != nullptr; }
  std::int64_t total_rows() const { return batch * rows; }
};

// Which fused problems the CUDA backend serves. Its kernels for them are steps of the
// existing strategy kernels (cuda/forward_steps.cuh); where a flag is not set, api.cpp
// refuses CUDA views of those problems with Code::unsupported (never a silent fallback), and
// the plain problems take their usual path.
constexpr bool kCudaResidualAdd = true;       // ForwardProblem::residual
constexpr bool kCudaQuantize = true;          // ForwardProblem::quantize
constexpr bool kCudaResidualBackward = true;  // BackwardProblem::dr_out
constexpr bool kCudaRanksSum = true;          // ForwardProblem::ranks > 1

// Throws rmsnorm::Error naming the first bad argument. Also checks pointer residency when
// params.check_pointers is set (CUDA builds only).
ForwardProblem validate_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const Params& params, const std::optional<TensorView>& rstd);

// fused_allreduce_add_forward's: validate_fused_forward's with partials[0] as x (messages
// name it), then the other partials against it, and no output overlapping any partial.
ForwardProblem validate_allreduce_add_forward(const TensorView* partials, std::size_t count, const TensorView& residual,
                                              const TensorView& residual_out, const std::optional<TensorView>& weight,
                                              const TensorView& y, const Params& params,
                                              const std::optional<TensorView>& rstd);

// The checks of the fused forwards: fused_add_* when residual and residual_out are given (both
// or neither), quant_* when quant is (then `y` is q). Without either, validate_forward's.
ForwardProblem validate_fused_forward(const TensorView& x, const TensorView* residual, const TensorView* residual_out,
                                      const std::optional<TensorView>& weight, const TensorView& y, const Quant* quant,
                                      const Params& params, const std::optional<TensorView>& rstd);

// The backward's checks; the workspace size is checked by the caller.
BackwardProblem validate_backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                                  const std::optional<TensorView>& rstd, const TensorView& dx,
                                  const std::optional<TensorView>& dw, const Params& params);

// fused_add_backward's checks; the workspace size is checked by the caller.
BackwardProblem validate_fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                            const std::optional<TensorView>& weight,
                                            const std::optional<TensorView>& rstd, const TensorView& dx,
                                            const std::optional<TensorView>& dr, const std::optional<TensorView>& dw,
                                            const Params& params);

// Backends. The CPU ones serve every problem, fused or not.
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
