// CPU backend of the forward pass: rows in parallel (OpenMP, a static share of the rows per
// thread), each thread running the active instruction set's loop (isa.h) on its rows. This
// file holds the portable loop too: fp32 accumulation (fp64 for f64) in the fixed order of
// cpu::lane_sum, which the vector loops (simd_rows.inl) follow to the bit.
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "problem.h"

namespace rmsnorm::detail {
namespace cpu {
namespace {

// The portable loop. The cast and the weight's presence are template parameters so that
// the loop has no branch inside and vectorises.
template <class TX, class TW, class TY, bool LLAMA, bool HAS_W>
struct ScalarForward {
  using Acc = AccOf<TX>;
  static constexpr bool supported = true;

  static void scale_row(const TX* x, const TW* w, TY* y, std::int64_t n, Acc rstd, Acc offset) {
    // y may be x: each element is read before it is written, by the same iteration.
    for (std::int64_t j = 0; j < n; ++j) {
      if constexpr (!LLAMA) {
        Acc v = to_acc<Acc>(x[j]) * rstd;
        if constexpr (HAS_W) v *= to_acc<Acc>(w[j]) + offset;
        y[j] = from_acc<TY>(canonical_nan(v));
      } else {
        // Hugging Face's steps: round x*rstd to x's dtype, multiply by the weight (offset
        // applied in the weight's dtype) in the promoted dtype, then store.
        Acc v = round_as<TX>(to_acc<Acc>(x[j]) * rstd);
        if constexpr (HAS_W) v = round_as<Promoted<TX, TW>>(v * round_as<TW>(to_acc<Acc>(w[j]) + offset));
        y[j] = from_acc<TY>(canonical_nan(v));
      }
    }
  }

  static void run(const ForwardProblem& p, std::int64_t begin, std::int64_t end, bool /*stream*/) {
    const std::int64_t n = p.cols;
    const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(n));
    const Acc eps = static_cast<Acc>(p.eps);
    const Acc offset = static_cast<Acc>(p.weight_offset);
    const TW* w = static_cast<const TW*>(p.weight);
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      TY* y = static_cast<TY*>(p.y) + b * p.y_batch_stride + r * p.y_row_stride;
      const Acc ss = lane_sum<Acc>(n, [&](std::int64_t j) {
        const Acc v = to_acc<Acc>(x[j]);
        return v * v;
      });
      const Acc rstd = rstd_of(ss, inv_n, eps);
      if (p.rstd) static_cast<Acc*>(p.rstd)[row] = rstd;
      scale_row(x, w, y, n, rstd, offset);
    }
  }
};

}  // namespace

ForwardRows forward_rows_scalar(const ForwardProblem& p) { return pick_forward<ScalarForward>(p); }

namespace {
ForwardRows forward_rows(const ForwardProblem& p, Isa isa) {
  ForwardRows rows = nullptr;
  if (isa == Isa::avx512) rows = forward_rows_avx512(p);
  if (isa == Isa::avx2) rows = forward_rows_avx2(p);
  return rows ? rows : forward_rows_scalar(p);
}
}  // namespace

}  // namespace cpu

void cpu_forward(const ForwardProblem& p) {
  const cpu::ForwardRows rows = cpu::forward_rows(p, cpu::active_isa());
  const std::int64_t m = p.total_rows(), n = p.cols;
  const bool stream = cpu::stream_output(static_cast<std::size_t>(m * n) * dtype_size(p.y_dtype));
  cpu::parallel_rows(m, m * n > 65536, [&](std::int64_t begin, std::int64_t end) { rows(p, begin, end, stream); });
}

}  // namespace rmsnorm::detail
