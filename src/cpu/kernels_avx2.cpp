// The CPU backend's row loops for AVX2 and F16C (no FMA: a fused multiply-add would round differently from the portable
// loops): simd_rows.inl over simd_avx2.h's blocks. Only the functions defined between the target pragmas below may use
// these instructions; everything they call from outside (numeric.h, the standard library) is compiled for the baseline,
// so nothing of this file can leak into code that runs on a CPU without them. isa.cpp calls these loops only when the
// CPU has the instructions.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

#if RMSNORM_CPU_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12's own intrinsics headers trip this warning (GCC bug 105593, their
// _mm*_undefined_* placeholders); it says nothing about this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx2,f16c")
#endif

#include "cpu/simd_avx2.h"

namespace rmsnorm::detail::cpu::avx2 {
#include "cpu/quant_loops.inl"
#include "cpu/simd_rows.inl"
}  // namespace rmsnorm::detail::cpu::avx2

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace rmsnorm::detail::cpu {
ForwardRows forward_rows_avx2(const ForwardProblem& p) { return pick_forward<avx2::Forward>(p); }
BackwardRows backward_rows_avx2(const BackwardProblem& p) { return pick_backward<avx2::Backward>(p); }
QuantLoops quant_loops_avx2() { return avx2::quant_loops(); }
}  // namespace rmsnorm::detail::cpu

#else  // no vector loops in this build

namespace rmsnorm::detail::cpu {
ForwardRows forward_rows_avx2(const ForwardProblem&) { return nullptr; }
BackwardRows backward_rows_avx2(const BackwardProblem&) { return nullptr; }
QuantLoops quant_loops_avx2() { return {}; }
}  // namespace rmsnorm::detail::cpu

#endif
