// The unfused baselines of the fused forms, as eager PyTorch runs them around Hugging Face's
// LlamaRMSNorm (bench/unfused.h), one loop per op with every intermediate in memory:
//
// residual add (a decoder layer's seam):
//   r_out = x + residual                        # one elementwise kernel (fp32 opmath, one rounding)
//   y     = LlamaRMSNorm(r_out)                 # the unfused norm's 6-8 kernels
//
// 8-bit output, after y = LlamaRMSNorm(x) (vLLM's and DeepSeek's reference formulas):
//   yf = y.float()                              # a cast kernel (skipped for f32)
//   static:  t = yf / scale                     # one kernel
//   row / group: a = yf.abs()                   # one kernel ...
//            amax = a.amax(-1) (per group: a.view(M, G, g).amax(-1))   # a row reduction
//            s = (amax / qmax).clamp(min=1/(qmax*512))   # two tiny kernels (M or M*G values)
//            t = yf / s                         # one kernel (s broadcast)
//   q = t.clamp(-qmax, qmax).to(qdtype)         # two kernels (int8: torch.round first, three)
//
// CPU only (the CUDA benchmarks of the fused forms wait for their kernels).
#pragma once

#include <cstddef>
#include <cstdint>

#include "rmsnorm/rmsnorm.h"
#include "unfused.h"

namespace rmsnorm::bench {

// r_out = x + residual (all of `dtype`), then the unfused norm of r_out into y.
void unfused_add_forward_cpu(const UnfusedProblem& norm, const void* residual, void* residual_out);

struct UnfusedQuantProblem {
  UnfusedProblem norm;  // y = LlamaRMSNorm(x): norm.y holds y (dtype)
  QuantScale kind = QuantScale::per_row;
  DType qdtype = DType::f8e4m3;
  std::int64_t group_size = 128;        // per_group
  const float* static_scale = nullptr;  // static_tensor
  void* q = nullptr;                    // rows x cols of qdtype
  float* scales = nullptr;              // per_row: rows; per_group: rows x (cols / group_size)
  void* scratch = nullptr;              // unfused_quant_scratch_bytes(...)
};
std::size_t unfused_quant_scratch_bytes(std::int64_t rows, std::int64_t cols);
void unfused_quant_forward_cpu(const UnfusedQuantProblem& p);

}  // namespace rmsnorm::bench
