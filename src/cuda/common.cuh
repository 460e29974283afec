// Small device helpers shared by the CUDA kernels: the packed vector type, conversions
// between storage types and fp32, and row addressing. No kernel lives here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail::cuda {

// N elements moved as one access: 16 bytes (one LDG.128/STG.128) or, for a wider
// element type at the same element count (an f32 output of 8 bf16 inputs), two of them.
template <class T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Vec {
  T v[N];
};

// Moves go through plain integer vectors: element-wise copies of __half/__nv_bfloat16
// (classes with their own assignment operators) were seen compiled into eight 16-bit stores
// (STG.E.U16) instead of one STG.E.128.
template <int BYTES>
struct RawWord;
template <>
struct RawWord<16> {
  using type = uint4;
};
template <>
struct RawWord<8> {
  using type = uint2;
};
template <>
struct RawWord<4> {
  using type = unsigned;
};
template <>
struct RawWord<2> {
  using type = unsigned short;
};
template <>
struct RawWord<1> {
  using type = unsigned char;
};

// The vector at p where `ok`, else zeros; the choice is made on whole words. Zeros written
// element by element made the compiler merge 16-bit halves (PRMT) that waited on the load:
// the weight preload then held back the issue of x's loads until the weight had arrived, so
// a single row (decode) paid two memory latencies in a row instead of one.
template <class T, int N>
__device__ __forceinline__ Vec<T, N> load_vec_or_zero(const T* p, bool ok) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  constexpr int kWord = kBytes < 16 ? kBytes : 16;
  using W = typename RawWord<kWord>::type;
  Vec<T, N> v;
  const W* src = reinterpret_cast<const W*>(p);
  W* dst = reinterpret_cast<W*>(&v);
#pragma unroll
  for (int i = 0; i < kBytes / kWord; ++i) {
    W w{};
    if (ok) w = src[i];
    dst[i] = w;
  }
  return v;
}
template <class T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return load_vec_or_zero<T, N>(p, true);
}

// A chunk of a row: the N elements from element idx * N, loaded into one vector's
// registers. ALIGNED rows (every row start 16-byte aligned and cols a multiple of N) take
// one 16-byte access; others take one access an element, and elements at or past `cols`
// read as zero. Either way the chunk lands in the same registers in the same order, so a
// row is summed the same way at every alignment: alignment changes how a row is loaded,
// never how it is reduced (layout invariance; the planner picks the configuration from
// (cols, dtypes) alone).
template <bool ALIGNED, class T, int N>
__device__ __forceinline__ Vec<T, N> load_chunk(const T* row, std::int64_t idx, std::int64_t cols, bool ok) {
  if constexpr (ALIGNED) {
    return load_vec_or_zero<T, N>(row + idx * N, ok);
  } else {
    using W = typename RawWord<sizeof(T)>::type;
    Vec<T, N> v;
    const W* src = reinterpret_cast<const W*>(row + idx * N);
    W* dst = reinterpret_cast<W*>(&v);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      W w{};
      if (ok && idx * N + k < cols) w = src[k];
      dst[k] = w;
    }
    return v;
  }
}

template <class T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  constexpr int kBytes = static_cast<int>(sizeof(T)) * N;
  constexpr int kWord = kBytes < 16 ? kBytes : 16;
  using W = typename RawWord<kWord>::type;
  const W* src = reinterpret_cast<const W*>(&v);
  W* dst = reinterpret_cast<W*>(p);
#pragma unroll
  for (int i = 0; i < kBytes / kWord; ++i) dst[i] = src[i];
}

// Stores a chunk of a row (idx below the row's chunk count): the counterpart of load_chunk;
// unaligned rows store element by element and nothing at or past `cols`.
template <bool ALIGNED, class T, int N>
__device__ __forceinline__ void store_chunk(T* row, std::int64_t idx, std::int64_t cols, const Vec<T, N>& v) {
  if constexpr (ALIGNED) {
    store_vec<T, N>(row + idx * N, v);
  } else {
    using W = typename RawWord<sizeof(T)>::type;
    const W* src = reinterpret_cast<const W*>(&v);
    W* dst = reinterpret_cast<W*>(row + idx * N);
#pragma unroll
    for (int k = 0; k < N; ++k)
      if (idx * N + k < cols) dst[k] = src[k];
  }
}

// Chunks of a row of `cols` elements, N elements a chunk (the last may be partial).
__host__ __device__ __forceinline__ std::int64_t chunks_of(std::int64_t cols, int n) { return (cols + n - 1) / n; }

// Hides a vector's value from the optimiser. A lane's weight stays in registers across rows;
// left alone, the compiler hoists its conversion to fp32 out of the row loop, which for
// 16-bit weights doubles the registers they take (the 1024-thread block spilled 196 bytes).
// Converting again per row costs one integer instruction per element.
template <class T, int N>
__device__ __forceinline__ Vec<T, N> opaque(Vec<T, N> v) {
  static_assert(sizeof(Vec<T, N>) % 4 == 0, "opaque works on 32-bit words");
  unsigned* words = reinterpret_cast<unsigned*>(&v);
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(Vec<T, N>) / 4); ++i) asm volatile("" : "+r"(words[i]));
  return v;
}

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// A vector to fp32 and back, two 16-bit elements at a time: the paired conversions
// (cvt.rn.bf16x2.f32, cvt.rn.f16x2.f32) read and write packed 32-bit words. Converted one
// by one, bf16 goes through 16-bit registers (the runtime's inline PTX) and needs extra
// instructions and registers to pack: the bf16 backward used 83 to 124 registers a thread
// against f16's 64 to 94, which halved its resident blocks.
template <class T, int N>
__device__ __forceinline__ void unpack(const Vec<T, N>& v, float (&f)[N]) {
  if constexpr (std::is_same<T, float>::value || N % 2 != 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = to_float(v.v[k]);
  } else if constexpr (std::is_same<T, __half>::value) {
    const __half2* p = reinterpret_cast<const __half2*>(v.v);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      const float2 t = __half22float2(p[k]);
      f[2 * k] = t.x;
      f[2 * k + 1] = t.y;
    }
  } else {
    // bf16 is the top half of an fp32: two integer operations per pair, written out here
    // because the runtime's conversion is inline PTX the compiler cannot schedule freely.
    const unsigned* p = reinterpret_cast<const unsigned*>(v.v);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      f[2 * k] = __uint_as_float(p[k] << 16);
      f[2 * k + 1] = __uint_as_float(p[k] & 0xffff0000u);
    }
  }
}

template <class T, int N>
__device__ __forceinline__ Vec<T, N> pack(const float (&f)[N]) {
  Vec<T, N> v;
  if constexpr (std::is_same<T, float>::value || N % 2 != 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) v.v[k] = from_float<T>(f[k]);
  } else if constexpr (std::is_same<T, __half>::value) {
    __half2* p = reinterpret_cast<__half2*>(v.v);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) p[k] = __floats2half2_rn(f[2 * k], f[2 * k + 1]);
  } else {
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(v.v);
#pragma unroll
    for (int k = 0; k < N / 2; ++k) p[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
  }
  return v;
}

// Rounds to T's precision and back.
template <class T>
__device__ __forceinline__ float round_as(float v) {
  return to_float(from_float<T>(v));
}

// Everything a forward kernel needs, passed by value (kernel parameter space).
struct ForwardArgs {
  const void* x;
  void* y;
  const void* weight;  // nullptr: no weight
  float* rstd;         // nullptr: not requested
  std::int64_t rows;   // rows per batch
  std::int64_t total_rows;
  std::int64_t cols;
  std::int64_t x_batch_stride, x_row_stride;
  std::int64_t y_batch_stride, y_row_stride;
  float eps;
  float inv_cols;  // 1/cols rounded to fp32: the mean is sum * (1/cols), as PyTorch computes it
  float weight_offset;
  bool llama;

  // The residual add's prologue (ForwardSteps::kResidual): r_out = x + residual, rounded to
  // x's dtype, stored to residual_out, and normalised in x's place.
  const void* residual;
  void* residual_out;
  std::int64_t r_batch_stride, r_row_stride;
  std::int64_t r_out_batch_stride, r_out_row_stride;
  // With the residual add, the ranks' sum (fused_allreduce_add_forward): x is the sum of the
  // rows at rank_x[0..ranks) (rank_x[0] == x, x's strides), added in fp32 in rank order
  // before the residual. ranks == 1: x alone. The same for the whole grid (a uniform branch).
  int ranks;
  const void* rank_x[kMaxAllReduceRanks];

  // The quantised store's epilogue (ForwardSteps::kQuant): y is q, one byte an element.
  bool fp8;                         // f8e4m3, else i8
  bool dynamic;                     // scales computed per group (per_row: one group of the row)
  const float* scale;               // static: the one scale
  float* scales;                    // dynamic: written, scales[row * scale_row_stride + g * scale_group_stride]
  const float* scale_ub;            // dynamic: optional cap on the group's amax
  bool pow2;                        // dynamic: scales rounded up to a power of two
  bool reciprocal;                  // y * (1 / s) instead of y / s (QuantDivision::reciprocal)
  std::int64_t group_size, groups;  // dynamic: columns a group, groups a row
  std::int64_t scale_row_stride, scale_group_stride;
  float qmax, min_scale;  // 448 or 127; the floor of a computed scale, 1 / (qmax * 512)

  // The sharded rows' apply step: the rows' sums of squares, taken instead of the kernel's
  // own (inv_cols is then 1/full_cols). The same for the whole grid, so a branch on it is
  // uniform. nullptr: the kernel reduces its rows itself.
  const float* row_sums;

  // cluster_row: the pieces of a block's slice (Plan::pieces), the first in registers, the
  // others in dynamic shared memory. 1 for every other kernel.
  int pieces;
  // cluster_row: the byte offset of the block's weight slice in dynamic shared memory, or
  // -1: the weight is read from global memory. -1 for every other kernel.
  std::int64_t weight_at;
};

// Element offset of a row's first element in a (batch, rows, cols) view. Rows of the first
// batch (every row of a matrix) skip the 64-bit division, a long instruction sequence on the
// GPU that would sit on a decode call's latency.
__device__ __forceinline__ std::int64_t row_offset(std::int64_t row, std::int64_t rows, std::int64_t batch_stride,
                                                   std::int64_t row_stride) {
  if (row < rows) return row * row_stride;
  const std::int64_t b = row / rows;
  return b * batch_stride + (row - b * rows) * row_stride;
}

// rstd from a row's sum of squares. The explicit _rn operations stop the compiler from
// fusing the mean and the eps into one FMA, matching PyTorch's `mean(x^2) + eps` step by
// step; rsqrtf is what PyTorch's CUDA rsqrt uses.
__device__ __forceinline__ float rstd_from_sum(float ss, float inv_cols, float eps) {
  return rsqrtf(__fadd_rn(__fmul_rn(ss, inv_cols), eps));
}

// The output of one element: the computation step shared by all strategies.
//  fp32 cast: x * rstd * (w + offset) in fp32, rounded once by the store.
//  llama cast: x * rstd rounded to TX, times (w + offset) rounded to TW, the product
//  rounded to the promoted type of (TX, TW) (TX when equal, fp32 otherwise).
// `w` is the weight element in fp32 (ignored without a weight: factor 1). The cast and the
// weight's presence are compile-time here: per-element branches on them made the 16-bit
// kernels instruction-bound (about 20 instructions per element, measured on the H100).
template <class TX, class TW, bool LLAMA, bool HAS_W>
__device__ __forceinline__ float normalise(float xv, float rstd, float w, float offset) {
  if constexpr (!LLAMA) {
    const float o = xv * rstd;
    if constexpr (HAS_W) return o * (w + offset);
    return o;
  } else {
    const float h = round_as<TX>(xv * rstd);
    if constexpr (!HAS_W) return h;
    const float prod = h * round_as<TW>(w + offset);
    return std::is_same<TX, TW>::value ? round_as<TX>(prod) : prod;
  }
}

// Calls f with the (LLAMA, HAS_W) pair of the arguments as compile-time constants, so a
// kernel's inner loops are generated once per combination and branch-free inside.
template <class F>
__device__ __forceinline__ void with_mode(bool llama, bool has_w, F&& f) {
  if (llama) {
    if (has_w)
      f(std::true_type{}, std::true_type{});
    else
      f(std::true_type{}, std::false_type{});
  } else {
    if (has_w)
      f(std::false_type{}, std::true_type{});
    else
      f(std::false_type{}, std::false_type{});
  }
}

// Programmatic dependent launch (sm_90). Every kernel is launched allowed to start while
// the previous kernel in its stream is still running (launch_kernel in launch.h), so
// its launch and block scheduling overlap that kernel's tail. It must therefore wait for
// the previous grid to finish, and its writes to be visible, before its first global
// read: the weight too, which an optimiser step may just have written. Having waited, it
// lets the next kernel of the stream be scheduled in turn. Without the launch attribute,
// or below sm_90, both are no-ops.
__device__ __forceinline__ void begin_dependent_grid() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cudaGridDependencySynchronize();
  cudaTriggerProgrammaticLaunchCompletion();
#endif
}

// begin_dependent_grid once `ready` (64-bit values: addresses, offsets) are computed. What a
// kernel derives from its parameters alone then runs while the previous kernel finishes,
// instead of between that kernel's end and this one's first load: for a decode call, whose
// time is mostly latency, the block rows' 64-bit row arithmetic (about 100 instructions, a
// branch and constant-bank loads on sm_90, nvcc 13.0) came before the first load. The empty
// asm statements take the values as inputs, and the compiler keeps volatile asm statements
// in their program order, so the values are computed before the wait.
template <class T>
__device__ __forceinline__ void computed_here(const T& value) {
  static_assert(sizeof(T) == 8, "a 64-bit value");
  std::uint64_t bits;
  memcpy(&bits, &value, 8);
  asm volatile("" ::"l"(bits));
}
template <class... T>
__device__ __forceinline__ void begin_dependent_grid_after(const T&... ready) {
  (computed_here(ready), ...);
  begin_dependent_grid();
}

}  // namespace rmsnorm::detail::cuda
