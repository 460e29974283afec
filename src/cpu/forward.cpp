// CPU backend of the forward pass: rows in parallel (OpenMP), fp32 accumulation (fp64 for
// f64) in a fixed order, so results are deterministic and independent of the thread count.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/numeric.h"
#include "problem.h"

namespace rmsnorm::detail {
namespace {

// One row's output. The cast and the weight's presence are template parameters so that the
// loop has no branch inside and vectorises.
template <class TX, class TW, class TY, class Acc, bool LLAMA, bool HAS_W>
void scale_row(const TX* x, const TW* w, TY* y, std::int64_t n, Acc rstd, Acc offset) {
  // y may be x: each element is read before it is written, by the same iteration.
  for (std::int64_t j = 0; j < n; ++j) {
    if constexpr (!LLAMA) {
      Acc v = cpu::to_acc<Acc>(x[j]) * rstd;
      if constexpr (HAS_W) v *= cpu::to_acc<Acc>(w[j]) + offset;
      y[j] = cpu::from_acc<TY>(v);
    } else {
      // Hugging Face's steps: round x*rstd to x's dtype, multiply by the weight (offset
      // applied in the weight's dtype) in the promoted dtype, then store.
      Acc v = cpu::round_as<TX>(cpu::to_acc<Acc>(x[j]) * rstd);
      if constexpr (HAS_W)
        v = cpu::round_as<cpu::Promoted<TX, TW>>(v * cpu::round_as<TW>(cpu::to_acc<Acc>(w[j]) + offset));
      y[j] = cpu::from_acc<TY>(v);
    }
  }
}

template <class TX, class TW, class TY, class Acc, bool LLAMA, bool HAS_W>
void forward_rows(const ForwardProblem& p) {
  const std::int64_t m = p.total_rows(), n = p.cols;
  const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(n));
  const Acc eps = static_cast<Acc>(p.eps);
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);

#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t row = 0; row < m; ++row) {
    const std::int64_t b = row / p.rows, r = row % p.rows;
    const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
    TY* y = static_cast<TY*>(p.y) + b * p.y_batch_stride + r * p.y_row_stride;
    const Acc ss = cpu::lane_sum<Acc>(n, [&](std::int64_t j) {
      const Acc v = cpu::to_acc<Acc>(x[j]);
      return v * v;
    });
    const Acc rstd = Acc(1) / std::sqrt(ss * inv_n + eps);
    if (p.rstd) static_cast<Acc*>(p.rstd)[row] = rstd;
    scale_row<TX, TW, TY, Acc, LLAMA, HAS_W>(x, w, y, n, rstd, offset);
  }
}

// Picks the loop for the call's cast and weight.
template <class TX, class TW, class TY, class Acc>
void forward_rows(const ForwardProblem& p) {
  const bool llama = p.cast == Cast::llama, has_w = p.weight != nullptr;
  if (llama && has_w) return forward_rows<TX, TW, TY, Acc, true, true>(p);
  if (llama) return forward_rows<TX, TW, TY, Acc, true, false>(p);
  if (has_w) return forward_rows<TX, TW, TY, Acc, false, true>(p);
  forward_rows<TX, TW, TY, Acc, false, false>(p);
}

}  // namespace

void cpu_forward(const ForwardProblem& p) {
  using cpu::BF16;
  using cpu::F16;
  const DType x = p.x_dtype, w = p.w_dtype, y = p.y_dtype;
  // The supported combinations (validate_forward refused the rest).
  if (x == DType::f32) return forward_rows<float, float, float, float>(p);
  if (x == DType::f64) return forward_rows<double, double, double, double>(p);
  if (x == DType::f16) {
    if (w == DType::f16) return forward_rows<F16, F16, F16, float>(p);
    if (y == DType::f16) return forward_rows<F16, float, F16, float>(p);
    return forward_rows<F16, float, float, float>(p);
  }
  if (w == DType::bf16) return forward_rows<BF16, BF16, BF16, float>(p);
  if (y == DType::bf16) return forward_rows<BF16, float, BF16, float>(p);
  return forward_rows<BF16, float, float, float>(p);
}

}  // namespace rmsnorm::detail
