// Row sums within a block, returned to every lane of the row: CUB's warp and block
// reductions. The cluster rows' sum across blocks (cluster.cuh) has its own warp sums.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

namespace rmsnorm::detail::cuda {

// Sum over the THREADS lanes that share a row. Warp-sized groups reduce with shuffles (CUB
// WarpReduce on a logical warp), rows of whole warps with CUB WarpReduce and shared memory;
// either way the result is returned to every lane of the row.
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
  __device__ __forceinline__ static float sum(TempStorage& t, float v, unsigned) { return sum(t, v); }
};

// A row of whole warps of a block (the whole block, or several rows: the backward's
// 2048-element rows, which leave fewer dw partial rows that way): CUB WarpReduce in each
// warp, its lane 0 keeps the warp's total in shared memory, one block barrier, then every
// lane adds its row's warp totals in warp order, as CUB's BlockReduce adds its warp
// aggregates: the same bits as BlockReduce, with one barrier a row on the way to the
// stores where BlockReduce and the broadcast of its total took three (a single row's
// critical path: decode). The totals alternate between two sets by row (sum's step), so
// that no barrier is needed before the next row writes its own: a warp writes row k+2's
// totals only after row k+1's barrier, which every warp reaches only after reading row k's.
// Without a step, one set and a barrier after the reads.
template <int THREADS, int BLOCK>
struct BlockRowSum {
  static_assert(THREADS % 32 == 0 && BLOCK % THREADS == 0, "rows of whole warps");
  static constexpr int kWarpsPerRow = THREADS / 32;
  using WarpReduce = cub::WarpReduce<float>;
  struct TempStorage {
    typename WarpReduce::TempStorage warp[BLOCK / 32];
    float part[2][BLOCK / 32];
  };
  __device__ __forceinline__ static float sum(TempStorage& t, float v, unsigned step) {
    const int warp = threadIdx.x / 32;
    float* part = t.part[step & 1u];
    const float total = WarpReduce(t.warp[warp]).Sum(v);  // valid in lane 0
    if (threadIdx.x % 32 == 0) part[warp] = total;
    __syncthreads();
    const int first = warp - warp % kWarpsPerRow;
    float out = part[first];
#pragma unroll
    for (int i = 1; i < kWarpsPerRow; ++i) out += part[first + i];
    return out;
  }
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const float out = sum(t, v, 0);
    __syncthreads();  // the set is reused by the next row
    return out;
  }
};
template <int THREADS, int BLOCK>
struct RowSum<THREADS, BLOCK, false> : BlockRowSum<THREADS, BLOCK> {};

}  // namespace rmsnorm::detail::cuda
