// CPU backend of the sharded-row steps (rows whose columns are split across ranks): the
// per-row partial sums, and the forward and backward given the reduced sums.
//
// Each step computes what forward.cpp and backward.cpp compute, in the same order, except
// that the row's sum comes from outside: a row's shard is summed with the same lane_sum, and
// rstd, dx and the dw chunks use the same expressions, so one shard holding whole rows gives
// forward's and backward's bits (the tests check this). Keep the two files in step.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/numeric.h"
#include "cpu/partial_dw.h"
#include "sharded_problem.h"

namespace rmsnorm::detail {
namespace {

// ---------------------------------------------------------------------------------------
// Partial sums
// ---------------------------------------------------------------------------------------

// Without dy: sum of x^2 (partial_sum_squares). With dy: sum of dy * (w + offset) * x
// (partial_grad_dot), the product in backward.cpp's order.
template <class TX, class TW, class Acc, bool DOT, bool HAS_W>
void partial_sums(const PartialSumsProblem& p) {
  const std::int64_t m = p.total_rows(), n = p.cols;
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);
  Acc* sums = static_cast<Acc*>(p.sums);
#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t row = 0; row < m; ++row) {
    const std::int64_t b = row / p.rows, r = row % p.rows;
    const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
    if constexpr (!DOT) {
      sums[row] = cpu::lane_sum<Acc>(n, [&](std::int64_t j) {
        const Acc v = cpu::to_acc<Acc>(x[j]);
        return v * v;
      });
    } else {
      const TX* dy = static_cast<const TX*>(p.dy) + b * p.dy_batch_stride + r * p.dy_row_stride;
      sums[row] = cpu::lane_sum<Acc>(n, [&](std::int64_t j) {
        Acc weight = Acc(1);
        if constexpr (HAS_W) weight = cpu::to_acc<Acc>(w[j]) + offset;
        return cpu::to_acc<Acc>(dy[j]) * weight * cpu::to_acc<Acc>(x[j]);
      });
    }
  }
}

template <class TX, class TW, class Acc>
void partial_sums(const PartialSumsProblem& p) {
  if (!p.dy) return partial_sums<TX, TW, Acc, false, false>(p);
  if (p.weight) return partial_sums<TX, TW, Acc, true, true>(p);
  partial_sums<TX, TW, Acc, true, false>(p);
}

// ---------------------------------------------------------------------------------------
// Forward from the sums of squares
// ---------------------------------------------------------------------------------------

template <class TX, class TW, class TY, class Acc, bool LLAMA, bool HAS_W>
void forward_rows(const ForwardFromSumsProblem& q) {
  const ForwardProblem& p = q.forward;
  const std::int64_t m = p.total_rows(), n = p.cols;
  // The mean is over the whole row: 1 / full_cols, not 1 / (the shard's) cols.
  const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(q.full_cols));
  const Acc eps = static_cast<Acc>(p.eps);
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);
  const Acc* sums = static_cast<const Acc*>(q.sums);

#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t row = 0; row < m; ++row) {
    const std::int64_t b = row / p.rows, r = row % p.rows;
    const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
    TY* y = static_cast<TY*>(p.y) + b * p.y_batch_stride + r * p.y_row_stride;
    const Acc rstd = cpu::rstd_of(sums[row], inv_n, eps);
    if (p.rstd) static_cast<Acc*>(p.rstd)[row] = rstd;
    // y may be x: each element is read before it is written, by the same iteration.
    for (std::int64_t j = 0; j < n; ++j) {
      if constexpr (!LLAMA) {
        Acc v = cpu::to_acc<Acc>(x[j]) * rstd;
        if constexpr (HAS_W) v *= cpu::to_acc<Acc>(w[j]) + offset;
        y[j] = cpu::from_acc<TY>(cpu::canonical_nan(v));
      } else {
        // Hugging Face's steps, as in forward.cpp.
        Acc v = cpu::round_as<TX>(cpu::to_acc<Acc>(x[j]) * rstd);
        if constexpr (HAS_W)
          v = cpu::round_as<cpu::Promoted<TX, TW>>(v * cpu::round_as<TW>(cpu::to_acc<Acc>(w[j]) + offset));
        y[j] = cpu::from_acc<TY>(cpu::canonical_nan(v));
      }
    }
  }
}

template <class TX, class TW, class TY, class Acc>
void forward_rows(const ForwardFromSumsProblem& q) {
  const bool llama = q.forward.cast == Cast::llama, has_w = q.forward.weight != nullptr;
  if (llama && has_w) return forward_rows<TX, TW, TY, Acc, true, true>(q);
  if (llama) return forward_rows<TX, TW, TY, Acc, true, false>(q);
  if (has_w) return forward_rows<TX, TW, TY, Acc, false, true>(q);
  forward_rows<TX, TW, TY, Acc, false, false>(q);
}

// ---------------------------------------------------------------------------------------
// Backward from the row dots
// ---------------------------------------------------------------------------------------

template <class TX, class TW, class TDW, class Acc, bool HAS_W, bool WANT_DW>
void backward_rows(const BackwardFromSumsProblem& q) {
  const BackwardProblem& p = q.backward;
  const std::int64_t m = p.total_rows(), n = p.cols;
  const Acc inv_n = static_cast<Acc>(1.0 / static_cast<double>(q.full_cols));
  const Acc offset = static_cast<Acc>(p.weight_offset);
  const TW* w = static_cast<const TW*>(p.weight);
  const Acc* rstd_in = static_cast<const Acc*>(p.rstd);
  const Acc* dots = static_cast<const Acc*>(q.dots);
  // dw's chunks of rows are backward.cpp's: as many as its workspace holds partial rows of.
  const std::int64_t chunks = m == 0 ? 0
                                     : static_cast<std::int64_t>(cpu_backward_workspace(m, n, true, p.x_dtype) /
                                                                 (static_cast<std::size_t>(n) * sizeof(Acc)));
  Acc* partial = static_cast<Acc*>(p.workspace);  // chunks x n, when dw is wanted
  const auto weight = [&](std::int64_t j) {
    if constexpr (HAS_W) return cpu::to_acc<Acc>(w[j]) + offset;
    return Acc(1);
  };

#pragma omp parallel for schedule(static) if (m * n > 65536)
  for (std::int64_t c = 0; c < chunks; ++c) {
    Acc* acc = WANT_DW ? partial + c * n : nullptr;
    if constexpr (WANT_DW) std::fill(acc, acc + n, Acc(0));
    for (std::int64_t row = c * m / chunks; row < (c + 1) * m / chunks; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      const TX* dy = static_cast<const TX*>(p.dy) + b * p.dy_batch_stride + r * p.dy_row_stride;
      TX* dx = static_cast<TX*>(p.dx) + b * p.dx_batch_stride + r * p.dx_row_stride;
      const Acc rstd = rstd_in[row];
      const Acc coef = cpu::dx_coef(rstd, dots[row], inv_n);
      // dx may be dy: each element is read before it is written, by the same iteration.
      for (std::int64_t j = 0; j < n; ++j) {
        const Acc xv = cpu::to_acc<Acc>(x[j]);
        const Acc dyv = cpu::to_acc<Acc>(dy[j]);
        if constexpr (WANT_DW) acc[j] += dyv * xv * rstd;
        dx[j] = cpu::from_acc<TX>(cpu::canonical_nan(rstd * dyv * weight(j) - coef * xv));
      }
    }
  }
  if constexpr (WANT_DW) cpu::finish_dw<Acc, TDW>(p, partial, chunks);
}

template <class TX, class TW, class TDW, class Acc>
void backward_rows(const BackwardFromSumsProblem& q) {
  if (q.backward.dw) return backward_rows<TX, TW, TDW, Acc, true, true>(q);  // dw needs a weight
  if (q.backward.weight) return backward_rows<TX, TW, TDW, Acc, true, false>(q);
  backward_rows<TX, TW, TDW, Acc, false, false>(q);
}

}  // namespace

// The dtype combinations are those of cpu_forward and cpu_backward (validation refused the rest).

void cpu_partial_sums(const PartialSumsProblem& p) {
  using cpu::BF16;
  using cpu::F16;
  const DType x = p.x_dtype, w = p.w_dtype;
  if (x == DType::f32) return partial_sums<float, float, float>(p);
  if (x == DType::f64) return partial_sums<double, double, double>(p);
  if (x == DType::f16) return w == DType::f16 ? partial_sums<F16, F16, float>(p) : partial_sums<F16, float, float>(p);
  if (w == DType::bf16) return partial_sums<BF16, BF16, float>(p);
  partial_sums<BF16, float, float>(p);
}

void cpu_forward_from_sums(const ForwardFromSumsProblem& q) {
  using cpu::BF16;
  using cpu::F16;
  const DType x = q.forward.x_dtype, w = q.forward.w_dtype, y = q.forward.y_dtype;
  if (x == DType::f32) return forward_rows<float, float, float, float>(q);
  if (x == DType::f64) return forward_rows<double, double, double, double>(q);
  if (x == DType::f16) {
    if (w == DType::f16) return forward_rows<F16, F16, F16, float>(q);
    if (y == DType::f16) return forward_rows<F16, float, F16, float>(q);
    return forward_rows<F16, float, float, float>(q);
  }
  if (w == DType::bf16) return forward_rows<BF16, BF16, BF16, float>(q);
  if (y == DType::bf16) return forward_rows<BF16, float, BF16, float>(q);
  forward_rows<BF16, float, float, float>(q);
}

void cpu_backward_from_sums(const BackwardFromSumsProblem& q) {
  using cpu::BF16;
  using cpu::F16;
  const DType x = q.backward.x_dtype, w = q.backward.w_dtype, dw = q.backward.dw_dtype;
  if (x == DType::f32) return backward_rows<float, float, float, float>(q);
  if (x == DType::f64) return backward_rows<double, double, double, double>(q);
  if (x == DType::f16) {
    if (w != DType::f16) return backward_rows<F16, float, float, float>(q);
    if (dw == DType::f16) return backward_rows<F16, F16, F16, float>(q);
    return backward_rows<F16, F16, float, float>(q);
  }
  if (w != DType::bf16) return backward_rows<BF16, float, float, float>(q);
  if (dw == DType::bf16) return backward_rows<BF16, BF16, BF16, float>(q);
  backward_rows<BF16, BF16, float, float>(q);
}

}  // namespace rmsnorm::detail
