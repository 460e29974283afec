// The fp64 test oracle: a naive, obviously-right RMSNorm on host memory, computed in
// double precision. It shares no code with the CPU or CUDA backends it judges; it reads
// elements one at a time through rmsnorm::load_as_double.
#pragma once

#include <optional>
#include <vector>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::reference {

struct ForwardResult {
  std::vector<double> y;     // total_rows * cols, row-major, contiguous
  std::vector<double> rstd;  // total_rows
};

// x and weight are host views (Device::cpu). The result is what `forward` should produce
// before the final rounding to y_dtype. Under Cast::llama the intermediate roundings of
// Hugging Face's LlamaRMSNorm are reproduced (x * rstd rounded to x's dtype, the weight
// product rounded to the promoted dtype of x and the weight).
ForwardResult forward(const TensorView& x, const std::optional<TensorView>& weight, DType y_dtype,
                      const Params& params);

struct BackwardResult {
  std::vector<double> dx;        // total_rows * cols
  std::vector<double> dx_scale;  // |rstd g| + rstd^3 / cols * |x| * sum|g x| per element: the
                                 // size of the terms dx is computed from (for the tolerance)
  std::vector<double> dw;        // cols (empty without a weight)
  std::vector<double> dw_scale;  // sum over rows of |dy * x * rstd| per column
  std::vector<double> rstd;      // total_rows
};

// Gradients of forward with respect to x and the weight, in fp64, treating the rounding
// steps of Cast::llama as identities (as the library documents).
BackwardResult backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                        const Params& params);

// The residual add (fused_add_forward): r_out = x + residual rounded once to the residual's
// dtype, then the norm of r_out (its dtype's accumulator; Cast::llama rounds to x's dtype).
struct FusedAddResult {
  std::vector<double> r_out;  // total_rows * cols, the exact values of the rounded sums
  ForwardResult norm;         // y before its final rounding, and rstd, of r_out
};
FusedAddResult fused_add_forward(const TensorView& x, const TensorView& residual,
                                 const std::optional<TensorView>& weight, const Params& params);

// Gradients of fused_add_forward: backward() on r_out, plus dr_out (dx_scale grows by |dr_out|).
BackwardResult fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                  const std::optional<TensorView>& weight, const Params& params);

// Quantised outputs, on exact values: what a quantised forward should give for the oracle's y.
struct QuantSpec {
  QuantScale kind = QuantScale::per_row;
  DType q = DType::f8e4m3;
  std::int64_t group_size = 128;  // per_group
  bool pow2 = false;
  std::optional<double> scale_ub;
};
// The value of the code t quantises to: fp8 e4m3 round to nearest even saturated at +-448
// (NaN kept), or int8 round half to even saturated at +-127 (NaN -> 0).
double quant_code(DType q, double t);
// A computed scale from the max |y| of its row or group: max(min(amax, ub) / qmax,
// 1 / (qmax * 512)), rounded up to a power of two when spec.pow2.
double quant_scale(const QuantSpec& spec, double amax);
// The computed scales of rows x cols values y (row-major), (rows, groups) row-major.
std::vector<double> quant_scales(const std::vector<double>& y, std::int64_t rows, std::int64_t cols,
                                 const QuantSpec& spec);

// Rounds v to dtype t and back (identity for f64).
double round_to(DType t, double v);

}  // namespace rmsnorm::reference
