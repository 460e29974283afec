// CPU backend of the backward pass. dx row by row in parallel; dw accumulated per chunk of
// rows into the caller's workspace, then the chunks are added in order. The chunking is a
// fixed function of the row count, so dw is bit-identical whatever the thread count. Each
// chunk's rows run through the active instruction set's loop (isa.h); this file holds the
// portable loop, whose order of operations the vector loops (simd_rows.inl) follow. The
// residual add's backward runs one portable loop with another gradient step (cpu/steps.h).
#include <algorithm>
#include <cstdint>

#include "cpu/kernels.h"
#include "cpu/numeric.h"
#include "cpu/parallel.h"
#include "cpu/partial_dw.h"
#include "cpu/steps.h"
#include "problem.h"

namespace rmsnorm::detail {
namespace cpu {
namespace {

constexpr std::int64_t kMaxChunks = 64;

std::int64_t chunk_count(std::int64_t total_rows) { return std::min(total_rows, kMaxChunks); }

// The portable loop. HAS_W (a weight) and WANT_DW (a dw output) are template parameters so
// that the row loops have no branch inside and vectorise.
template <class TX, class TW, bool HAS_W, bool WANT_DW>
struct ScalarBackward {
  using Acc = AccOf<TX>;
  static constexpr bool supported = true;

  static void run(const BackwardProblem& p, std::int64_t begin, std::int64_t end, void* partial, bool /*stream*/) {
    const std::int64_t n = p.cols;
    const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(n));
    const Acc eps = static_cast<Acc>(p.eps);
    const Acc offset = static_cast<Acc>(p.weight_offset);
    const TW* w = static_cast<const TW*>(p.weight);
    const Acc* rstd_in = static_cast<const Acc*>(p.rstd);
    Acc* acc = static_cast<Acc*>(partial);
    const auto weight = [&](std::int64_t j) {
      if constexpr (HAS_W) return to_acc<Acc>(w[j]) + offset;
      return Acc(1);
    };
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      const TX* dy = static_cast<const TX*>(p.dy) + b * p.dy_batch_stride + r * p.dy_row_stride;
      TX* dx = static_cast<TX*>(p.dx) + b * p.dx_batch_stride + r * p.dx_row_stride;
      const Acc rstd = rstd_in ? rstd_in[row]
                               : rstd_of(lane_sum<Acc>(n,
                                                       [&](std::int64_t j) {
                                                         const Acc v = to_acc<Acc>(x[j]);
                                                         return v * v;
                                                       }),
                                         inv_n, eps);
      const Acc gx =
          lane_sum<Acc>(n, [&](std::int64_t j) { return to_acc<Acc>(dy[j]) * weight(j) * to_acc<Acc>(x[j]); });
      const Acc coef = dx_coef(rstd, gx, inv_n);
      // dx may be dy: each element is read before it is written, by the same iteration.
      for (std::int64_t j = 0; j < n; ++j) {
        const Acc xv = to_acc<Acc>(x[j]);
        const Acc dyv = to_acc<Acc>(dy[j]);
        if constexpr (WANT_DW) acc[j] += dyv * xv * rstd;
        dx[j] = from_acc<TX>(canonical_nan(rstd * dyv * weight(j) - coef * xv));
      }
    }
  }
};

BackwardRows backward_rows(const BackwardProblem& p, Isa isa) {
  BackwardRows rows = nullptr;
  if (isa == Isa::avx512) rows = backward_rows_avx512(p);
  if (isa == Isa::avx2) rows = backward_rows_avx2(p);
  return rows ? rows : backward_rows_scalar(p);
}

template <class Acc>
void run_backward(const BackwardProblem& p) {
  const BackwardRows rows = backward_rows(p, active_isa());
  const std::int64_t m = p.total_rows(), n = p.cols, chunks = chunk_count(m);
  Acc* partial = p.dw ? static_cast<Acc*>(p.workspace) : nullptr;  // chunks x n
  const bool stream = stream_output(static_cast<std::size_t>(m * n) * dtype_size(p.x_dtype));
  parallel_rows(chunks, m * n > 65536, [&](std::int64_t first, std::int64_t last) {
    for (std::int64_t c = first; c < last; ++c) {
      Acc* acc = partial ? partial + c * n : nullptr;
      if (acc) std::fill(acc, acc + n, Acc(0));
      rows(p, c * m / chunks, (c + 1) * m / chunks, acc, stream);
    }
  });
  if (!p.dw) return;
  if constexpr (std::is_same_v<Acc, double>) {
    finish_dw<double, double>(p, partial, chunks);
  } else {
    if (p.dw_dtype == DType::f16) return finish_dw<float, F16>(p, partial, chunks);
    if (p.dw_dtype == DType::bf16) return finish_dw<float, BF16>(p, partial, chunks);
    finish_dw<float, float>(p, partial, chunks);
  }
}

// The row loop of the residual add's backward (the plain backward takes the instruction-set
// loops above; its sums and dx are the portable loop's). TX is the norm input's dtype (x, or r_out); `Grad`
// (cpu/steps.h) reads dy and stores dx. HAS_W (a weight) and WANT_DW (a dw output) are template parameters so that the
// row loops have no branch inside and vectorise.
template <class TX, class Grad, class TW, class TDW, class Acc, bool HAS_W, bool WANT_DW>
void fused_rows(const BackwardProblem& p) {
  const std::int64_t m = p.total_rows(), n = p.cols;
  const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(n));
  const Acc eps = static_cast<Acc>(p.eps);
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);
  const Acc* rstd_in = static_cast<const Acc*>(p.rstd);
  const std::int64_t chunks = chunk_count(m);
  Acc* partial = static_cast<Acc*>(p.workspace);  // chunks x n, when dw is wanted
  const auto weight = [&](std::int64_t j) {
    if constexpr (HAS_W) return cpu::to_acc<Acc>(w[j]) + offset;
    return Acc(1);
  };
  const Grad grad{p};

#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t c = 0; c < chunks; ++c) {
    Acc* acc = WANT_DW ? partial + c * n : nullptr;
    if constexpr (WANT_DW) std::fill(acc, acc + n, Acc(0));
    for (std::int64_t row = c * m / chunks; row < (c + 1) * m / chunks; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      const auto g = grad.row(b, r);
      const auto* dy = g.dy;
      const Acc rstd = rstd_in ? rstd_in[row]
                               : cpu::rstd_of(cpu::lane_sum<Acc>(n,
                                                                 [&](std::int64_t j) {
                                                                   const Acc v = cpu::to_acc<Acc>(x[j]);
                                                                   return v * v;
                                                                 }),
                                              inv_n, eps);
      const Acc gx = cpu::lane_sum<Acc>(
          n, [&](std::int64_t j) { return cpu::to_acc<Acc>(dy[j]) * weight(j) * cpu::to_acc<Acc>(x[j]); });
      const Acc coef = cpu::dx_coef(rstd, gx, inv_n);
      // dx may be dy: each element is read before it is written, by the same iteration.
      for (std::int64_t j = 0; j < n; ++j) {
        const Acc xv = cpu::to_acc<Acc>(x[j]);
        const Acc dyv = cpu::to_acc<Acc>(dy[j]);
        if constexpr (WANT_DW) acc[j] += dyv * xv * rstd;
        g.store(j, rstd * dyv * weight(j) - coef * xv);
      }
    }
  }
  if constexpr (WANT_DW) finish_dw<Acc, TDW>(p, partial, chunks);
}

// Picks the loop for the call's weight and dw.
template <class TX, class Grad, class TW, class TDW, class Acc>
void with_weight(const BackwardProblem& p) {
  if (p.dw) return fused_rows<TX, Grad, TW, TDW, Acc, true, true>(p);  // dw needs a weight
  if (p.weight) return fused_rows<TX, Grad, TW, TDW, Acc, true, false>(p);
  fused_rows<TX, Grad, TW, TDW, Acc, false, false>(p);
}

// Picks the gradient step: the plain dx, or the residual add's (dx of TD, x's dtype, which is
// TX's or 16-bit with an f32 r_out; dr of TX when asked for).
template <class TX, class TW, class TDW, class Acc>
void with_grad(const BackwardProblem& p) {
  using cpu::BF16;
  using cpu::F16;
  if (!p.dr_out) return with_weight<TX, cpu::PlainGrad<TX>, TW, TDW, Acc>(p);
  if constexpr (std::is_same_v<TX, float>) {
    if (p.dx_dtype == DType::f16 && p.dr) return with_weight<TX, cpu::ResidualGrad<F16, float, true>, TW, TDW, Acc>(p);
    if (p.dx_dtype == DType::f16) return with_weight<TX, cpu::ResidualGrad<F16, float, false>, TW, TDW, Acc>(p);
    if (p.dx_dtype == DType::bf16 && p.dr)
      return with_weight<TX, cpu::ResidualGrad<BF16, float, true>, TW, TDW, Acc>(p);
    if (p.dx_dtype == DType::bf16) return with_weight<TX, cpu::ResidualGrad<BF16, float, false>, TW, TDW, Acc>(p);
  }
  if (p.dr) return with_weight<TX, cpu::ResidualGrad<TX, TX, true>, TW, TDW, Acc>(p);
  with_weight<TX, cpu::ResidualGrad<TX, TX, false>, TW, TDW, Acc>(p);
}

// The residual add's backward: its dtype dispatch (validate refused the rest).
void fused_backward(const BackwardProblem& p) {
  using cpu::BF16;
  using cpu::F16;
  const DType x = p.x_dtype, w = p.w_dtype, dw = p.dw_dtype;
  if (x == DType::f32) {
    // A 16-bit weight with an f32 norm input: the residual add's backward with an f32
    // residual stream and 16-bit activations (the weight has x's dtype).
    if (w == DType::f16)
      return dw == DType::f16 ? with_grad<float, F16, F16, float>(p) : with_grad<float, F16, float, float>(p);
    if (w == DType::bf16)
      return dw == DType::bf16 ? with_grad<float, BF16, BF16, float>(p) : with_grad<float, BF16, float, float>(p);
    return with_grad<float, float, float, float>(p);
  }
  if (x == DType::f64) return with_grad<double, double, double, double>(p);
  if (x == DType::f16) {
    if (w != DType::f16) return with_grad<F16, float, float, float>(p);
    if (dw == DType::f16) return with_grad<F16, F16, F16, float>(p);
    return with_grad<F16, F16, float, float>(p);
  }
  if (w != DType::bf16) return with_grad<BF16, float, float, float>(p);
  if (dw == DType::bf16) return with_grad<BF16, BF16, BF16, float>(p);
  return with_grad<BF16, BF16, float, float>(p);
}

}  // namespace

BackwardRows backward_rows_scalar(const BackwardProblem& p) { return pick_backward<ScalarBackward>(p); }

}  // namespace cpu

std::size_t cpu_backward_workspace(std::int64_t total_rows, std::int64_t cols, bool want_dw, DType x_dtype) {
  if (!want_dw || total_rows == 0) return 0;
  const std::size_t acc = x_dtype == DType::f64 ? sizeof(double) : sizeof(float);
  return static_cast<std::size_t>(cpu::chunk_count(total_rows) * cols) * acc;
}

void cpu_backward(const BackwardProblem& p) {
  if (p.fused()) return cpu::fused_backward(p);
  if (p.x_dtype == DType::f64) return cpu::run_backward<double>(p);
  cpu::run_backward<float>(p);
}

}  // namespace rmsnorm::detail
