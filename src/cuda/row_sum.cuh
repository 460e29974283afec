// Row sums within a block, returned to every lane of the row: CUB's warp and block
// reductions. The cluster rows' sum across blocks (cluster.cuh) has its own warp sums.
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

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

}  // namespace rmsnorm::detail::cuda
