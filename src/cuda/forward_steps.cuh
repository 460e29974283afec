// The forward's fusions, as steps of its kernels (forward_kernels.cuh) rather than kernels of
// their own: a prologue that produces the row the norm reads (the residual add) and an
// epilogue that consumes the row's fp32 values (the quantised store). Every strategy takes
// the same steps, so a fused row is reduced in the same order as a plain one of its
// dtype and length (layout invariance holds for the fused forms too).
#pragma once

#include <cuda_fp8.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "cuda/common.cuh"

namespace rmsnorm::detail::cuda {

// Which steps a kernel instantiation takes (compile-time: the plain kernels keep their code
// and registers). XIN is x's storage type where it is not the row's: with an f32 residual
// and 16-bit x (the fp32 residual stream), the row the norm reads is r_out, f32, so the
// kernel holds and reduces an f32 row (its plan is an f32 row's) and reads x as 16-bit; the
// Llama cast still rounds to x's dtype, as on the CPU. RANKS: x is the sum of the ranks'
// partials (fused_allreduce_add_forward), added before the residual. It has instantiations
// of its own: its fp32 sums, live while the ranks' chunks load, took the residual add's
// kernels from 56-100 registers a thread to 66-128, with spills (sm_90, nvcc 13.0), when
// the two shared them behind a run-time branch.
template <bool RESIDUAL, bool QUANT, class XIN = void, bool RANKS = false>
struct ForwardSteps {
  static_assert(std::is_void<XIN>::value || RESIDUAL, "x differs from the row only with a residual add");
  static_assert(!RANKS || (RESIDUAL && !QUANT), "the ranks' sum comes with the residual add, without quantising");
  static constexpr bool kResidual = RESIDUAL;
  static constexpr bool kQuant = QUANT;
  static constexpr bool kRanks = RANKS;
  // x's storage type for a row of TROW.
  template <class TROW>
  using Input = std::conditional_t<std::is_void<XIN>::value, TROW, XIN>;
};
using PlainSteps = ForwardSteps<false, false>;

// ---------------------------------------------------------------------------------------
// Prologue: the residual add.
// ---------------------------------------------------------------------------------------

// r_out = x + r for one chunk, added in fp32 and rounded once to r's dtype TR (x's, TX, or
// f32); stored to r_out's row when `ok`, and returned as the chunk the norm reads (the
// rounded value: the norm is that of exactly what the next layer reads). r_out may be r
// itself: the chunk is read before it is written, by the one lane that owns it.
template <bool ALIGNED, class TX, class TR, int VEC>
__device__ __forceinline__ Vec<TR, VEC> add_residual(const Vec<TX, VEC>& xv, const Vec<TR, VEC>& rv, TR* r_out,
                                                     std::int64_t idx, std::int64_t cols, bool ok) {
  float xf[VEC], rf[VEC];
  unpack(xv, xf);
  unpack(rv, rf);
#pragma unroll
  for (int k = 0; k < VEC; ++k) xf[k] += rf[k];
  const Vec<TR, VEC> out = pack<TR, VEC>(xf);
  if (ok) store_chunk<ALIGNED, TR, VEC>(r_out, idx, cols, out);
  return out;
}

template <class T>
__device__ __forceinline__ const T* residual_row(const ForwardArgs& a, std::int64_t row) {
  return static_cast<const T*>(a.residual) + row_offset(row, a.rows, a.r_batch_stride, a.r_row_stride);
}
template <class T>
__device__ __forceinline__ T* residual_out_row(const ForwardArgs& a, std::int64_t row) {
  return static_cast<T*>(a.residual_out) + row_offset(row, a.rows, a.r_out_batch_stride, a.r_out_row_stride);
}

// ---------------------------------------------------------------------------------------
// Epilogue: the quantised store. The rules are rmsnorm.h's (and src/cpu/quantize.h's, bit
// for bit): q = sat(y / s) with the correctly rounded division, fp8 e4m3 by the hardware's
// saturating round-to-nearest-even conversion, int8 by round-half-even into -127..127 with
// NaN as 0; a computed scale is max(min(amax, ub) / qmax, 1 / (qmax * 512)), optionally
// rounded up to a power of two.
// ---------------------------------------------------------------------------------------

__device__ __forceinline__ unsigned char encode_q8(float t, bool fp8) {
  if (fp8) return __nv_cvt_float_to_fp8(t, __NV_SATFINITE, __NV_E4M3);
  if (t != t) return 0;
  // Clamped first: the integer conversion alone saturates at -128.
  t = fminf(fmaxf(t, -127.0f), 127.0f);
  return static_cast<unsigned char>(static_cast<signed char>(__float2int_rn(t)));
}

// The divisor of the quantised store: y / s correctly rounded without a division per value.
// nvcc's __fdiv_rn inlines a reciprocal, a range check and a call to a slow path for every
// value, and that code (the quantised kernels were 142-163 KB against the plain forward's
// 21 KB) made instruction fetch their largest stall on the H200. Here RN(1/s) is taken once
// a row or group, and each quotient is q0 = RN(y * inv) with one correction,
// q = RN(q0 + RN-free(y - s * q0) * inv) (two FMAs): Markstein's theorem makes q the
// correctly rounded quotient when inv = RN(1/s) and neither the remainder nor the quotient
// leaves the normal range, which holds for |s| in 2^-64..2^64 and any |y / s| that reaches a
// code (a quotient below 2^-10 is code 0 whatever its last bits; one of 2048 or more
// saturates whatever they are). Checked on the CPU against the IEEE division for 2.8e11
// quotients (every y of two binades for 16 598 significands of s): none apart. Other
// scales (zero, infinite, NaN, or far from 1) take the division: one uniform branch a chunk.
// QuantDivision::reciprocal (`multiply`) keeps q0 = RN(y * inv) itself in the same range of
// scales (vLLM's quotient, the CPU backend's Divisor): one multiply a value where the
// correction takes five instructions (two FMAs, the test, the sign and the select), which
// bounded the quantised store by instruction issue.
struct Divisor {
  float s = 1.0f, inv = 1.0f;
  bool exact = true;      // the correction holds: 2^-64 <= |s| <= 2^64
  bool multiply = false;  // reciprocal, and exact: q0 is the quotient
  Divisor() = default;
  // (Set in the body: nvcc's host pass keeps a device constructor's initialisers, where
  // __frcp_rn is not declared.)
  __device__ __forceinline__ Divisor(float scale, bool reciprocal) {
    s = scale;
    inv = __frcp_rn(scale);
    exact = fabsf(scale) >= 0x1p-64f && fabsf(scale) <= 0x1p64f;
    multiply = reciprocal && exact;
  }
  __device__ __forceinline__ float quotient(float y) const {
    const float q0 = __fmul_rn(y, inv);
    const float q = __fmaf_rn(__fmaf_rn(-s, q0, y), inv, q0);
    // |q0| >= 2048 saturates either way and is left alone, so is a NaN (the comparison fails):
    // an infinite y makes the remainder NaN. The correction may turn a zero's sign; q0 has
    // the quotient's.
    return fabsf(q0) < 2048.0f ? copysignf(q, q0) : q0;
  }
};

// A group's chunks in neighbouring lanes of a warp (lane groups: a power of two of at most
// 32 lanes, aligned to the group's size within the warp, the same lanes for every chunk a
// lane holds): the group's max by a butterfly of shuffles over those lanes only.
struct LaneGroup {
  int lanes = 1;
  unsigned mask = ~0u;
  LaneGroup() = default;
  __device__ __forceinline__ LaneGroup(std::int64_t group_size, int vec) {
    lanes = static_cast<int>(group_size / vec);
    if (lanes < 32) mask = ((1u << lanes) - 1u) << (threadIdx.x % 32 & ~(lanes - 1));
  }
  __device__ __forceinline__ float max(float m) const {
    for (int o = 1; o < lanes; o <<= 1) m = fmaxf(m, __shfl_xor_sync(mask, m, o));
    return m;
  }
};

// Four fp8 e4m3 codes in a word, t0 in its low byte (the first in memory). From sm_89 the
// two pair conversions write 16-bit halves that one move joins; through the 16-bit
// __nv_cvt_float2_to_fp8x2 results ptxas masked each half before joining them (half an
// instruction a value more). The same instruction rounds either way.
__device__ __forceinline__ unsigned encode_f8x4(float t0, float t1, float t2, float t3) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  unsigned w;
  // cvt's first source goes to the upper byte of its pair.
  asm("{\n\t.reg .b16 lo, hi;\n\t"
      "cvt.rn.satfinite.e4m3x2.f32 lo, %2, %1;\n\t"
      "cvt.rn.satfinite.e4m3x2.f32 hi, %4, %3;\n\t"
      "mov.b32 %0, {lo, hi};\n\t}"
      : "=r"(w)
      : "f"(t0), "f"(t1), "f"(t2), "f"(t3));
  return w;
#else
  const unsigned lo = __nv_cvt_float2_to_fp8x2(make_float2(t0, t1), __NV_SATFINITE, __NV_E4M3);
  const unsigned hi = __nv_cvt_float2_to_fp8x2(make_float2(t2, t3), __NV_SATFINITE, __NV_E4M3);
  return __byte_perm(lo, hi, 0x5410);
#endif
}

// int8 codes of four quotients, packed into one word in memory order. Each quotient,
// clamped to -127..127 (NaN to 0), is rounded half to even by adding 1.5 * 2^23: the sum
// lies in [2^23, 2^24), where a float's last significand bits are the integer, and its low
// byte is the code in two's complement. That is one FADD, issued at the FMA's rate, where
// the float-to-integer conversion issues at a quarter of it on sm_80 / sm_90 (the CUDA
// guide's throughput table), and the quantised store is bound by instruction issue.
__device__ __forceinline__ unsigned int8_code_bits(float t) {
  t = t == t ? fminf(fmaxf(t, -127.0f), 127.0f) : 0.0f;
  return __float_as_uint(__fadd_rn(t, 12582912.0f));
}
__device__ __forceinline__ unsigned encode_i8x4(float t0, float t1, float t2, float t3) {
  const unsigned lo = __byte_perm(int8_code_bits(t0), int8_code_bits(t1), 0x0040);
  const unsigned hi = __byte_perm(int8_code_bits(t2), int8_code_bits(t3), 0x0040);
  return __byte_perm(lo, hi, 0x5410);
}

// A chunk of y values quantised with divisor d: each quotient correctly rounded, or y * (1/s)
// with QuantDivision::reciprocal (Divisor::multiply). fp8 is
// converted two values an instruction (cvt.rn.satfinite.e4m3x2.f32); codes are assembled a
// 32-bit word at a time. The format is chosen once a chunk, so is the division's fallback.
// (Earlier forms measured on the H200 and dropped: the correction with per-value range
// checks, slower than the division at tree ff1c739 and triple the compile time; and y * RN(1/s)
// with the division near a code's rounding boundary, slower at tree 34961d1.)
template <int VEC>
__device__ __forceinline__ Vec<unsigned char, VEC> quantise(const float (&y)[VEC], const Divisor& d, bool fp8) {
  float t[VEC];
  if (d.multiply) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = __fmul_rn(y[k], d.inv);
  } else if (__builtin_expect(d.exact, 1)) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = d.quotient(y[k]);
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) t[k] = __fdiv_rn(y[k], d.s);
  }
  Vec<unsigned char, VEC> q;
  if constexpr (VEC % 4 == 0) {
    unsigned* words = reinterpret_cast<unsigned*>(q.v);
#pragma unroll
    for (int k = 0; k < VEC; k += 4) {
      if (fp8) {
        words[k / 4] = encode_f8x4(t[k], t[k + 1], t[k + 2], t[k + 3]);
      } else {
        words[k / 4] = encode_i8x4(t[k], t[k + 1], t[k + 2], t[k + 3]);
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = encode_q8(t[k], fp8);
  }
  return q;
}

// The per-call constants of the quantised store, read once a thread (after the grid
// dependency: a previous kernel may have written them).
struct QuantConstants {
  Divisor fixed;    // static: the scale's divisor
  float ub = 0.0f;  // dynamic: the cap on the amax (infinity: none; fminf keeps the amax then)
  QuantConstants() = default;
  __device__ __forceinline__ explicit QuantConstants(const ForwardArgs& a)
      : fixed(!a.dynamic ? *a.scale : 1.0f, a.reciprocal),
        ub(a.dynamic && a.scale_ub ? *a.scale_ub : std::numeric_limits<float>::infinity()) {}
  __device__ __forceinline__ float computed(float amax, const ForwardArgs& a) const {
    const float s = fmaxf(__fdiv_rn(fminf(amax, ub), a.qmax), a.min_scale);
    // A normal float keeps its exponent when its mantissa is zero, else takes the next one.
    return a.pow2 ? __uint_as_float((__float_as_uint(s) + 0x7fffffu) & 0xff800000u) : s;
  }
};

// The per-group maxima of |y| for the computed scales, in shared memory: `entries` cells for
// the groups a block holds (rows a block x groups a row), each the bits of a non-negative
// float, so that an integer atomicMax is the float max (a NaN y is left out, as fmax leaves
// it out on the CPU). Three tables in turn, so that one block barrier a row is enough: row
// k fills table k % 3; after its barrier (every lane has passed row k-1's reads) table
// (k + 2) % 3 is cleared for row k + 2, whose lanes reach it only after row k + 1's barrier.
struct GroupMax {
  unsigned* cells;
  std::int64_t entries;
  int turn = 0;

  // Clears tables 0 and 1; the caller's barrier follows before any row's offers.
  __device__ __forceinline__ GroupMax(unsigned* shared, std::int64_t n, int threads) : cells(shared), entries(n) {
    for (std::int64_t i = threadIdx.x; i < 2 * n; i += threads) cells[i] = 0u;
  }
  __device__ __forceinline__ unsigned* table() const { return cells + turn * entries; }
  // After the row's barrier: clears the table of row k + 2.
  __device__ __forceinline__ void clear_ahead(int threads) const {
    unsigned* ahead = cells + ((turn + 2) % 3) * entries;
    for (std::int64_t i = threadIdx.x; i < entries; i += threads) ahead[i] = 0u;
  }
  __device__ __forceinline__ void next() { turn = turn == 2 ? 0 : turn + 1; }
};

// The group of chunk idx: every chunk lies in one group, as the launcher ensures (per-row
// scales: one group; per-group: a group size that is a multiple of the chunk, whose chunks
// start at multiples of VEC).
// The division is 32-bit (a 64-bit one is a call of some 70 instructions): the launcher
// takes per-group scales only on rows of fewer than 2^32 columns.
template <int VEC>
__device__ __forceinline__ std::int64_t group_of(std::int64_t idx, const ForwardArgs& a) {
  return a.groups == 1 ? 0 : static_cast<unsigned>(idx * VEC) / static_cast<unsigned>(a.group_size);
}

// Adds a chunk's max |y| to its group's (`table` indexed by group within the row). Elements
// past the end of an unaligned row are zeros and add nothing. The lanes of a warp offering
// to one cell take their max first and one of them offers it: a per-row scale would
// otherwise have every chunk of the row contend for one shared-memory cell.
// WARP_ROW: a warp's lanes all hold one row (32 lanes or more a row), so with one group a row
// they share one cell and need no match.
// The max |y| of a chunk; a NaN is left out (fmaxf returns the other operand), as on the CPU.
template <int VEC>
__device__ __forceinline__ float chunk_amax(const float (&y)[VEC]) {
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < VEC; ++k) m = fmaxf(m, fabsf(y[k]));
  return m;
}

template <int VEC, bool WARP_ROW>
__device__ __forceinline__ void offer_chunk(unsigned* table, std::int64_t idx, const float (&y)[VEC],
                                            const ForwardArgs& a) {
  const float m = chunk_amax(y);
  unsigned* cell = table + group_of<VEC>(idx, a);
  const unsigned active = __activemask();
  const unsigned peers =
      WARP_ROW && a.groups == 1 ? active : __match_any_sync(active, reinterpret_cast<unsigned long long>(cell));
  const unsigned top = __reduce_max_sync(peers, __float_as_uint(m));
  if (static_cast<int>(threadIdx.x % 32) == __ffs(peers) - 1 && top > 0u) atomicMax(cell, top);
}

// The divisor of a row's chunks where one serves the whole row: the static scale's, or the
// per-row scale's, computed from the row's max |y| (amax_of(0)) once a row rather than once
// a chunk. Per-group scales take theirs a chunk (chunk_divisor).
template <class AmaxOf>
__device__ __forceinline__ Divisor row_divisor(const AmaxOf& amax_of, const QuantConstants& qc, const ForwardArgs& a) {
  if (!a.dynamic) return qc.fixed;
  return a.groups == 1 ? Divisor(qc.computed(amax_of(0), a), a.reciprocal) : Divisor();
}

// The divisor of a chunk's group (the row's, or its group's from the group's max |y| over
// the whole row, amax_of(g)); a computed scale is written by the lane holding the group's
// first element.
template <int VEC, class AmaxOf>
__device__ __forceinline__ Divisor chunk_divisor(std::int64_t row, std::int64_t idx, const Divisor& row_d,
                                                 const AmaxOf& amax_of, const QuantConstants& qc,
                                                 const ForwardArgs& a) {
  if (!a.dynamic) return row_d;
  const std::int64_t g = group_of<VEC>(idx, a);
  const Divisor d = a.groups == 1 ? row_d : Divisor(qc.computed(amax_of(g), a), a.reciprocal);
  if (idx * VEC == g * a.group_size) a.scales[row * a.scale_row_stride + g * a.scale_group_stride] = d.s;
  return d;
}

}  // namespace rmsnorm::detail::cuda
