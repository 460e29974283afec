// The unfused baseline of the benchmarks: RMSNorm as eager PyTorch runs Hugging Face's
// LlamaRMSNorm,
//
//   xf   = x.float()                          # a kernel and an fp32 copy (skipped for f32)
//   var  = xf.pow(2).mean(-1, keepdim=True)   # two kernels: pow, then a row reduction
//   rstd = torch.rsqrt(var + eps)             # two tiny kernels over M values
//   h    = xf * rstd                          # a kernel, another fp32 tensor
//   y    = w * h.to(x.dtype)                  # a cast kernel (skipped for f32), a multiply
//
// one simple kernel (or, on the CPU, one loop) per op, every intermediate in memory. It is
// what the fused kernel is compared against; its rounding is Cast::llama's (x*rstd rounded
// to x's dtype, then the weight product rounded again), so it is checked against the
// oracle with Cast::llama. The weight has x's dtype, as in a half-precision model.
#pragma once

#include <cstddef>
#include <cstdint>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::bench {

struct UnfusedProblem {
  DType dtype = DType::f16;  // of x, the weight and y: f32, f16 or bf16
  std::int64_t rows = 0, cols = 0;
  double eps = 1e-6;
  const void* x = nullptr;       // rows x cols, contiguous
  const void* weight = nullptr;  // cols
  void* y = nullptr;             // rows x cols, contiguous
  void* scratch = nullptr;       // unfused_scratch_bytes(...) bytes for the intermediates
};

// Bytes of intermediates one call needs (what PyTorch's caching allocator would hand out).
std::size_t unfused_scratch_bytes(DType dtype, std::int64_t rows, std::int64_t cols);

// Kernels (or loops) one call runs: 8 for 16-bit types, 6 for f32 (no casts).
int unfused_op_count(DType dtype);

// On host memory, synchronously; each op a separate loop over the whole tensor.
void unfused_forward_cpu(const UnfusedProblem& p);

// On device memory, stream-ordered, one kernel per op. Throws rmsnorm::Error
// (Code::cuda_error, naming the kernel) if a launch fails. CUDA builds only.
void unfused_forward_cuda(const UnfusedProblem& p, Stream stream);

// Where each intermediate lives inside the scratch buffer (shared by both backends).
struct UnfusedScratch {
  float* xf;       // rows*cols  (nullptr for f32: x itself is used)
  float* sq;       // rows*cols
  float* var;      // rows
  float* var_eps;  // rows
  float* rstd;     // rows
  float* h;        // rows*cols
  void* h_cast;    // rows*cols of dtype (nullptr for f32: h itself is used)
};
UnfusedScratch carve_unfused_scratch(void* scratch, DType dtype, std::int64_t rows, std::int64_t cols);

}  // namespace rmsnorm::bench
