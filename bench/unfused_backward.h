// The unfused backward baseline: the kernels eager PyTorch's autograd runs for the
// backward of bench/unfused.h's LlamaRMSNorm, node by node in the order autograd visits
// them, one simple kernel (or, on the CPU, one loop) per op, every intermediate in memory:
//
//   forward op (unfused.h)      autograd node            ops it runs
//   y = w * hc                  MulBackward0             g_hc = dy * w            (x's dtype)
//                                                        gw = dy * hc             (x's dtype)
//                               sum_to w's shape         dw = gw.sum(0)           (column sums in fp32:
//                                                                                  partials, then their total)
//   hc = h.to(dtype)            ToCopyBackward0          g_h = g_hc.float()       (16-bit only)
//   h = xf * rstd               MulBackward0             g_xf = g_h * rstd
//                                                        g_r = g_h * xf
//                               sum_to rstd's shape      g_rstd = g_r.sum(-1)     (row sums)
//   rstd = rsqrt(var + eps)     RsqrtBackward0           -0.5 * g_rstd, rstd.pow(3), their product (over M)
//   var + eps                   AddBackward1             (the gradient passes through)
//   var = sq.mean(-1)           MeanBackward1            g_sq = g_var.expand(M, N) / N
//   sq = xf.pow(2)              PowBackward0             p1 = xf.pow(1) (a copy), two = 2 * p1,
//                                                        g_xf2 = g_sq * two
//   xf has two uses             gradient accumulation    g_xf += g_xf2            (in place)
//   xf = x.float()              ToCopyBackward0          dx = g_xf.to(dtype)      (16-bit only)
//
// Its inputs are what autograd saved in the forward: xf (x.float(), fp32; x itself for
// f32), hc (x's dtype; the fp32 h for f32), rstd (fp32), the weight; plus dy. The fp32
// intermediates reuse freed buffers the way PyTorch's caching allocator would.
//
// Rounding: g_hc, gw and hc are rounded to x's dtype (PyTorch's 16-bit mul rounds its
// result), so dx and dw carry two more roundings of x's dtype, relative to the size of the
// terms, than the fused backward; it is checked against the oracle with that allowance.
// The weight and dw have x's dtype, as in a half-precision model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "rmsnorm/rmsnorm.h"
#include "unfused.h"

namespace rmsnorm::bench {

// The tensors autograd keeps from the unfused forward for the backward.
struct UnfusedSaved {
  const float* xf = nullptr;     // rows*cols fp32 (for f32: x itself)
  const void* h_cast = nullptr;  // rows*cols of dtype (for f32: the fp32 h)
  const float* rstd = nullptr;   // rows
};

// Bytes that unfused_save_for_backward_* copies the saved tensors into (xf for 16-bit
// types, h_cast, rstd).
std::size_t unfused_saved_bytes(DType dtype, std::int64_t rows, std::int64_t cols);

// Runs the unfused forward (forward.y receives y) and copies what autograd would save from
// its scratch into `saved` (unfused_saved_bytes of them). The copy routine is the backend's
// (memcpy, or cudaMemcpyAsync on a stream).
UnfusedSaved unfused_save_for_backward(const UnfusedProblem& forward, void* saved,
                                       const std::function<void(void*, const void*, std::size_t)>& copy);
UnfusedSaved unfused_save_for_backward_cpu(const UnfusedProblem& forward, void* saved);
// CUDA builds only; stream-ordered.
UnfusedSaved unfused_save_for_backward_cuda(const UnfusedProblem& forward, void* saved, Stream stream);

struct UnfusedBackwardProblem {
  DType dtype = DType::f16;  // of dy, the weight, dx and dw: f32, f16 or bf16
  std::int64_t rows = 0, cols = 0;
  UnfusedSaved saved;
  const void* weight = nullptr;  // cols
  const void* dy = nullptr;      // rows x cols, contiguous
  void* dx = nullptr;            // rows x cols, contiguous
  void* dw = nullptr;            // cols
  void* scratch = nullptr;       // unfused_backward_scratch_bytes(...) bytes
};

std::size_t unfused_backward_scratch_bytes(DType dtype, std::int64_t rows, std::int64_t cols);

// Kernels (or loops) one call runs: 17 for 16-bit types, 15 for f32 (no casts).
int unfused_backward_op_count(DType dtype);

// On host memory, synchronously; each op a separate loop over the whole tensor.
void unfused_backward_cpu(const UnfusedBackwardProblem& p);

// On device memory, stream-ordered, one kernel per op. Throws rmsnorm::Error
// (Code::cuda_error, naming the kernel) if a launch fails. CUDA builds only.
void unfused_backward_cuda(const UnfusedBackwardProblem& p, Stream stream);

// dw's column sums: rows are split into this many chunks of rows_per_chunk rows, each
// giving one fp32 partial row; the partials are then added in chunk order.
struct ColumnChunks {
  std::int64_t chunks = 1, rows_per_chunk = 1;
};
ColumnChunks unfused_dw_chunks(std::int64_t rows, std::int64_t cols);

// The intermediates inside the scratch buffer (shared by both backends). The fp32 buffers
// are reused once their tensor is dead (see the backends for which holds what when).
struct UnfusedBackwardScratch {
  void* g_hc;         // rows*cols of dtype (nullptr for f32: f0 holds it, it is g_h)
  void* gw;           // rows*cols of dtype
  float* f0;          // rows*cols: g_h, then g_sq
  float* f1;          // rows*cols: g_xf (nullptr for f32: g_xf is accumulated in dx)
  float* f2;          // rows*cols: g_r, then p1, then g_xf2
  float* f3;          // rows*cols: two
  float* r0;          // rows: g_rstd
  float* r1;          // rows: -0.5 * g_rstd
  float* r2;          // rows: rstd^3
  float* r3;          // rows: g_var
  float* dw_partial;  // unfused_dw_chunks(...).chunks * cols
};
UnfusedBackwardScratch carve_unfused_backward_scratch(void* scratch, DType dtype, std::int64_t rows, std::int64_t cols);

}  // namespace rmsnorm::bench
