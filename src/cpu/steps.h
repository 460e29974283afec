// The steps the CPU row loops are instantiated with (forward.cpp, backward.cpp): the
// fusions are not loops of their own but a different way into and out of the one loop.
//
// Forward, per row:  prologue.row(b, r)          -> the row the norm reads
//                    (the loop: sum of squares in lane_sum order, rstd, the values y_j)
//                    epilogue.row(b, r, row, y)   <- y(j), the value before any store rounding
// Backward, per row: grad.row(b, r)              -> dy to read, and where dnorm_j goes
//
// A step touches the elements of its row only, in column order, so results depend on the
// row's values alone (never on the layout, the thread count or the row's position).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/numeric.h"
#include "cpu/quantize.h"
#include "problem.h"

namespace rmsnorm::detail::cpu {

template <class T>
inline T* element_row(const void* base, std::int64_t b, std::int64_t r, std::int64_t batch_stride,
                      std::int64_t row_stride) {
  return static_cast<T*>(const_cast<void*>(base)) + b * batch_stride + r * row_stride;
}

// ---------------------------------------------------------------------------------------
// Forward prologues: `In` is the dtype the norm reads, `Round` the one Cast::llama rounds
// the normalised row to (x's dtype in every case).
// ---------------------------------------------------------------------------------------

// The plain forward: the row is x.
template <class TX>
struct LoadRow {
  using In = TX;
  using Round = TX;
  const ForwardProblem& p;
  const TX* row(std::int64_t b, std::int64_t r) const {
    return element_row<const TX>(p.x, b, r, p.x_batch_stride, p.x_row_stride);
  }
};

// The residual add: r_out = x + residual in the accumulator type (fp32; fp64 for f64),
// rounded once to the residual's dtype TR and stored; the norm then reads the stored r_out,
// so y is the norm of exactly what the next layer reads. r_out may be the residual itself,
// and y may be x: every element of x and the residual is read before r_out's is written (the
// same iteration), and y is written only after the whole row of r_out. For
// fused_allreduce_add_forward x is the ranks' sum of their partials, never rounded before
// the residual is added (y and r_out may alias no partial there).
template <class TX, class TR>
struct ResidualAddRow {
  using In = TR;
  using Round = TX;
  using Acc = std::conditional_t<std::is_same_v<TR, double>, double, float>;
  const ForwardProblem& p;
  const TR* row(std::int64_t b, std::int64_t r) const {
    const TX* x = element_row<const TX>(p.x, b, r, p.x_batch_stride, p.x_row_stride);
    const TR* res = element_row<const TR>(p.residual, b, r, p.r_batch_stride, p.r_row_stride);
    TR* out = element_row<TR>(p.residual_out, b, r, p.r_out_batch_stride, p.r_out_row_stride);
    if (p.ranks <= 1) {
      for (std::int64_t j = 0; j < p.cols; ++j) out[j] = from_acc<TR>(to_acc<Acc>(x[j]) + to_acc<Acc>(res[j]));
      return out;
    }
    // The ranks' sum (fused_allreduce_add_forward): their partials added in rank order, then
    // the residual, one rounding at the end.
    const TX* parts[ForwardProblem::kMaxRanks];
    for (int k = 0; k < p.ranks; ++k)
      parts[k] = element_row<const TX>(p.rank_x[k], b, r, p.x_batch_stride, p.x_row_stride);
    for (std::int64_t j = 0; j < p.cols; ++j) {
      Acc s = to_acc<Acc>(parts[0][j]);
      for (int k = 1; k < p.ranks; ++k) s += to_acc<Acc>(parts[k][j]);
      out[j] = from_acc<TR>(s + to_acc<Acc>(res[j]));
    }
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// Forward epilogues: `value(j)` is y_j in the accumulator type, after the cast's own
// roundings and before the store's.
// ---------------------------------------------------------------------------------------

// The plain store: y_j rounded once to y's dtype. y may be x: value(j) reads element j
// before the same iteration writes it.
template <class TY>
struct StoreRow {
  const ForwardProblem& p;
  template <class Value>
  void row(std::int64_t b, std::int64_t r, std::int64_t /*row*/, Value value) const {
    TY* y = element_row<TY>(p.y, b, r, p.y_batch_stride, p.y_row_stride);
    for (std::int64_t j = 0; j < p.cols; ++j) y[j] = from_acc<TY>(canonical_nan(value(j)));
  }
};

// The quantised store (TQ: F8E4M3 or std::int8_t), y_j in fp32: with the static scale, or
// group by group (per_row: one group of the whole row) with a scale computed from the
// group's max |y_j|, which is written to the scales. The row's y_j are evaluated once into a
// buffer of the thread's, which the active instruction set's loops (quant_loops.inl) read
// for the maxima and the codes.
template <class TQ>
struct QuantizeRow {
  const ForwardProblem& p;
  const QuantLoops loops = quant_loops();  // the active instruction set's, once a call
  template <class Value>
  void row(std::int64_t b, std::int64_t r, std::int64_t row, Value value) const {
    TQ* q = element_row<TQ>(p.y, b, r, p.y_batch_stride, p.y_row_stride);
    thread_local std::vector<float> values;
    values.resize(static_cast<std::size_t>(p.cols));
    float* y = values.data();
    for (std::int64_t j = 0; j < p.cols; ++j) y[j] = value(j);
    const auto encode = [&](std::int64_t begin, std::int64_t n, const Divisor& d) {
      if constexpr (std::is_same_v<TQ, F8E4M3>)
        loops.to_f8(y + begin, n, d.s, d.r, d.multiply, reinterpret_cast<std::uint8_t*>(q + begin));
      else
        loops.to_i8(y + begin, n, d.s, d.r, d.multiply, q + begin);
    };
    if (p.quant_scale == QuantScale::static_tensor) return encode(0, p.cols, Divisor(*p.scales, p.reciprocal));
    const std::int64_t g_size = p.group_size;
    for (std::int64_t g = 0; g < p.groups(); ++g) {
      const std::int64_t begin = g * g_size;
      // max |y_j| over the group, a NaN y_j ignored (it quantises to NaN (fp8) or 0 (int8))
      const float amax = bits_to_float(loops.amax_bits(y + begin, g_size));
      const float s = dynamic_scale<TQ>(amax, p.scale_ub, p.pow2_scales);
      p.scales[row * p.scale_row_stride + g * p.scale_group_stride] = s;
      encode(begin, g_size, Divisor(s, p.reciprocal));
    }
  }
};

// ---------------------------------------------------------------------------------------
// Backward gradient steps: where dy comes from and where dnorm_j (in the accumulator type)
// goes. dx may be dy (or dr_out): element j is read before the same iteration writes it.
// ---------------------------------------------------------------------------------------

// The plain backward: dy and dx of the norm input's dtype; dx_j = dnorm_j.
template <class TD>
struct PlainGrad {
  const BackwardProblem& p;
  struct Row {
    const TD* dy;
    TD* dx;
    template <class Acc>
    void store(std::int64_t j, Acc dnorm) const {
      dx[j] = from_acc<TD>(dnorm);
    }
  };
  Row row(std::int64_t b, std::int64_t r) const {
    return {element_row<const TD>(p.dy, b, r, p.dy_batch_stride, p.dy_row_stride),
            element_row<TD>(p.dx, b, r, p.dx_batch_stride, p.dx_row_stride)};
  }
};

// The residual add's backward: x and the residual both receive dnorm_j + dr_out_j, added in
// the accumulator type and rounded once, to dx's dtype TD and (when dr is asked for) to the
// residual's TR.
template <class TD, class TR, bool WANT_DR>
struct ResidualGrad {
  const BackwardProblem& p;
  struct Row {
    const TD* dy;
    TD* dx;
    const TR* dr_out;
    TR* dr;
    template <class Acc>
    void store(std::int64_t j, Acc dnorm) const {
      const Acc g = dnorm + to_acc<Acc>(dr_out[j]);
      dx[j] = from_acc<TD>(g);
      if constexpr (WANT_DR) dr[j] = from_acc<TR>(g);
    }
  };
  Row row(std::int64_t b, std::int64_t r) const {
    return {element_row<const TD>(p.dy, b, r, p.dy_batch_stride, p.dy_row_stride),
            element_row<TD>(p.dx, b, r, p.dx_batch_stride, p.dx_row_stride),
            element_row<const TR>(p.dr_out, b, r, p.dr_out_batch_stride, p.dr_out_row_stride),
            WANT_DR ? element_row<TR>(p.dr, b, r, p.dr_batch_stride, p.dr_row_stride) : nullptr};
  }
};

}  // namespace rmsnorm::detail::cpu
