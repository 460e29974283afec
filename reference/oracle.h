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

// Rounds v to dtype t and back (identity for f64).
double round_to(DType t, double v);

}  // namespace rmsnorm::reference
