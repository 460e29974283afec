// The CPU backend's row loops for AVX-512 (F, BW, VL) and F16C: simd_rows.inl over simd_avx512.h's
// blocks. Only the functions defined between the target pragmas below may use these
// instructions; everything they call from outside (numeric.h, the standard library) is
// compiled for the baseline, so nothing of this file can leak into code that runs on a CPU
// without them. isa.cpp calls these loops only when the CPU has the instructions.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

#if RMSNORM_CPU_X86

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
// GCC 12's own intrinsics headers trip this warning (GCC bug 105593, their
// _mm*_undefined_* placeholders); it says nothing about this code.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,f16c")
#endif

#include "cpu/simd_avx512.h"

namespace rmsnorm::detail::cpu::avx512 {
#include "cpu/quant_loops.inl"
#include "cpu/simd_rows.inl"
}  // namespace rmsnorm::detail::cpu::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace rmsnorm::detail::cpu {
ForwardRows forward_rows_avx512(const ForwardProblem& p) { return pick_forward<avx512::Forward>(p); }
BackwardRows backward_rows_avx512(const BackwardProblem& p) { return pick_backward<avx512::Backward>(p); }
QuantLoops quant_loops_avx512() { return avx512::quant_loops(); }
}  // namespace rmsnorm::detail::cpu

#else  // no vector loops in this build

namespace rmsnorm::detail::cpu {
ForwardRows forward_rows_avx512(const ForwardProblem&) { return nullptr; }
BackwardRows backward_rows_avx512(const BackwardProblem&) { return nullptr; }
QuantLoops quant_loops_avx512() { return {}; }
}  // namespace rmsnorm::detail::cpu

#endif
