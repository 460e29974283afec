// The row loops of the CPU backend, one set per instruction set (isa.h), and the one place
// that maps a problem's dtypes, cast and weight to the loop instantiated for them.
//
// forward.cpp and backward.cpp own the parallel loops over rows (OpenMP, static schedule)
// and call the active instruction set's loop on each thread's share of the rows.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cpu/isa.h"
#include "cpu/numeric.h"
#include "problem.h"

// The vector loops need x86-64 and GCC's or Clang's target attributes and intrinsics.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define RMSNORM_CPU_X86 1
#else
#define RMSNORM_CPU_X86 0
#endif

namespace rmsnorm::detail::cpu {

// Computes rows [begin, end) of the problem (counted over batch * rows). With `stream`, the
// loop may write y with non-temporal stores (a call whose output overflows the caches).
using ForwardRows = void (*)(const ForwardProblem& p, std::int64_t begin, std::int64_t end, bool stream);

// Computes dx for rows [begin, end) and, when `partial` is not null, adds each row's
// dy * x * rstd to partial[0, cols) (the accumulator type's array of the rows' chunk).
using BackwardRows = void (*)(const BackwardProblem& p, std::int64_t begin, std::int64_t end, void* partial,
                              bool stream);

// The loops of each instruction set for the problem; nullptr when the instruction set has
// none for its dtypes (the vector loops leave f64 to the portable ones) or the build lacks it.
ForwardRows forward_rows_scalar(const ForwardProblem& p);
ForwardRows forward_rows_avx2(const ForwardProblem& p);
ForwardRows forward_rows_avx512(const ForwardProblem& p);
BackwardRows backward_rows_scalar(const BackwardProblem& p);
BackwardRows backward_rows_avx2(const BackwardProblem& p);
BackwardRows backward_rows_avx512(const BackwardProblem& p);

// The quantised store's loops over a row's fp32 values (quant_loops.inl), per instruction
// set: quant_loops() gives the active one's.
struct QuantLoops {
  std::uint32_t (*amax_bits)(const float* y, std::int64_t n);
  void (*to_f8)(const float* y, std::int64_t n, float s, float r, bool multiply, std::uint8_t* q);
  void (*to_i8)(const float* y, std::int64_t n, float s, float r, bool multiply, std::int8_t* q);
};
QuantLoops quant_loops_scalar();
QuantLoops quant_loops_avx2();    // amax_bits null where this build has no AVX2 loops
QuantLoops quant_loops_avx512();  // likewise
QuantLoops quant_loops();

// ---------------------------------------------------------------------------------------
// From a problem to a loop: Loops is a class template over the element types and modes
// (x, weight, y; the llama cast; a weight) with a static `run` and a static bool
// `supported`. The cast and the weight's presence are template parameters so that the
// loops have no branch inside.
// ---------------------------------------------------------------------------------------

template <template <class, class, class, bool, bool> class Loops, class TX, class TW, class TY>
ForwardRows pick_forward_mode(const ForwardProblem& p) {
  if constexpr (!Loops<TX, TW, TY, false, false>::supported) {
    return nullptr;
  } else {
    const bool llama = p.cast == Cast::llama, has_w = p.weight != nullptr;
    if (llama && has_w) return &Loops<TX, TW, TY, true, true>::run;
    if (llama) return &Loops<TX, TW, TY, true, false>::run;
    if (has_w) return &Loops<TX, TW, TY, false, true>::run;
    return &Loops<TX, TW, TY, false, false>::run;
  }
}

template <template <class, class, class, bool, bool> class Loops>
ForwardRows pick_forward(const ForwardProblem& p) {
  const DType x = p.x_dtype, w = p.w_dtype, y = p.y_dtype;
  // The supported combinations (validate_forward refused the rest).
  if (x == DType::f32) return pick_forward_mode<Loops, float, float, float>(p);
  if (x == DType::f64) return pick_forward_mode<Loops, double, double, double>(p);
  if (x == DType::f16) {
    if (w == DType::f16) return pick_forward_mode<Loops, F16, F16, F16>(p);
    if (y == DType::f16) return pick_forward_mode<Loops, F16, float, F16>(p);
    return pick_forward_mode<Loops, F16, float, float>(p);
  }
  if (w == DType::bf16) return pick_forward_mode<Loops, BF16, BF16, BF16>(p);
  if (y == DType::bf16) return pick_forward_mode<Loops, BF16, float, BF16>(p);
  return pick_forward_mode<Loops, BF16, float, float>(p);
}

// The backward's loops are over (x, weight; a weight, a dw output). dw's own dtype only
// matters when the partial rows are added up (backward.cpp).
template <template <class, class, bool, bool> class Loops, class TX, class TW>
BackwardRows pick_backward_mode(const BackwardProblem& p) {
  if constexpr (!Loops<TX, TW, false, false>::supported) {
    return nullptr;
  } else {
    if (p.dw) return &Loops<TX, TW, true, true>::run;  // dw needs a weight
    if (p.weight) return &Loops<TX, TW, true, false>::run;
    return &Loops<TX, TW, false, false>::run;
  }
}

template <template <class, class, bool, bool> class Loops>
BackwardRows pick_backward(const BackwardProblem& p) {
  const DType x = p.x_dtype, w = p.w_dtype;
  if (x == DType::f32) return pick_backward_mode<Loops, float, float>(p);
  if (x == DType::f64) return pick_backward_mode<Loops, double, double>(p);
  if (x == DType::f16)
    return w == DType::f16 ? pick_backward_mode<Loops, F16, F16>(p) : pick_backward_mode<Loops, F16, float>(p);
  return w == DType::bf16 ? pick_backward_mode<Loops, BF16, BF16>(p) : pick_backward_mode<Loops, BF16, float>(p);
}

// The accumulator type: f64 for f64 data, else f32.
template <class TX>
using AccOf = std::conditional_t<std::is_same_v<TX, double>, double, float>;

}  // namespace rmsnorm::detail::cpu
