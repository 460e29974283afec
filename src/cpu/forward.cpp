// CPU backend of the forward pass: rows in parallel (OpenMP, a static share of the rows per
// thread), each thread running the active instruction set's loop (isa.h) on its rows. This
// file holds the portable loop too: fp32 accumulation (fp64 for f64) in the fixed order of
// cpu::lane_sum, which the vector loops (simd_rows.inl) follow to the bit.
// The fused forms (a residual-add prologue, a quantised-store epilogue: cpu/steps.h) run
// one portable loop of steps; the plain form, and the residual add with a plain store
// (its prologue, then the plain loop over r_out), take the instruction-set loops.
#include <cmath>
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/numeric.h"
#include "cpu/parallel.h"
#include "cpu/steps.h"
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

// The row loop of the fused forms. `In` (a prologue of cpu/steps.h) gives the row to
// normalise, `Out` (an epilogue) consumes its values. Its sums, rstd and y values are the
// portable loop's above, to the bit (y of the residual add is forward() of r_out). The cast and the weight's
// presence are template parameters so that the loops have no branch inside and vectorise.
template <class In, class Out, class TW, class Acc, bool LLAMA, bool HAS_W>
void fused_rows(const ForwardProblem& p) {
  using TX = typename In::In;     // the dtype the norm reads
  using TR = typename In::Round;  // the dtype Cast::llama rounds to (x's)
  const std::int64_t m = p.total_rows(), n = p.cols;
  const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(n));
  const Acc eps = static_cast<Acc>(p.eps);
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);
  const In in{p};
  const Out out{p};

#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t row = 0; row < m; ++row) {
    const std::int64_t b = row / p.rows, r = row % p.rows;
    const TX* x = in.row(b, r);
    const Acc ss = cpu::lane_sum<Acc>(n, [&](std::int64_t j) {
      const Acc v = cpu::to_acc<Acc>(x[j]);
      return v * v;
    });
    const Acc rstd = cpu::rstd_of(ss, inv_n, eps);
    if (p.rstd) static_cast<Acc*>(p.rstd)[row] = rstd;
    // y_j before the store's rounding.
    out.row(b, r, row, [&](std::int64_t j) {
      if constexpr (!LLAMA) {
        Acc v = cpu::to_acc<Acc>(x[j]) * rstd;
        if constexpr (HAS_W) v *= cpu::to_acc<Acc>(w[j]) + offset;
        return v;
      } else {
        // Hugging Face's steps: round x*rstd to x's dtype, multiply by the weight (offset
        // applied in the weight's dtype) in the promoted dtype.
        Acc v = cpu::round_as<TR>(cpu::to_acc<Acc>(x[j]) * rstd);
        if constexpr (HAS_W)
          v = cpu::round_as<cpu::Promoted<TR, TW>>(v * cpu::round_as<TW>(cpu::to_acc<Acc>(w[j]) + offset));
        return v;
      }
    });
  }
}

// Picks the loop for the call's cast and weight.
template <class In, class Out, class TW, class Acc>
void with_cast(const ForwardProblem& p) {
  const bool llama = p.cast == Cast::llama, has_w = p.weight != nullptr;
  if (llama && has_w) return fused_rows<In, Out, TW, Acc, true, true>(p);
  if (llama) return fused_rows<In, Out, TW, Acc, true, false>(p);
  if (has_w) return fused_rows<In, Out, TW, Acc, false, true>(p);
  fused_rows<In, Out, TW, Acc, false, false>(p);
}

// Picks the epilogue: the plain store, or the quantised one (f32 / f16 / bf16 x only).
template <class In, class TW, class TY, class Acc>
void with_epilogue(const ForwardProblem& p) {
  if constexpr (std::is_same_v<Acc, float>) {
    if (p.quantize && p.y_dtype == DType::f8e4m3) return with_cast<In, cpu::QuantizeRow<cpu::F8E4M3>, TW, Acc>(p);
    if (p.quantize) return with_cast<In, cpu::QuantizeRow<std::int8_t>, TW, Acc>(p);
  }
  with_cast<In, cpu::StoreRow<TY>, TW, Acc>(p);
}

// Picks the prologue: x itself, or the residual add (residual of x's dtype, or f32).
template <class TX, class TW, class TY, class Acc>
void with_prologue(const ForwardProblem& p) {
  if (!p.residual) return with_epilogue<cpu::LoadRow<TX>, TW, TY, Acc>(p);
  if constexpr (!std::is_same_v<TX, float> && !std::is_same_v<TX, double>) {
    if (p.r_dtype == DType::f32) return with_epilogue<cpu::ResidualAddRow<TX, float>, TW, TY, Acc>(p);
  }
  with_epilogue<cpu::ResidualAddRow<TX, TX>, TW, TY, Acc>(p);
}

// The fused forms' dtype dispatch (validate_fused_forward refused the rest). A quantised y
// picks the first TY of its (x, w): the store type is not used then.
void fused_forward(const ForwardProblem& p) {
  const DType x = p.x_dtype, w = p.w_dtype, y = p.y_dtype;
  if (x == DType::f32) return with_prologue<float, float, float, float>(p);
  if (x == DType::f64) return with_prologue<double, double, double, double>(p);
  if (x == DType::f16) {
    if (w == DType::f16) return with_prologue<F16, F16, F16, float>(p);
    if (y == DType::f32) return with_prologue<F16, float, float, float>(p);
    return with_prologue<F16, float, F16, float>(p);
  }
  if (w == DType::bf16) return with_prologue<BF16, BF16, BF16, float>(p);
  if (y == DType::f32) return with_prologue<BF16, float, float, float>(p);
  return with_prologue<BF16, float, BF16, float>(p);
}

}  // namespace

ForwardRows forward_rows_scalar(const ForwardProblem& p) { return pick_forward<ScalarForward>(p); }

namespace portable {
#include "cpu/quant_loops.inl"
}  // namespace portable

QuantLoops quant_loops_scalar() { return portable::quant_loops(); }

QuantLoops quant_loops() {
  const Isa isa = active_isa();
  QuantLoops loops{};
  if (isa == Isa::avx512) loops = quant_loops_avx512();
  if (isa == Isa::avx2) loops = quant_loops_avx2();
  return loops.amax_bits ? loops : quant_loops_scalar();
}

namespace {
ForwardRows forward_rows(const ForwardProblem& p, Isa isa) {
  ForwardRows rows = nullptr;
  if (isa == Isa::avx512) rows = forward_rows_avx512(p);
  if (isa == Isa::avx2) rows = forward_rows_avx2(p);
  return rows ? rows : forward_rows_scalar(p);
}

// The residual add with a plain store and a residual of x's dtype (the common form): each
// row's prologue, then the active instruction set's plain loop over that row of r_out,
// which is still in the cache. The bits are fused_rows': y of the residual add is forward()
// of r_out, and every loop follows lane_sum's order. (The f32 residual with 16-bit x, whose
// llama cast rounds to x's dtype, and the quantised store keep fused_rows.)
template <class TX>
void residual_add_rows(const ForwardProblem& p) {
  ForwardProblem norm = p;
  norm.x = p.residual_out;
  norm.x_batch_stride = p.r_out_batch_stride;
  norm.x_row_stride = p.r_out_row_stride;
  norm.residual = nullptr;
  norm.residual_out = nullptr;
  const ForwardRows rows = forward_rows(norm, active_isa());
  const ResidualAddRow<TX, TX> add{p};
  const std::int64_t m = p.total_rows(), n = p.cols;
  const bool stream = stream_output(static_cast<std::size_t>(m * n) * dtype_size(p.y_dtype));
  parallel_rows(m, m * n > 65536, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t row = begin; row < end; ++row) {
      add.row(row / p.rows, row % p.rows);
      rows(norm, row, row + 1, stream);
    }
  });
}

// Whether residual_add_rows serves the call (else fused_forward).
bool residual_add_on_row_loops(const ForwardProblem& p) { return p.residual && !p.quantize && p.r_dtype == p.x_dtype; }

void residual_add_forward(const ForwardProblem& p) {
  switch (p.x_dtype) {
    case DType::f32:
      return residual_add_rows<float>(p);
    case DType::f64:
      return residual_add_rows<double>(p);
    case DType::f16:
      return residual_add_rows<F16>(p);
    case DType::bf16:
      return residual_add_rows<BF16>(p);
    default:
      return fused_forward(p);  // not reached: validation allows no other x
  }
}
}  // namespace

}  // namespace cpu

void cpu_forward(const ForwardProblem& p) {
  if (cpu::residual_add_on_row_loops(p)) return cpu::residual_add_forward(p);
  if (p.fused()) return cpu::fused_forward(p);
  const cpu::ForwardRows rows = cpu::forward_rows(p, cpu::active_isa());
  const std::int64_t m = p.total_rows(), n = p.cols;
  const bool stream = cpu::stream_output(static_cast<std::size_t>(m * n) * dtype_size(p.y_dtype));
  cpu::parallel_rows(m, m * n > 65536, [&](std::int64_t begin, std::int64_t end) { rows(p, begin, end, stream); });
}

}  // namespace rmsnorm::detail
