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

// A chunk of y values quantised with scale s, each quotient correctly rounded (__fdiv_rn).
// fp8 is converted two values an instruction (cvt.rn.satfinite.e4m3x2.f32); the format is
// chosen once a chunk. (The quotient as y * (1/s) plus one FMA correction, Markstein's, with
// the division kept where his theorem does not hold, was slower on the H200 at tree ff1c739,
// static fp8 1.19-2.05 against 1.26-2.16 TB/s at 66e32ce, and tripled these kernels'
// compile time: its range checks cost what the division did. So was y * RN(1/s) with the
// division only near a code's rounding boundary, at tree 34961d1: static fp8 1.09-2.12 TB/s
// against 1.30-2.67 at 024c8c3, per-row 0.61-1.40 against 0.78-1.71.)
template <int VEC>
__device__ __forceinline__ Vec<unsigned char, VEC> quantise(const float (&y)[VEC], float s, bool fp8) {
  Vec<unsigned char, VEC> q;
  if (fp8) {
    if constexpr (VEC % 2 == 0) {
      unsigned short* pairs = reinterpret_cast<unsigned short*>(q.v);
#pragma unroll
      for (int k = 0; k < VEC; k += 2)
        pairs[k / 2] = __nv_cvt_float2_to_fp8x2(make_float2(__fdiv_rn(y[k], s), __fdiv_rn(y[k + 1], s)), __NV_SATFINITE,
                                                __NV_E4M3);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) q.v[k] = encode_q8(__fdiv_rn(y[k], s), true);
    }
  } else {
#pragma unroll
    for (int k = 0; k < VEC; ++k) q.v[k] = encode_q8(__fdiv_rn(y[k], s), false);
  }
  return q;
}

// The per-call constants of the quantised store, read once a thread (after the grid
// dependency: a previous kernel may have written them).
struct QuantConstants {
  float scale = 1.0f;  // static: the scale
  float ub = 0.0f;     // dynamic: the cap on the amax (infinity: none; fminf keeps the amax then)
  QuantConstants() = default;
  __device__ __forceinline__ explicit QuantConstants(const ForwardArgs& a)
      : scale(!a.dynamic ? *a.scale : 1.0f),
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
template <int VEC>
__device__ __forceinline__ std::int64_t group_of(std::int64_t idx, const ForwardArgs& a) {
  return a.groups == 1 ? 0 : idx * VEC / a.group_size;
}

// Adds a chunk's max |y| to its group's (`table` indexed by group within the row). Elements
// past the end of an unaligned row are zeros and add nothing. The lanes of a warp offering
// to one cell take their max first and one of them offers it: a per-row scale would
// otherwise have every chunk of the row contend for one shared-memory cell.
// WARP_ROW: a warp's lanes all hold one row (32 lanes or more a row), so with one group a row
// they share one cell and need no match.
template <int VEC, bool WARP_ROW>
__device__ __forceinline__ void offer_chunk(unsigned* table, std::int64_t idx, const float (&y)[VEC],
                                            const ForwardArgs& a) {
  float m = 0.0f;
#pragma unroll
  for (int k = 0; k < VEC; ++k) m = fmaxf(m, fabsf(y[k]));
  unsigned* cell = table + group_of<VEC>(idx, a);
  const unsigned active = __activemask();
  const unsigned peers =
      WARP_ROW && a.groups == 1 ? active : __match_any_sync(active, reinterpret_cast<unsigned long long>(cell));
  const unsigned top = __reduce_max_sync(peers, __float_as_uint(m));
  if (static_cast<int>(threadIdx.x % 32) == __ffs(peers) - 1 && top > 0u) atomicMax(cell, top);
}

// The scale of a chunk's group: the static one, or computed from the group's max |y| over
// the whole row (amax_of(g)), then written by the lane holding the group's first element.
template <int VEC, class AmaxOf>
__device__ __forceinline__ float chunk_scale(std::int64_t row, std::int64_t idx, const AmaxOf& amax_of,
                                             const QuantConstants& qc, const ForwardArgs& a) {
  if (!a.dynamic) return qc.scale;
  const std::int64_t g = group_of<VEC>(idx, a);
  const float s = qc.computed(amax_of(g), a);
  if (idx * VEC == g * a.group_size) a.scales[row * a.scale_row_stride + g * a.scale_group_stride] = s;
  return s;
}

}  // namespace rmsnorm::detail::cuda
