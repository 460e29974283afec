// The partial sums of the sharded-row steps (partial_sum_squares, partial_grad_dot): one f32
// a row, the sum over the shard's columns of x^2, or of dy * (w + offset) * x. The apply
// steps need no kernel of their own: the forward and backward kernels read the reduced sums
// instead of reducing (ForwardProblem::row_sums, BackwardProblem::row_dots).
//
// Memory-bound like the forward: each byte of x (and dy) is read once, in 16-byte chunks,
// and summed in fp32. Layout invariance: the threads that sum a row, and so the order of
// its sum, follow from the row's chunk count (cols and the dtype) alone, never from the row
// count, the strides or the alignment; alignment only decides whether a chunk is loaded as
// one access or an element at a time (load_chunk), into the same registers. A row's sum
// therefore has the same bits alone, inside a batch and inside any view.
#include <algorithm>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "sharded_problem.h"

namespace rmsnorm::detail::cuda {
namespace {

// What a row's sum adds up, per element.
enum class Terms {
  squares,       // x^2 (partial_sum_squares)
  dot,           // dy * x (partial_grad_dot without a weight)
  weighted_dot,  // dy * (w + offset) * x, the backward's order (dot_gx)
};

struct PartialSumsArgs {
  const void* x;
  const void* dy;      // Terms::dot and weighted_dot
  const void* weight;  // Terms::weighted_dot
  float* sums;
  std::int64_t rows, total_rows, cols;
  std::int64_t x_batch_stride, x_row_stride;
  std::int64_t dy_batch_stride, dy_row_stride;
  float weight_offset;
};

// The threads that sum a row: a warp (several rows a block) or the whole block. The total
// is valid in the row's first thread.
template <int TPR, int BLOCK, bool IN_WARP = (TPR < BLOCK)>
struct RowTotal;

template <int TPR, int BLOCK>
struct RowTotal<TPR, BLOCK, true> {
  static_assert(TPR == 32 && BLOCK % 32 == 0, "a warp a row");
  using WarpReduce = cub::WarpReduce<float>;
  struct TempStorage {
    typename WarpReduce::TempStorage warp[BLOCK / 32];
  };
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const float total = WarpReduce(t.warp[threadIdx.x / 32]).Sum(v);
    __syncwarp();  // the warp's storage is reused by its next row
    return total;
  }
};

template <int TPR, int BLOCK>
struct RowTotal<TPR, BLOCK, false> {
  using BlockReduce = cub::BlockReduce<float, BLOCK>;
  using TempStorage = typename BlockReduce::TempStorage;
  __device__ __forceinline__ static float sum(TempStorage& t, float v) {
    const float total = BlockReduce(t).Sum(v);
    __syncthreads();  // the storage is reused by the block's next row
    return total;
  }
};

// TPR threads a row, BLOCK / TPR rows a block, the grid looping over the rows. A thread
// adds its chunks lane, lane + TPR, ... in order into one fp32 sum, then the row's threads
// are reduced in CUB's fixed order. Elements past `cols` (in the last chunk, when cols is
// not a multiple of it) load as zeros and add +0; a misaligned row loads the same chunks an
// element at a time: either way the sum is the one an aligned row of that length gets.
template <bool ALIGNED, Terms TERMS, class TX, class TW, int VEC, int TPR, int BLOCK>
__global__ void __launch_bounds__(BLOCK) PartialSumsImpl(const PartialSumsArgs a) {
  begin_dependent_grid();
  using Total = RowTotal<TPR, BLOCK>;
  __shared__ typename Total::TempStorage temp;
  constexpr int kRowsPerBlock = BLOCK / TPR;
  // Chunks in flight a thread: 4 of x alone; 2 of each of x, dy (and the weight) for the dots.
  constexpr int kUnroll = TERMS == Terms::squares ? 4 : 2;
  const int lane = threadIdx.x % TPR;
  const std::int64_t chunks = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);

  // `row` is the same for all the threads of a row, so all of them reach its reduction.
  for (std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / TPR; row < a.total_rows;
       row += static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    const TX* dy = nullptr;
    if constexpr (TERMS != Terms::squares)
      dy = static_cast<const TX*>(a.dy) + row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride);
    float s = 0.f;
#pragma unroll(kUnroll)
    for (std::int64_t idx = lane; idx < chunks; idx += TPR) {
      float xf[VEC];
      unpack(load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true), xf);
      if constexpr (TERMS == Terms::squares) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) s += xf[k] * xf[k];
      } else {
        float gf[VEC], wf[VEC];
        unpack(load_chunk<ALIGNED, TX, VEC>(dy, idx, a.cols, true), gf);
        if constexpr (TERMS == Terms::weighted_dot) unpack(load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, true), wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          float g = gf[k];
          if constexpr (TERMS == Terms::weighted_dot) g *= wf[k] + a.weight_offset;
          s += g * xf[k];
        }
      }
    }
    s = Total::sum(temp, s);
    if (lane == 0) a.sums[row] = s;
  }
}

// Rows of up to this many chunks (32 a lane) are summed by a warp, eight rows a 256-thread
// block; longer ones by a 512-thread block each. A warp a row keeps many short rows in flight
// (a block a row would leave most of its lanes idle); a row long enough to keep a block's
// loads busy gets one.
constexpr std::int64_t kWarpRowChunks = 1024;
constexpr int kWarpRowsBlock = 256;
constexpr int kRowBlock = 512;

// Whether chunks load as one 16-byte access: every row start of every array aligned to its
// chunk and cols a multiple of the chunk, the rule of the planner's load_width (plan.cpp).
// Either way the chunks land in the same registers and are summed in the same order.
bool loads_whole_chunks(const PartialSumsProblem& p, int vec) {
  if (p.cols % vec != 0) return false;
  const auto aligned = [&](const void* ptr, DType t, std::int64_t row_stride, std::int64_t batch_stride) {
    const std::size_t chunk = std::min<std::size_t>(16, static_cast<std::size_t>(vec) * dtype_size(t));
    return reinterpret_cast<std::uintptr_t>(ptr) % chunk == 0 && row_stride % vec == 0 && batch_stride % vec == 0;
  };
  return aligned(p.x, p.x_dtype, p.x_row_stride, p.x_batch_stride) &&
         (!p.dy || aligned(p.dy, p.x_dtype, p.dy_row_stride, p.dy_batch_stride)) &&
         (!p.weight || aligned(p.weight, p.w_dtype, 0, 0));
}

unsigned grid_of(std::int64_t blocks) { return static_cast<unsigned>(std::min<std::int64_t>(blocks, 0x7fffffff)); }

template <bool ALIGNED, Terms TERMS, class TX, class TW>
void launch_terms(const PartialSumsArgs& a, const Queue& q) {
  constexpr int kVec = 16 / sizeof(TX);
  if (chunks_of(a.cols, kVec) <= kWarpRowChunks) {
    constexpr int kRowsPerBlock = kWarpRowsBlock / 32;
    launch_kernel(PartialSumsImpl<ALIGNED, TERMS, TX, TW, kVec, 32, kWarpRowsBlock>,
                  {grid_of((a.total_rows + kRowsPerBlock - 1) / kRowsPerBlock), kWarpRowsBlock}, q, "PartialSumsImpl",
                  nullptr, a);
  } else {
    launch_kernel(PartialSumsImpl<ALIGNED, TERMS, TX, TW, kVec, kRowBlock, kRowBlock>,
                  {grid_of(a.total_rows), kRowBlock}, q, "PartialSumsImpl", nullptr, a);
  }
}

// The weight's type TW (read with Terms::weighted_dot only).
template <class TX, class TW>
void launch_typed(const PartialSumsProblem& p, const Queue& q) {
  PartialSumsArgs a{};
  a.x = p.x;
  a.dy = p.dy;
  a.weight = p.weight;
  a.sums = static_cast<float*>(p.sums);
  a.rows = p.rows;
  a.total_rows = p.total_rows();
  a.cols = p.cols;
  a.x_batch_stride = p.x_batch_stride;
  a.x_row_stride = p.x_row_stride;
  a.dy_batch_stride = p.dy_batch_stride;
  a.dy_row_stride = p.dy_row_stride;
  a.weight_offset = static_cast<float>(p.weight_offset);
  const auto launch = [&](auto aligned) {
    constexpr bool kAligned = decltype(aligned)::value;
    if (!p.dy) return launch_terms<kAligned, Terms::squares, TX, TX>(a, q);
    if (p.weight) return launch_terms<kAligned, Terms::weighted_dot, TX, TW>(a, q);
    launch_terms<kAligned, Terms::dot, TX, TX>(a, q);
  };
  if (loads_whole_chunks(p, 16 / sizeof(TX)))
    launch(std::true_type{});
  else
    launch(std::false_type{});
}

}  // namespace

// x's type TX; the weight is TX or, for 16-bit x, f32 (validated).
template <class TX>
void launch_partial_sums(const PartialSumsProblem& p, const Queue& q) {
  if constexpr (!std::is_same<TX, float>::value) {
    if (p.weight && p.w_dtype == DType::f32) return launch_typed<TX, float>(p, q);
  }
  launch_typed<TX, TX>(p, q);
}

template void launch_partial_sums<float>(const PartialSumsProblem&, const Queue&);
template void launch_partial_sums<__half>(const PartialSumsProblem&, const Queue&);
template void launch_partial_sums<__nv_bfloat16>(const PartialSumsProblem&, const Queue&);

}  // namespace rmsnorm::detail::cuda
