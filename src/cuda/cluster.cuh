// Row sums across a thread-block cluster (sm_90): a row too long for one block's registers
// is split over the cluster's blocks, and each needs the sum over the whole row.
#pragma once

#include <cooperative_groups.h>

#include <cub/block/block_reduce.cuh>

#include "kernel_configs.h"

namespace rmsnorm::detail::cuda {

// Every block reduces its part with CUB, publishes it in its shared memory, and after one
// cluster barrier every block reads the parts of all ranks through distributed shared
// memory and adds them in rank order, so all blocks get the same bits. The published slot alternates
// between rows: a block can only write row k+2's part after the barrier of row k+1, which
// every reader of row k's part has passed. Call finish() once before the kernel returns so
// that no block leaves while another may still read its shared memory.
template <int BLOCK, int VALUES>
struct ClusterSum {
  static_assert(kMaxClusterSize <= 32, "a warp's lanes read the cluster's ranks");
  using BlockReduce = cub::BlockReduce<float, BLOCK>;
  struct TempStorage {
    typename BlockReduce::TempStorage reduce;
    float published[2][VALUES];
    float total[VALUES];
  };

  __device__ __forceinline__ static void sum(TempStorage& t, float (&v)[VALUES], int& parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
#pragma unroll
    for (int k = 0; k < VALUES; ++k) {
      const float part = BlockReduce(t.reduce).Sum(v[k]);  // valid in thread 0
      if (threadIdx.x == 0) t.published[parity][k] = part;
      if (k + 1 < VALUES) __syncthreads();  // the reduce storage is reused
    }
    cluster.sync();
    if (threadIdx.x < 32) {
      // Lane r reads rank r's parts: one remote round trip for the whole cluster rather
      // than one per rank in a row. Lane 0 then adds them in rank order from registers.
      const unsigned ranks = cluster.num_blocks();
      float part[VALUES] = {};
      if (threadIdx.x < ranks) {
        const float* remote = cluster.map_shared_rank(&t.published[parity][0], threadIdx.x);
#pragma unroll
        for (int k = 0; k < VALUES; ++k) part[k] = remote[k];
      }
      float total[VALUES] = {};
      for (unsigned r = 0; r < ranks; ++r)
#pragma unroll
        for (int k = 0; k < VALUES; ++k) total[k] += __shfl_sync(0xffffffffu, part[k], static_cast<int>(r));
      if (threadIdx.x == 0)
#pragma unroll
        for (int k = 0; k < VALUES; ++k) t.total[k] = total[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < VALUES; ++k) v[k] = t.total[k];
    parity ^= 1;
#else
    (void)t;
    (void)v;
    (void)parity;
    __trap();  // the planner never picks clusters below sm_90
#endif
  }

  __device__ __forceinline__ static void finish() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#endif
  }
};

// A barrier of the whole cluster, with its memory ordering: shared memory written before
// it by any block is visible after it to every block of the cluster.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __trap();    // the planner never picks clusters below sm_90
#endif
}

// The cell at the address of `local` in the shared memory of block `rank` of the cluster.
template <class T>
__device__ __forceinline__ T* cluster_cell(T* local, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(local, rank);
#else
  (void)rank;
  return local;
#endif
}

// This block's place in its cluster (1-D clusters along x).
struct ClusterPlace {
  unsigned rank, size;
  std::int64_t cluster, clusters;
};
__device__ __forceinline__ ClusterPlace cluster_place() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned size = cluster.num_blocks();
  return {cluster.block_rank(), size, static_cast<std::int64_t>(blockIdx.x / size),
          static_cast<std::int64_t>(gridDim.x / size)};
#else
  return {0, 1, static_cast<std::int64_t>(blockIdx.x), static_cast<std::int64_t>(gridDim.x)};
#endif
}

}  // namespace rmsnorm::detail::cuda
