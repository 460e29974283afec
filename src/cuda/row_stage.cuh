// Double-buffered staging of a block's slice of the next row in shared memory (sm_90): one
// thread issues bulk asynchronous copies (cp.async.bulk, the TMA engine) of the slice of
// each array, and the block waits on the buffer's mbarrier until the bytes have landed.
// The copies of row k+1 are in flight while the block reduces, synchronises its cluster and
// stores row k: without them, a block with one row in registers has nothing in flight
// between its last load of a row and its first load of the next.
//
// A slice is contiguous in global memory and lands contiguous in shared memory, so vector v
// of the slice is slot v: a lane whose vectors are first + i * BLOCK reads slot
// threadIdx.x + i * BLOCK.
#pragma once

#include <cstdint>
#include <cuda/ptx>

namespace rmsnorm::detail::cuda {

template <class T, int SLOTS, int ARRAYS>
struct RowStage {
  // Shared memory of the buffers, passed by the kernel (dynamic shared memory).
  static constexpr std::size_t kBytes = sizeof(T) * SLOTS * ARRAYS * 2;
  struct Barriers {
    std::uint64_t full[2];  // the buffer's bytes have landed (one phase per use)
  };

  Barriers& bars;
  T* slots;  // [buffer][array][slot]

  // Called by every thread of the block before any other use.
  __device__ __forceinline__ RowStage(Barriers& b, T* buffers) : bars(b), slots(buffers) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
      ::cuda::ptx::mbarrier_init(&bars.full[0], 1);
      ::cuda::ptx::mbarrier_init(&bars.full[1], 1);
      ::cuda::ptx::fence_mbarrier_init(::cuda::ptx::sem_release, ::cuda::ptx::scope_cluster);
    }
    __syncthreads();
#endif
  }

  __device__ __forceinline__ T* slot(int buffer, int array) const { return slots + (buffer * ARRAYS + array) * SLOTS; }

  // Thread 0 only: starts the copies of `vectors` vectors from each source into `buffer`.
  // Every reader of the buffer's previous contents must have passed a block barrier since.
  __device__ __forceinline__ void issue(int buffer, const T* const (&src)[ARRAYS], std::int64_t vectors) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const std::uint32_t bytes = static_cast<std::uint32_t>(vectors * sizeof(T));
    ::cuda::ptx::mbarrier_arrive_expect_tx(::cuda::ptx::sem_release, ::cuda::ptx::scope_cta, ::cuda::ptx::space_shared,
                                           &bars.full[buffer], bytes * ARRAYS);
    if (bytes == 0) return;
#pragma unroll
    for (int a = 0; a < ARRAYS; ++a)
      ::cuda::ptx::cp_async_bulk(::cuda::ptx::space_cluster, ::cuda::ptx::space_global, slot(buffer, a), src[a], bytes,
                                 &bars.full[buffer]);
#else
    (void)buffer, (void)src, (void)vectors;
#endif
  }

  // Every thread: waits until the copies of the buffer's use number `use` have landed.
  __device__ __forceinline__ void wait(int buffer, unsigned use) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    while (!::cuda::ptx::mbarrier_try_wait_parity(&bars.full[buffer], use & 1u)) {
    }
#else
    (void)buffer, (void)use;
#endif
  }
};

}  // namespace rmsnorm::detail::cuda
