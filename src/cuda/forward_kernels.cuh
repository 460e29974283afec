// The forward kernels, one template per parallel strategy, and their launchers.
//
// RMSNorm is memory-bound (2 bytes moved per flop or so): every design choice here is
// about moving each byte of x and y exactly once, with wide accesses and enough of them
// in flight. The math is fp32 whatever the storage type.
//
// Batch invariance: a row's reduction order depends only on the kernel configuration,
// which the planner derives from (cols, dtype, vector width), never from the row count
// or the row's position, so a row gives the same bits alone or inside any batch.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "cuda/common.cuh"

namespace rmsnorm::detail::cuda {

// Sum over the THREADS lanes that share a row. Warp-sized groups reduce with shuffles (CUB
// WarpReduce on a logical warp), whole blocks with CUB BlockReduce; either way the result
// is returned to every lane of the row.
template <int THREADS, int BLOCK, bool IN_WARP = (THREADS <= 32)>
struct RowSum;

template <int THREADS, int BLOCK>
struct RowSum<THREADS, BLOCK, true> {
  using WarpReduce = cub::WarpReduce<float, THREADS>;
  struct TempStorage {
    typename WarpReduce::TempStorage warp[BLOCK / THREADS];
  };
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const int group = threadIdx.x / THREADS;
    const float total = WarpReduce(t.warp[group]).Sum(v);  // valid in the group's lane 0
    return __shfl_sync(0xffffffffu, total, 0, THREADS);
  }
};

template <int THREADS, int BLOCK>
struct RowSum<THREADS, BLOCK, false> {
  static_assert(THREADS == BLOCK, "a row wider than a warp spans the whole block");
  using BlockReduce = cub::BlockReduce<float, BLOCK>;
  struct TempStorage {
    typename BlockReduce::TempStorage reduce;
    float total;
  };
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const float total = BlockReduce(t.reduce).Sum(v);  // valid in thread 0 only
    if (threadIdx.x == 0) t.total = total;
    __syncthreads();
    const float out = t.total;
    __syncthreads();  // temp storage and t.total are reused by the next row
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// warp_rows and block_row: the row lives in registers between the reduction and the
// scaling, so x is read from memory once. TPR lanes share a row, each holding ITEMS
// vectors of VEC elements (lane l holds vectors l, l + TPR, ...: consecutive lanes read
// consecutive 16-byte chunks, so every warp access is fully coalesced).
// ---------------------------------------------------------------------------------------
template <class TX, class TW, class TY, int VEC, int TPR, int ITEMS, int BLOCK>
__global__ void __launch_bounds__(BLOCK) RegisterRowsImpl(const ForwardArgs a) {
  constexpr int kRowsPerBlock = BLOCK / TPR;
  using Sum = RowSum<TPR, BLOCK>;
  __shared__ typename Sum::TempStorage temp;

  const int lane = threadIdx.x % TPR;
  const int slot = threadIdx.x / TPR;
  const std::int64_t vectors = a.cols / VEC;
  const TW* w = static_cast<const TW*>(a.weight);

  // The loop bound is uniform across the block, so every lane reaches every reduction
  // (rows past the end compute on zeros and store nothing).
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock;
       first < a.total_rows; first += static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock) {
    const std::int64_t row = first + slot;
    const bool valid = row < a.total_rows;
    const TX* x = static_cast<const TX*>(a.x) +
                  (valid ? row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) : 0);

    Vec<TX, VEC> v[ITEMS];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int idx = i * TPR + lane;
      if (valid && idx < vectors) {
        v[i] = load_vec<TX, VEC>(x + static_cast<std::int64_t>(idx) * VEC);
      } else {
#pragma unroll
        for (int k = 0; k < VEC; ++k) v[i].v[k] = from_float<TX>(0.f);
      }
    }
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float f = to_float(v[i].v[k]);
        ss += f * f;
      }
    const float rstd = rstd_from_sum(Sum::sum(temp, ss), a);
    if (!valid) continue;
    if (a.rstd && lane == 0) a.rstd[row] = rstd;

    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int idx = i * TPR + lane;
      if (idx >= vectors) continue;
      Vec<TW, VEC> wv;
      if (w) wv = load_vec<TW, VEC>(w + static_cast<std::int64_t>(idx) * VEC);
      Vec<TY, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        out.v[k] = from_float<TY>(normalise<TX, TW>(to_float(v[i].v[k]), rstd, w != nullptr,
                                                    w ? to_float(wv.v[k]) : 1.f, a));
      store_vec<TY, VEC>(y + static_cast<std::int64_t>(idx) * VEC, out);
    }
  }
}

// ---------------------------------------------------------------------------------------
// long_row: a row per block, any length, any alignment (VEC = 1 is the scalar fallback).
// The row is streamed twice: once for the sum of squares, once to scale it (the second
// read mostly hits L2, which holds the rows in flight).
// ---------------------------------------------------------------------------------------
template <class TX, class TW, class TY, int VEC, int BLOCK>
__global__ void __launch_bounds__(BLOCK) LongRowImpl(const ForwardArgs a) {
  using Sum = RowSum<BLOCK, BLOCK>;
  __shared__ typename Sum::TempStorage temp;
  const std::int64_t vectors = a.cols / VEC;
  const TW* w = static_cast<const TW*>(a.weight);

  for (std::int64_t row = blockIdx.x; row < a.total_rows; row += gridDim.x) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    float ss = 0.f;
#pragma unroll 4
    for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
      const Vec<TX, VEC> v = load_vec<TX, VEC>(x + idx * VEC);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float f = to_float(v.v[k]);
        ss += f * f;
      }
    }
    const float rstd = rstd_from_sum(Sum::sum(temp, ss), a);
    if (a.rstd && threadIdx.x == 0) a.rstd[row] = rstd;
#pragma unroll 4
    for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
      const Vec<TX, VEC> v = load_vec<TX, VEC>(x + idx * VEC);
      Vec<TW, VEC> wv;
      if (w) wv = load_vec<TW, VEC>(w + idx * VEC);
      Vec<TY, VEC> out;
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        out.v[k] = from_float<TY>(normalise<TX, TW>(to_float(v.v[k]), rstd, w != nullptr,
                                                    w ? to_float(wv.v[k]) : 1.f, a));
      store_vec<TY, VEC>(y + idx * VEC, out);
    }
  }
}

}  // namespace rmsnorm::detail::cuda
