// Row sums across a thread-block cluster (sm_90): a row too long for one block's registers
// is split over the cluster's blocks, and each needs the sum over the whole row.
#pragma once

#include <cooperative_groups.h>

#include <cstdint>
#include <cub/warp/warp_reduce.cuh>
#include <cuda/ptx>

#include "kernel_configs.h"

// Device code for a target without clusters (before sm_90): the cluster kernels' bodies are
// left out there, since the planner gives them no launch on such a device (cluster_row
// needs sm_90) and compiling them for sm_80 only spent build time.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define RMSNORM_CLUSTER_BODY 0
#else
#define RMSNORM_CLUSTER_BODY 1
#endif

namespace rmsnorm::detail::cuda {

// The two mailboxes' mbarriers of a row sum (ClusterSum, SplitRowSum), set up once at the
// start of the kernel by thread 0: one arrival a phase (the thread that arms it), ordered
// (fence.mbarrier_init) before this block's arrival at the cluster barrier that follows,
// which every block passes before its first store into another block's mailbox.
__device__ __forceinline__ void init_mailboxes(std::uint64_t (&landed)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x == 0) {
    ::cuda::ptx::mbarrier_init(&landed[0], 1);
    ::cuda::ptx::mbarrier_init(&landed[1], 1);
    ::cuda::ptx::fence_mbarrier_init(::cuda::ptx::sem_release, ::cuda::ptx::scope_cluster);
  }
#else
  (void)landed;
#endif
}

// The row sum without a cluster barrier. Each warp sums its lanes (a butterfly), and
// lanes 0..ranks-1 send the warp's sum to every block of the cluster (st.async into the
// block's mailbox: slot rank * warps + warp), each store counting its bytes on the
// receiving block's mbarrier. A warp waits only until its own block's mailbox is full,
// then adds the slots in slot order (lane-strided, then a butterfly), so every warp of
// every block gets the same bits, with no block or cluster barrier on the way: a block
// goes on as soon as the last part of its row has landed, not when the slowest block of
// the cluster has passed a barrier.
//
// The mailbox and its mbarrier alternate between rows (step & 1). A block sends row k+2's
// parts into mailbox k & 1 only after its wait for row k+1, which needs row k+1's parts
// of every warp of the cluster, each sent after that warp read row k's mailbox: so no slot
// is overwritten before it is read, and the mbarrier's phase of row k has completed before
// row k+2's bytes count on it (a store that lands before the receiving block's thread 0
// arms the phase only takes its transaction count below zero, which the phase allows).
//
// A cluster has two blocks or more (cluster_blocks in kernel_configs.h): st.async cannot
// store into the shared memory of the block that issues it alone.
//
// init() once at the start (every block's mbarriers set before any store can land), with
// the loop's step numbers from 0; finish() once before the kernel returns so that no block
// leaves while another may still read its shared memory (the dynamic scales' group maxima).
template <int BLOCK, int VALUES>
struct ClusterSum {
  static_assert(kMaxNonPortableClusterSize <= 32, "a warp's lanes send to the cluster's ranks");
  static_assert(BLOCK % 32 == 0, "whole warps");
  static constexpr int kWarps = BLOCK / 32;
  struct TempStorage {
    float mail[2][kWarps * kMaxNonPortableClusterSize][VALUES];  // a slot a warp of every rank
    std::uint64_t landed[2];
  };

  __device__ __forceinline__ static void init(TempStorage& t) {
    init_mailboxes(t.landed);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#endif
  }

  // init() in two halves (as SplitRowSum's): the arrival at the cluster barrier here, the
  // wait in the first send<true>() just before its stores into the other blocks, so that
  // the first row's loads run while the barrier completes.
  __device__ __forceinline__ static void arrive(TempStorage& t) {
    init_mailboxes(t.landed);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    ::cuda::ptx::barrier_cluster_arrive(::cuda::ptx::sem_relaxed);
#endif
  }

  // The row's sums in every lane of every block: send, then receive.
  __device__ __forceinline__ static void sum(TempStorage& t, float (&v)[VALUES], unsigned step) {
    send(t, v, step);
    receive(t, v, step);
  }

  // This warp's part of the row's sums, to every block of the cluster. Work that must not
  // start before this thread's v has been computed (and so before the loads it was computed
  // from have completed) may go between send and receive: the block's wait for the rest of
  // the cluster.
  // ARRIVED: the kernel set up with arrive(), not init(): step 0 waits at the cluster barrier.
  template <bool ARRIVED = false>
  __device__ __forceinline__ static void send(TempStorage& t, const float (&v)[VALUES], unsigned step) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned ranks = cluster.num_blocks();
    const unsigned lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
    const int box = static_cast<int>(step & 1u);
    // Arming the mailbox orders nothing but the mbarrier itself: a release at cta scope,
    // which does not wait for this thread's stores of the previous row to complete (a
    // cluster-scope release would, and every warp of the cluster needs warp 0's part).
    if (threadIdx.x == 0)
      ::cuda::ptx::mbarrier_arrive_expect_tx(::cuda::ptx::sem_release, ::cuda::ptx::scope_cta,
                                             ::cuda::ptx::space_shared, &t.landed[box],
                                             ranks * kWarps * VALUES * static_cast<unsigned>(sizeof(float)));
    float part[VALUES];
#pragma unroll
    for (int k = 0; k < VALUES; ++k) part[k] = butterfly(v[k]);
    if (ARRIVED && step == 0) ::cuda::ptx::barrier_cluster_wait();  // every block's mailboxes are set up
    if (lane < ranks) {
      float* slot = cluster.map_shared_rank(&t.mail[box][cluster.block_rank() * kWarps + warp][0], lane);
      std::uint64_t* bar = cluster.map_shared_rank(&t.landed[box], lane);
#pragma unroll
      for (int k = 0; k < VALUES; ++k) ::cuda::ptx::st_async(slot + k, part[k], bar);
    }
#else
    (void)t;
    (void)v;
    (void)step;
    __trap();  // the planner never picks clusters below sm_90
#endif
  }

  // Waits until every warp of the cluster has sent its part of the row, then v = the sums.
  __device__ __forceinline__ static void receive(TempStorage& t, float (&v)[VALUES], unsigned step) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned ranks = cooperative_groups::this_cluster().num_blocks();
    const unsigned lane = threadIdx.x % 32u;
    const int box = static_cast<int>(step & 1u);
    while (!::cuda::ptx::mbarrier_try_wait_parity(::cuda::ptx::sem_acquire, ::cuda::ptx::scope_cluster, &t.landed[box],
                                                  (step >> 1) & 1u)) {
    }
#pragma unroll
    for (int k = 0; k < VALUES; ++k) {
      float s = 0.f;
      for (unsigned i = lane; i < ranks * kWarps; i += 32u) s += t.mail[box][i][k];
      v[k] = butterfly(s);
    }
#else
    (void)t;
    (void)v;
    (void)step;
    __trap();
#endif
  }

  // The warp's sum in every lane, by xor shuffles. Not CUB's WarpReduce (RowSum in
  // row_sum.cuh): its sum lands in lane 0 and needs a broadcast, and with it (tree 046ac6e,
  // H200, bf16, 2026-12-04) the backward's cluster rows fell from 92.0 / 86.4 % of the copy
  // to 79.5 / 76.5 % at 8192 x 32768 / 4096 x 65536, the forward's unchanged.
  __device__ __forceinline__ static float butterfly(float v) {
#pragma unroll
    for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
    return v;
  }

  __device__ __forceinline__ static void finish() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#endif
  }
};

// The row sum of a block row split over a cluster of SPLIT blocks of BLOCK threads (a few
// rows, fewer than the SMs: each row then moves through SPLIT SMs instead of one), in
// exactly the block row's order, so that a row gives the same bits split or not, alone or
// in a batch: each warp sums its lanes with CUB's WarpReduce, as RowSum does, and the row's
// warp totals are added from 0 in the order of the warps of the whole row (block rank,
// then warp), as BlockReduce adds its warp aggregates and BlockRowSum its row's warps.
// Lanes 0..SPLIT-1 of each warp send its total to every block of the cluster (st.async into
// slot rank * warps + warp of the block's mailbox, counted on its mbarrier), and every
// thread waits until its own block's mailbox is full. The mailbox alternates between rows
// as ClusterSum's does, for the same reason (a block sends row k+2's totals only after its
// wait for row k+1, which needs row k+1's totals of every warp of the cluster, each sent
// after that warp read row k's mailbox). init() once at the start, the rows' steps numbered
// from 0; finish() before the kernel returns.
template <int BLOCK, int SPLIT>
struct SplitRowSum {
  static_assert(BLOCK % 32 == 0 && SPLIT >= 2 && SPLIT <= 32, "whole warps; a warp's lanes send to the ranks");
  static constexpr int kWarps = BLOCK / 32;
  using WarpReduce = cub::WarpReduce<float>;
  struct TempStorage {
    typename WarpReduce::TempStorage warp[kWarps];
    float mail[2][SPLIT * kWarps];
    std::uint64_t landed[2];
  };

  // The cluster barrier after the mailboxes' set-up in two halves: the arrival here (relaxed:
  // the fence orders the set-up), the wait in the first sum() just before its stores into
  // the other blocks, so that the first row's loads and its warps' sums run while the
  // barrier completes. On the H200 a whole cluster barrier at the start and one at the end
  // made a split call 0.1-0.6 us slower than the block row it replaces (tree cf15eb0).
  __device__ __forceinline__ static void init(TempStorage& t) {
    init_mailboxes(t.landed);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    ::cuda::ptx::barrier_cluster_arrive(::cuda::ptx::sem_relaxed);
#endif
  }

  // The row's sum in every thread of every block of the cluster.
  __device__ __forceinline__ static float sum(TempStorage& t, float v, unsigned step) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
    const int box = static_cast<int>(step & 1u);
    if (threadIdx.x == 0)  // as ClusterSum::send arms its mailbox
      ::cuda::ptx::mbarrier_arrive_expect_tx(::cuda::ptx::sem_release, ::cuda::ptx::scope_cta,
                                             ::cuda::ptx::space_shared, &t.landed[box],
                                             SPLIT * kWarps * static_cast<unsigned>(sizeof(float)));
    float total = WarpReduce(t.warp[warp]).Sum(v);  // valid in lane 0
    total = __shfl_sync(0xffffffffu, total, 0);
    if (step == 0) ::cuda::ptx::barrier_cluster_wait();  // every block's mailboxes are set up
    if (lane < SPLIT) {
      float* slot = cluster.map_shared_rank(&t.mail[box][cluster.block_rank() * kWarps + warp], lane);
      std::uint64_t* bar = cluster.map_shared_rank(&t.landed[box], lane);
      ::cuda::ptx::st_async(slot, total, bar);
    }
    while (!::cuda::ptx::mbarrier_try_wait_parity(::cuda::ptx::sem_acquire, ::cuda::ptx::scope_cluster, &t.landed[box],
                                                  (step >> 1) & 1u)) {
    }
    float out = 0.f;
#pragma unroll
    for (int i = 0; i < SPLIT * kWarps; ++i) out += t.mail[box][i];
    return out;
#else
    (void)t;
    (void)v;
    (void)step;
    __trap();  // the launcher never splits rows below sm_90
    return 0.f;
#endif
  }

  // No barrier at the end: a split row reads no other block's shared memory (its sums
  // are pushed), and a block leaves only after every store into its own mailbox has landed
  // (its last wait counted them), so no store can reach a block that has left.
  __device__ __forceinline__ static void finish() {}
};

// A barrier of the whole cluster, with its memory ordering: shared memory written before
// it by any block is visible after it to every block of the cluster.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __trap();  // the planner never picks clusters below sm_90
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
