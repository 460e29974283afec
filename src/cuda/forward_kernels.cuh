// The forward kernels, one template per parallel strategy (launchers: forward_launch.cuh).
//
// RMSNorm is memory-bound (2 bytes moved per flop or so): every design choice here is
// about moving each byte of x and y exactly once, with wide accesses and enough of them
// in flight. The math is fp32 whatever the storage type.
//
// Layout invariance: a row's reduction order depends only on the kernel configuration,
// which the planner derives from (cols, dtypes), never from the row count, the row's
// position, its strides or its alignment, so a row gives the same bits alone, inside any
// batch and inside any view. Every kernel is instantiated for aligned rows (16-byte
// accesses) and unaligned ones (an access an element, load_chunk), same order.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "cuda/cluster.cuh"
#include "cuda/common.cuh"
#include "kernel_configs.h"

namespace rmsnorm::detail::cuda {

// Sum over the THREADS lanes that share a row. Warp-sized groups reduce with shuffles (CUB
// WarpReduce on a logical warp), whole blocks with CUB BlockReduce, rows of several warps
// in a larger block with CUB WarpReduce and shared memory; either way the result is
// returned to every lane of the row.
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

// A row over a whole block: CUB BlockReduce.
template <int THREADS, int BLOCK, bool WHOLE_BLOCK = (THREADS == BLOCK)>
struct BlockRowSum {
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

// Several rows of whole warps in a block (the backward's 2048-element rows, which leave
// fewer dw partial rows that way): CUB WarpReduce in each warp, then each lane adds its
// row's warp totals in warp order.
template <int THREADS, int BLOCK>
struct BlockRowSum<THREADS, BLOCK, false> {
  static_assert(THREADS % 32 == 0 && BLOCK % THREADS == 0, "rows of whole warps");
  static constexpr int kWarpsPerRow = THREADS / 32;
  using WarpReduce = cub::WarpReduce<float>;
  struct TempStorage {
    typename WarpReduce::TempStorage warp[BLOCK / 32];
    float part[BLOCK / 32];
  };
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const int warp = threadIdx.x / 32;
    const float total = WarpReduce(t.warp[warp]).Sum(v);  // valid in lane 0
    if (threadIdx.x % 32 == 0) t.part[warp] = total;
    __syncthreads();
    const int first = warp - warp % kWarpsPerRow;
    float out = 0.f;
#pragma unroll
    for (int i = 0; i < kWarpsPerRow; ++i) out += t.part[first + i];
    __syncthreads();  // t.part is reused by the next row
    return out;
  }
};

template <int THREADS, int BLOCK>
struct RowSum<THREADS, BLOCK, false> : BlockRowSum<THREADS, BLOCK> {};

// Load, reduce and store steps of a lane's share of a row held in registers: chunks
// first, first + STRIDE, ... (ITEMS of them) that lie below `end`. Consecutive lanes take
// consecutive 16-byte chunks, so every warp access is fully coalesced. ALIGNED: see
// load_chunk (common.cuh); `cols` bounds the last chunk of an unaligned row.
template <bool ALIGNED, class T, int VEC, int ITEMS, int STRIDE>
__device__ __forceinline__ void load_items(const T* row, std::int64_t first, std::int64_t end, std::int64_t cols,
                                           bool valid, Vec<T, VEC> (&v)[ITEMS]) {
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
    v[i] = load_chunk<ALIGNED, T, VEC>(row, idx, cols, valid && idx < end);
  }
}

template <class TX, int VEC, int ITEMS>
__device__ __forceinline__ float sum_squares(const Vec<TX, VEC> (&v)[ITEMS]) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    float f[VEC];
    unpack(v[i], f);
#pragma unroll
    for (int k = 0; k < VEC; ++k) ss += f[k] * f[k];
  }
  return ss;
}

// A lane's columns are the same for every row it processes, so its share of the weight can
// be loaded once, before the first row, and stay in registers: for a single row (decode)
// its memory latency then overlaps x's instead of following the reduction. That costs a
// register per 4 bytes of weight: the forward preloads up to 64 bytes a lane (4 vectors of
// a 16-bit weight: 56 to 62 registers a thread with the row, within the 64 that keep 1024
// threads an SM resident; an fp32 weight for 16-bit rows spilled), cluster lanes of 8
// vectors re-read it per row from L1/L2. The backward, which also holds
// dy and the dw sums, preloads only in blocks of up to 256 threads with 2 vectors a lane,
// and a weight vector of at most 16 bytes (an fp32 weight of 16-bit rows spilled).
template <class TW, int VEC, int ITEMS>
inline constexpr bool kForwardPreloadsWeight = ITEMS* VEC * sizeof(TW) <= 64;
template <class TW, int VEC, int BLOCK, int ITEMS>
inline constexpr bool kBackwardPreloadsWeight = BLOCK <= 256 && ITEMS <= 2 && sizeof(TW) * VEC <= 16;

template <bool ALIGNED, class TW, int VEC, int ITEMS, int STRIDE, bool PRELOAD>
__device__ __forceinline__ void load_weight(const TW* w, std::int64_t first, std::int64_t end, std::int64_t cols,
                                            Vec<TW, VEC> (&wv)[ITEMS]) {
  if constexpr (PRELOAD) {
    if (w) load_items<ALIGNED, TW, VEC, ITEMS, STRIDE>(w, first, end, cols, true, wv);
  }
}

// The weight vector of item i (chunk idx, below the row's chunk count): preloaded, or read now.
template <bool ALIGNED, class TW, int VEC, int ITEMS, bool PRELOAD>
__device__ __forceinline__ Vec<TW, VEC> weight_item(const TW* w, const Vec<TW, VEC> (&wv)[ITEMS], int i,
                                                    std::int64_t idx, std::int64_t cols) {
  if constexpr (PRELOAD)
    return opaque(wv[i]);
  else
    return load_chunk<ALIGNED, TW, VEC>(w, idx, cols, true);
}

// A lane's weight vectors for the backward's steps, from where its kernel keeps them: in
// registers or read from global memory per row (LaneWeight, as load_weight and weight_item
// above), or in shared memory (SharedLaneWeight). Vectors past the row's end are zeros in
// registers and shared memory (kZeroPadded), and must not be read from global memory.
template <bool ALIGNED, class TW, int VEC, int ITEMS, int STRIDE, bool PRELOAD>
struct LaneWeight {
  static constexpr bool kZeroPadded = PRELOAD;
  const TW* w;
  std::int64_t cols;
  Vec<TW, VEC> wv[ITEMS];
  __device__ __forceinline__ LaneWeight(const TW* weight, std::int64_t first, std::int64_t end, std::int64_t n)
      : w(weight), cols(n) {
    load_weight<ALIGNED, TW, VEC, ITEMS, STRIDE, PRELOAD>(w, first, end, cols, wv);
  }
  __device__ __forceinline__ Vec<TW, VEC> operator()(int i, std::int64_t idx) const {
    return weight_item<ALIGNED, TW, VEC, ITEMS, PRELOAD>(w, wv, i, idx, cols);
  }
};

// The lane's weight vectors copied once into shared memory (`slice`: STRIDE * ITEMS vectors
// for the block). A cluster barrier's acquire leaves nothing of the weight in L1, so a
// weight re-read from global memory after it came from L2, on every row.
template <bool ALIGNED, class TW, int VEC, int ITEMS, int STRIDE>
struct SharedLaneWeight {
  static constexpr bool kZeroPadded = true;
  const TW* w;
  Vec<TW, VEC>* lane;
  __device__ __forceinline__ SharedLaneWeight(const TW* weight, std::int64_t first, std::int64_t end, std::int64_t cols,
                                              Vec<TW, VEC>* slice)
      : w(weight), lane(slice + threadIdx.x) {
    if (!w) return;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {  // each lane reads back only what it wrote: no barrier
      const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
      lane[i * STRIDE] = load_chunk<ALIGNED, TW, VEC>(w, idx, cols, idx < end);
    }
  }
  __device__ __forceinline__ Vec<TW, VEC> operator()(int i, std::int64_t) const { return lane[i * STRIDE]; }
};

template <bool ALIGNED, class TX, class TW, class TY, int VEC, int ITEMS, int STRIDE, bool PRELOAD>
__device__ __forceinline__ void store_items(TY* y, const TW* w, const Vec<TW, VEC> (&wv)[ITEMS], std::int64_t first,
                                            std::int64_t end, const Vec<TX, VEC> (&v)[ITEMS], float rstd,
                                            const ForwardArgs& a) {
  with_mode(a.llama, w != nullptr, [&](auto llama, auto has_w) {
    constexpr bool kLlama = decltype(llama)::value, kHasW = decltype(has_w)::value;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
      if (idx >= end) continue;
      float wf[VEC], xf[VEC], out[VEC];
      if constexpr (kHasW) unpack(weight_item<ALIGNED, TW, VEC, ITEMS, PRELOAD>(w, wv, i, idx, a.cols), wf);
      // Converted again from the raw registers (see opaque): keeping the fp32 copies made
      // while summing squares would double the row's registers.
      unpack(opaque(v[i]), xf);
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        out[k] = normalise<TX, TW, kLlama, kHasW>(xf[k], rstd, kHasW ? wf[k] : 1.f, a.weight_offset);
      store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols, pack<TY, VEC>(out));
    }
  });
}

// ---------------------------------------------------------------------------------------
// warp_rows and block_row: the row lives in registers between the reduction and the
// scaling, so x is read from memory once. TPR lanes share a row, each holding ITEMS
// vectors of VEC elements.
// ---------------------------------------------------------------------------------------
// resident_threads / BLOCK blocks per SM: at most 64 registers a thread, so that half of an
// SM's 2048 threads are resident (at 80 registers only 768 were, and a 4096-row batch of
// 1024-element bf16 rows took 1.3 waves of the grid instead of one).
template <bool ALIGNED, class TX, class TW, class TY, int VEC, int TPR, int ITEMS, int BLOCK>
__global__ void __launch_bounds__(BLOCK, resident_threads(2) / BLOCK) RegisterRowsImpl(const ForwardArgs a) {
  begin_dependent_grid();
  constexpr int kRowsPerBlock = BLOCK / TPR;
  using Sum = RowSum<TPR, BLOCK>;
  __shared__ typename Sum::TempStorage temp;

  const int lane = threadIdx.x % TPR;
  const int slot = threadIdx.x / TPR;
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);
  Vec<TW, VEC> wv[ITEMS];
  bool weight_pending = true;

  // The loop bound is uniform across the block, so every lane reaches every reduction
  // (rows past the end compute on zeros and store nothing).
  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock; first < a.total_rows;
       first += static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock) {
    const std::int64_t row = first + slot;
    const bool valid = row < a.total_rows;
    const TX* x = static_cast<const TX*>(a.x) + (valid ? row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) : 0);
    Vec<TX, VEC> v[ITEMS];
    load_items<ALIGNED, TX, VEC, ITEMS, TPR>(x, lane, vectors, a.cols, valid, v);
    // The weight after the first row's loads are issued, so that both are in flight
    // together: issued first, the copies of the weight into the registers it keeps across
    // rows stalled on its arrival and held back x's loads (two memory latencies in a row
    // for a single row).
    if (weight_pending) {
      load_weight<ALIGNED, TW, VEC, ITEMS, TPR, kForwardPreloadsWeight<TW, VEC, ITEMS>>(w, lane, vectors, a.cols, wv);
      weight_pending = false;
    }
    // Given sums replace the reduction's result: the row is in registers for y anyway, and
    // the reduction left in place keeps the plain kernel's code and register allocation.
    const float ss = Sum::sum(temp, sum_squares<TX, VEC, ITEMS>(v));
    const float rstd = rstd_from_sum(a.row_sums ? (valid ? a.row_sums[row] : 0.f) : ss, a.inv_cols, a.eps);
    if (!valid) continue;
    if (a.rstd && lane == 0) a.rstd[row] = rstd;
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    store_items<ALIGNED, TX, TW, TY, VEC, ITEMS, TPR, kForwardPreloadsWeight<TW, VEC, ITEMS>>(y, w, wv, lane, vectors,
                                                                                              v, rstd, a);
  }
}

// ---------------------------------------------------------------------------------------
// cluster_row (sm_90): a row too long for one block's registers is split over the blocks
// of a thread-block cluster, each holding its slice in registers; the row's sum of squares
// is combined through distributed shared memory. x is still read once.
// ---------------------------------------------------------------------------------------
template <bool ALIGNED, class TX, class TW, class TY, int VEC, int ITEMS, int BLOCK>
__global__ void __launch_bounds__(BLOCK, resident_threads(2) / BLOCK) ClusterRowImpl(const ForwardArgs a) {
  begin_dependent_grid();
  using Sum = ClusterSum<BLOCK, 1>;
  __shared__ typename Sum::TempStorage temp;
  const ClusterPlace place = cluster_place();
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const std::int64_t per_block = (vectors + place.size - 1) / place.size;
  const std::int64_t begin = place.rank * per_block;
  const std::int64_t end = begin + per_block < vectors ? begin + per_block : vectors;
  const TW* w = static_cast<const TW*>(a.weight);
  Vec<TW, VEC> wv[ITEMS];
  load_weight<ALIGNED, TW, VEC, ITEMS, BLOCK, kForwardPreloadsWeight<TW, VEC, ITEMS>>(w, begin + threadIdx.x, end,
                                                                                      a.cols, wv);
  int parity = 0;

  for (std::int64_t row = place.cluster; row < a.total_rows; row += place.clusters) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    Vec<TX, VEC> v[ITEMS];
    load_items<ALIGNED, TX, VEC, ITEMS, BLOCK>(x, begin + threadIdx.x, end, a.cols, true, v);
    float ss[1] = {sum_squares<TX, VEC, ITEMS>(v)};
    Sum::sum(temp, ss, parity);
    if (a.row_sums) ss[0] = a.row_sums[row];  // given sums replace the result, as above
    const float rstd = rstd_from_sum(ss[0], a.inv_cols, a.eps);
    if (a.rstd && place.rank == 0 && threadIdx.x == 0) a.rstd[row] = rstd;
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    store_items<ALIGNED, TX, TW, TY, VEC, ITEMS, BLOCK, kForwardPreloadsWeight<TW, VEC, ITEMS>>(
        y, w, wv, begin + threadIdx.x, end, v, rstd, a);
  }
  Sum::finish();
}

// ---------------------------------------------------------------------------------------
// long_row: a row per block, any length, any alignment (chunks as load_chunk reads them).
// The row is streamed twice: once for the sum of squares, once to scale it (the second
// read mostly hits L2, which holds the rows in flight).
// ---------------------------------------------------------------------------------------
template <bool ALIGNED, class TX, class TW, class TY, int VEC, int BLOCK>
__global__ void __launch_bounds__(BLOCK) LongRowImpl(const ForwardArgs a) {
  begin_dependent_grid();
  using Sum = RowSum<BLOCK, BLOCK>;
  __shared__ typename Sum::TempStorage temp;
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);

  for (std::int64_t row = blockIdx.x; row < a.total_rows; row += gridDim.x) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    float ss = 0.f;
    const std::int64_t summed = a.row_sums ? 0 : vectors;  // the first pass only sums: given sums skip it
#pragma unroll 4
    for (std::int64_t idx = threadIdx.x; idx < summed; idx += BLOCK) {
      float f[VEC];
      unpack(load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true), f);
#pragma unroll
      for (int k = 0; k < VEC; ++k) ss += f[k] * f[k];
    }
    // Given sums replace the block's reduction in every thread (a.row_sums is the grid's).
    const float rstd = rstd_from_sum(a.row_sums ? a.row_sums[row] : Sum::sum(temp, ss), a.inv_cols, a.eps);
    if (a.rstd && threadIdx.x == 0) a.rstd[row] = rstd;
    with_mode(a.llama, w != nullptr, [&](auto llama, auto has_w) {
      constexpr bool kLlama = decltype(llama)::value, kHasW = decltype(has_w)::value;
#pragma unroll 4
      for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
        float xf[VEC], wf[VEC], out[VEC];
        unpack(load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true), xf);
        if constexpr (kHasW) unpack(load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, true), wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          out[k] = normalise<TX, TW, kLlama, kHasW>(xf[k], rstd, kHasW ? wf[k] : 1.f, a.weight_offset);
        store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols, pack<TY, VEC>(out));
      }
    });
  }
}

}  // namespace rmsnorm::detail::cuda
