// The instruction sets of the CPU backend. One build runs on any x86-64 (or other) CPU: the
// portable loops (forward.cpp, backward.cpp) are always there, and on x86-64 with GCC or
// Clang the same loops exist for AVX2 + F16C and for AVX-512 (F, BW, VL), compiled for those
// instruction sets only (kernels_avx2.cpp, kernels_avx512.cpp). Each call takes the loops
// of the active instruction set, chosen once per process.
//
// Every path computes every element with the same operations in the same order (sums in
// the 16 lanes of cpu::lane_sum, no fused multiply-add anywhere), so the bits of a result
// do not depend on the path; tests/test_cpu_paths.cpp checks that.
#pragma once

namespace rmsnorm::detail::cpu {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

// "scalar", "avx2", "avx512".
const char* isa_name(Isa isa);

// Whether this build has the loops for `isa` and the CPU (and the OS) can run them.
bool isa_available(Isa isa);

// The instruction set CPU calls use. Chosen at the first call: the environment variable
// RMSNORM_CPU_ISA (scalar, avx2 or avx512; one the CPU lacks gives the best available one
// below it; any other value is ignored), else the best available.
Isa active_isa();

// Makes the following CPU calls use `isa`, or the best available one below it; returns the
// instruction set active before. For tests and benchmarks that compare the paths; not to be
// called while another thread is inside a CPU call.
Isa set_active_isa(Isa isa);

}  // namespace rmsnorm::detail::cpu
