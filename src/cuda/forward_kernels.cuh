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

#include <cuda_pipeline.h>

#include "cuda/cluster.cuh"
#include "cuda/common.cuh"
#include "cuda/forward_steps.cuh"
#include "cuda/row_sum.cuh"
#include "kernel_configs.h"

namespace rmsnorm::detail::cuda {

// The max over the THREADS lanes that share a row of non-negative, non-NaN floats (the
// per-row scales' max |y|), returned to every lane: compared as their bits, which order
// such floats as their values. One redux a warp; rows of several warps meet in shared
// memory, two sets of cells in turn, so that one block barrier a row is enough (a row's
// cells are written again two rows later, after the next row's barrier, which every lane
// passes only once it has read them).
template <int THREADS, int BLOCK, bool IN_WARP = (THREADS <= 32)>
struct RowMax {
  __device__ __forceinline__ float max(float v) {
    const int base = static_cast<int>(threadIdx.x % 32) / THREADS * THREADS;
    const unsigned lanes = THREADS == 32 ? 0xffffffffu : ((1u << THREADS) - 1u) << base;
    return __uint_as_float(__reduce_max_sync(lanes, __float_as_uint(v)));
  }
};

template <int THREADS, int BLOCK>
struct RowMax<THREADS, BLOCK, false> {
  static_assert(THREADS % 32 == 0 && BLOCK % THREADS == 0, "rows of whole warps");
  static constexpr int kWarpsPerRow = THREADS / 32;
  unsigned* cells;  // 2 x BLOCK / 32
  int turn = 0;
  __device__ __forceinline__ float max(float v) {
    const int warp = threadIdx.x / 32;
    const unsigned m = __reduce_max_sync(0xffffffffu, __float_as_uint(v));
    unsigned* set = cells + turn * (BLOCK / 32);
    if (threadIdx.x % 32 == 0) set[warp] = m;
    __syncthreads();
    const int first = warp - warp % kWarpsPerRow;
    unsigned out = 0u;
#pragma unroll
    for (int i = 0; i < kWarpsPerRow; ++i) out = ::max(out, set[first + i]);
    turn ^= 1;
    return __uint_as_float(out);
  }
};

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

// A chunk's squares added to ss, one by one: the order of sum_squares, which a cluster row
// reading its pieces back from shared memory a chunk at a time repeats bit for bit.
template <class TX, int VEC>
__device__ __forceinline__ void add_squares(float& ss, const Vec<TX, VEC>& c) {
  float f[VEC];
  unpack(c, f);
#pragma unroll
  for (int k = 0; k < VEC; ++k) ss += f[k] * f[k];
}

template <class TX, int VEC, int ITEMS>
__device__ __forceinline__ float sum_squares(const Vec<TX, VEC> (&v)[ITEMS]) {
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) add_squares(ss, v[i]);
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
// for the block). The cluster-scope acquire of a row sum leaves nothing of the weight in
// L1, so a weight re-read from global memory after it came from L2, on every row.
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

// Calls emit(idx, y) for each of a lane's chunks below `end`, y the chunk's outputs in fp32
// before any store rounding (the step the epilogues consume). TX is the row's type, TC the
// one the Llama cast rounds to (x's: the same but with an f32 residual of 16-bit x).
template <bool ALIGNED, class TX, class TC, class TW, int VEC, int ITEMS, int STRIDE, bool PRELOAD, class Emit>
__device__ __forceinline__ void for_each_value(const TW* w, const Vec<TW, VEC> (&wv)[ITEMS], std::int64_t first,
                                               std::int64_t end, const Vec<TX, VEC> (&v)[ITEMS], float rstd,
                                               const ForwardArgs& a, Emit&& emit) {
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
        out[k] = normalise<TC, TW, kLlama, kHasW>(xf[k], rstd, kHasW ? wf[k] : 1.f, a.weight_offset);
      emit(idx, out);
    }
  });
}

// The ranks' sum before the residual add (fused_allreduce_add_forward): a lane's chunks of
// r_out = ((x_0 + x_1) + ... + x_{ranks-1}) + r, in fp32, rounded once to r's type TR and
// stored to r_out's row (the CPU's order, bit for bit). A rank's ITEMS chunks are loaded
// together, so that they are in flight at once; the ranks follow one another (their count is
// known only at run time). The residual's chunks are loaded before the ranks' where they
// are few (up to 64 bytes a lane), after them otherwise: a cluster row's 8 vectors a lane,
// live beside the fp32 sums through the ranks' loop, spilled 328-368 bytes a thread, 232-240
// loaded after (sm_90, nvcc 13.0). The fp32 sums of a lane's whole share of the row live
// through that loop: blocks of up to 512 threads (rows up to 16384 16-bit columns, the
// hidden sizes of tensor-parallel layers) keep them in registers; larger blocks, capped
// at 65536 / threads registers, and cluster rows spill. A partial may be a peer GPU's buffer:
// the loads are plain global loads, which reach it over NVLink.
template <bool ALIGNED, class TI, class TR, int VEC, int ITEMS, int STRIDE>
__device__ __forceinline__ void add_ranks_residual(const ForwardArgs& a, std::int64_t row, bool valid,
                                                   std::int64_t first, std::int64_t end, Vec<TR, VEC> (&out)[ITEMS]) {
  constexpr bool kResidualFirst = ITEMS * sizeof(Vec<TR, VEC>) <= 64;
  const std::int64_t offset = valid ? row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) : 0;
  const TR* r = valid ? residual_row<TR>(a, row) : static_cast<const TR*>(a.residual);
  Vec<TR, VEC> rv[ITEMS];
  if constexpr (kResidualFirst) load_items<ALIGNED, TR, VEC, ITEMS, STRIDE>(r, first, end, a.cols, valid, rv);
  float s[ITEMS][VEC];
  for (int k = 0; k < a.ranks; ++k) {
    Vec<TI, VEC> xv[ITEMS];
    load_items<ALIGNED, TI, VEC, ITEMS, STRIDE>(static_cast<const TI*>(a.rank_x[k]) + offset, first, end, a.cols, valid,
                                                xv);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      float f[VEC];
      unpack(xv[i], f);
#pragma unroll
      for (int j = 0; j < VEC; ++j) s[i][j] = k == 0 ? f[j] : s[i][j] + f[j];
    }
  }
  if constexpr (!kResidualFirst) load_items<ALIGNED, TR, VEC, ITEMS, STRIDE>(r, first, end, a.cols, valid, rv);
  TR* r_out = valid ? residual_out_row<TR>(a, row) : nullptr;
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
    float rf[VEC];
    unpack(rv[i], rf);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s[i][j] += rf[j];
    out[i] = pack<TR, VEC>(s[i]);
    if (valid && idx < end) store_chunk<ALIGNED, TR, VEC>(r_out, idx, a.cols, out[i]);
  }
}

// Where a row's inputs lie: x's row and, with the (single-rank) residual add, r's and r_out's
// (an invalid row, past the end, keeps the tensors' bases, never read or written), each
// worked out where load_row asks for it.
template <class STEPS, class TX>
struct RowPlaces {
  using TI = typename STEPS::template Input<TX>;  // x's storage
  const ForwardArgs& a;
  std::int64_t row;
  bool valid;
  __device__ __forceinline__ const TI* x() const {
    return static_cast<const TI*>(a.x) + (valid ? row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) : 0);
  }
  __device__ __forceinline__ const TX* r() const {
    return valid ? residual_row<TX>(a, row) : static_cast<const TX*>(a.residual);
  }
  __device__ __forceinline__ TX* r_out() const { return valid ? residual_out_row<TX>(a, row) : nullptr; }
};

// The same places worked out at once, so that a kernel can compute them before it waits for
// the previous grid (wait_for_previous_grid). Only for aligned rows: unaligned ones (an
// access an element) held them through their loads and spilled (the residual add's
// 416 x 8 f16 rows: 728 bytes of stack a thread against 240, sm_90, nvcc 13.0).
template <class STEPS, class TX>
struct EarlyRowPlaces {
  using TI = typename STEPS::template Input<TX>;
  static constexpr bool kResidual = STEPS::kResidual && !STEPS::kRanks;
  const TI* x_;
  const TX* r_ = nullptr;
  TX* r_out_ = nullptr;
  __device__ __forceinline__ explicit EarlyRowPlaces(const RowPlaces<STEPS, TX>& at) : x_(at.x()) {
    if constexpr (kResidual) {
      r_ = at.r();
      r_out_ = at.r_out();
    }
  }
  __device__ __forceinline__ const TI* x() const { return x_; }
  __device__ __forceinline__ const TX* r() const { return r_; }
  __device__ __forceinline__ TX* r_out() const { return r_out_; }
  // begin_dependent_grid, the places computed first.
  __device__ __forceinline__ void wait_for_previous_grid() const {
    if constexpr (kResidual)
      begin_dependent_grid_after(x_, r_, r_out_);
    else
      begin_dependent_grid_after(x_);
  }
};

// The prologue of the register kernels: a lane's chunks of the row, x's or, with the residual
// add, r_out's (stored on the way; TX is then r's type, and x's is STEPS::Input). Invalid
// rows (past the end) load zeros and store nothing. `at`: RowPlaces or EarlyRowPlaces.
template <bool ALIGNED, class STEPS, class TX, int VEC, int ITEMS, int STRIDE, class Places>
__device__ __forceinline__ void load_row(const ForwardArgs& a, const Places& at, std::int64_t row, bool valid,
                                         std::int64_t first, std::int64_t end, Vec<TX, VEC> (&v)[ITEMS]) {
  using TI = typename STEPS::template Input<TX>;
  if constexpr (!STEPS::kResidual) {
    load_items<ALIGNED, TX, VEC, ITEMS, STRIDE>(at.x(), first, end, a.cols, valid, v);
  } else if constexpr (STEPS::kRanks) {
    add_ranks_residual<ALIGNED, TI, TX, VEC, ITEMS, STRIDE>(a, row, valid, first, end, v);
  } else {
    Vec<TI, VEC> xv[ITEMS];
    Vec<TX, VEC> rv[ITEMS];
    load_items<ALIGNED, TI, VEC, ITEMS, STRIDE>(at.x(), first, end, a.cols, valid, xv);
    load_items<ALIGNED, TX, VEC, ITEMS, STRIDE>(at.r(), first, end, a.cols, valid, rv);
    TX* r_out = at.r_out();
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
      v[i] = add_residual<ALIGNED, TI, TX, VEC>(xv[i], rv[i], r_out, idx, a.cols, valid && idx < end);
    }
  }
}
template <bool ALIGNED, class STEPS, class TX, int VEC, int ITEMS, int STRIDE>
__device__ __forceinline__ void load_row(const ForwardArgs& a, std::int64_t row, bool valid, std::int64_t first,
                                         std::int64_t end, Vec<TX, VEC> (&v)[ITEMS]) {
  load_row<ALIGNED, STEPS, TX, VEC, ITEMS, STRIDE>(a, RowPlaces<STEPS, TX>{a, row, valid}, row, valid, first, end, v);
}

// Dynamic-scale quantisation needs the max |y| of each group before any of it is stored:
// the kernels offer their chunks' maxima to a GroupMax table, pass a barrier, and quantise
// (the register rows' per-row scales take a RowMax reduction instead). The table's shared
// memory: three tables of `entries` cells.
inline std::size_t group_max_bytes(std::int64_t entries) { return 3 * static_cast<std::size_t>(entries) * 4; }

// ---------------------------------------------------------------------------------------
// warp_rows and block_row: the row lives in registers between the reduction and the
// scaling, so x is read from memory once. TPR lanes share a row, each holding ITEMS
// vectors of VEC elements.
// ---------------------------------------------------------------------------------------
// resident_threads / BLOCK blocks per SM: at most 64 registers a thread, so that half of an
// SM's 2048 threads are resident (at 80 registers only 768 were, and a 4096-row batch of
// 1024-element bf16 rows took 1.3 waves of the grid instead of one).
// The residual add holds its chunks beside x's, so its instantiations may take up to 128
// registers a thread (512 threads an SM) rather than spill: at 64, its block rows spilled
// 56-144 bytes a thread. The quantised store alone keeps the register rows' 64: given 128,
// its block rows took 90-110 (sm_90, nvcc 13.0), so that a 512-thread block of a
// 16384-element bf16 row ran alone on its SM, and the static fp8 store moved 39-64 % of the
// copy on the H200 (66e32ce); at 64 most configurations keep 8 bytes a thread on the stack
// (88 for the 96-, 160-, 192-, 320- and 960-thread blocks). Its cluster rows (8 vectors a
// lane) keep 128: at 64 they spilled 192 bytes.
template <class STEPS, bool CLUSTER>
constexpr int forward_resident_threads() {
  return STEPS::kResidual || (STEPS::kQuant && CLUSTER) ? resident_threads(4) : resident_threads(2);
}

// LANE_GROUPS: per-group scales whose groups lie in one warp's lanes (lane_groups), an
// instantiation of its own: as a run-time branch of the store, their shuffles cost the
// static and per-row scales 2-11 % on the H200 (bf16 block rows, b244bba), whose store is
// bound by instruction issue and already spills at 64 registers.
// SPLIT > 1 (sm_90, a launch choice: launch_register_rows): a block row of TPR lanes
// launched as a cluster of SPLIT blocks of BLOCK = TPR / SPLIT threads, lane l of the row
// thread l % BLOCK of block l / BLOCK, holding the chunks it holds in one block, and the
// row's sum reduced in the block's order (SplitRowSum): the same bits as the block row. For
// rows fewer than the SMs (decode), whose time otherwise goes to the bytes one SM moves.
template <bool ALIGNED, class STEPS, class TX, class TW, class TY, int VEC, int TPR, int ITEMS, int BLOCK,
          bool LANE_GROUPS = false, int SPLIT = 1>
__global__ void __launch_bounds__(BLOCK, forward_resident_threads<STEPS, false>() / BLOCK)
    RegisterRowsImpl(const ForwardArgs a) {
  static_assert(!LANE_GROUPS || (STEPS::kQuant && TPR % 32 == 0), "lane groups are a warp's lanes of a row");
  static_assert(SPLIT == 1 || (!STEPS::kQuant && TPR == SPLIT * BLOCK), "a split row is the plain or added row's");
  constexpr bool kSplit = SPLIT > 1;
#if !RMSNORM_CLUSTER_BODY
  if constexpr (kSplit) return;  // never launched before sm_90
#endif
  // Aligned rows wait for the previous kernel with their first row's addresses computed
  // (EarlyRowPlaces, below); the quantised store reads its static scale before the rows.
  constexpr bool kEarlyPlaces = ALIGNED && !STEPS::kQuant;
  if constexpr (!kEarlyPlaces) begin_dependent_grid();
  using TC = typename STEPS::template Input<TX>;  // the Llama cast's type: x's
  constexpr int kRowsPerBlock = kSplit ? 1 : BLOCK / TPR;
  constexpr bool kPreload = kForwardPreloadsWeight<TW, VEC, ITEMS>;
  // The block the row's reductions are written for: the launch's, or the one a split row is
  // taken from (the quantised store's RowMax is never split).
  constexpr int kRowBlock = kSplit ? TPR : BLOCK;
  using Sum = std::conditional_t<kSplit, SplitRowSum<BLOCK, SPLIT>, RowSum<TPR, kRowBlock>>;
  __shared__ typename Sum::TempStorage temp;
  extern __shared__ unsigned group_cells[];  // dynamic scales only: GroupMax

  // Split: a row a cluster, the clusters looping over the rows.
  const ClusterPlace place = kSplit ? cluster_place() : ClusterPlace{0, 1, blockIdx.x, gridDim.x};
  const int lane = kSplit ? static_cast<int>(place.rank) * BLOCK + threadIdx.x : threadIdx.x % TPR;
  const int slot = kSplit ? 0 : threadIdx.x / TPR;
  if constexpr (kSplit) Sum::init(temp);
  unsigned step = 0;
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);
  Vec<TW, VEC> wv[ITEMS];
  bool weight_pending = true;
  QuantConstants qc;
  if constexpr (STEPS::kQuant) qc = QuantConstants(a);
  const bool dynamic = STEPS::kQuant && a.dynamic;
  // Per-group scales gather their maxima in a GroupMax table; per-row ones reduce like the
  // sum (RowMax), with no shared-memory atomics and, for rows within a warp, no barrier.
  // Lane groups (LANE_GROUPS) take theirs by shuffles in the store: a lane's chunk i and its
  // group's other chunks are chunk i of its neighbours, so no table, atomics or barrier.
  const bool table_groups = !LANE_GROUPS && dynamic && a.groups > 1;
  GroupMax group_max(group_cells, table_groups ? kRowsPerBlock * a.groups : 0, BLOCK);
  if (table_groups) __syncthreads();
  // A lane's group is the same lanes for every chunk it holds, and they reach the store
  // together: the chunk is in the row for all of them or for none (groups are whole chunks,
  // aligned to the row's start).
  [[maybe_unused]] LaneGroup lane_group;
  if constexpr (LANE_GROUPS) lane_group = LaneGroup(a.group_size, VEC);
  __shared__ unsigned row_max_cells[STEPS::kQuant && TPR > 32 ? 2 * BLOCK / 32 : 1];
  RowMax<TPR, kRowBlock> row_max;
  if constexpr (TPR > 32) row_max.cells = row_max_cells;

  // The loop bound is uniform across the block, so every lane reaches every reduction
  // (rows past the end compute on zeros and store nothing).
  for (std::int64_t first = place.cluster * kRowsPerBlock; first < a.total_rows;
       first += place.clusters * kRowsPerBlock, ++step) {
    const std::int64_t row = first + slot;
    const bool valid = row < a.total_rows;
    Vec<TX, VEC> v[ITEMS];
    // The weight with the first row, issued just before its loads, so that both are in
    // flight together. Issued after them, the compiler placed it behind the row's sum of
    // squares, which waits for x: x's latency and then the weight's (L2) on a single row.
    const auto load_weight_once = [&] {
      if (!weight_pending) return;
      load_weight<ALIGNED, TW, VEC, ITEMS, TPR, kPreload>(w, lane, vectors, a.cols, wv);
      weight_pending = false;
    };
    if constexpr (kEarlyPlaces) {  // the first row's addresses computed before the wait
      const EarlyRowPlaces<STEPS, TX> at(RowPlaces<STEPS, TX>{a, row, valid});
      if (weight_pending) at.wait_for_previous_grid();
      load_weight_once();
      load_row<ALIGNED, STEPS, TX, VEC, ITEMS, TPR>(a, at, row, valid, lane, vectors, v);
    } else {
      load_weight_once();
      load_row<ALIGNED, STEPS, TX, VEC, ITEMS, TPR>(a, row, valid, lane, vectors, v);
    }
    // Given sums replace the reduction's result: the row is in registers for y anyway, and
    // the reduction left in place keeps the kernel's code and register allocation.
    const float ss = Sum::sum(temp, sum_squares<TX, VEC, ITEMS>(v), step);
    const float rstd = rstd_from_sum(a.row_sums ? (valid ? a.row_sums[row] : 0.f) : ss, a.inv_cols, a.eps);
    if (valid && a.rstd && lane == 0) a.rstd[row] = rstd;
    TY* y = static_cast<TY*>(a.y) + (valid ? row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride) : 0);
    if constexpr (STEPS::kQuant) {
      unsigned* table = group_max.table() + slot * a.groups;
      float row_amax = 0.0f;
      if (!LANE_GROUPS && dynamic && a.groups == 1) {  // per-row scales: the row's max |y|, reduced as its sum is
        float m = 0.0f;
        if (valid)
          for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, TPR, kPreload>(
              w, wv, lane, vectors, v, rstd, a,
              [&](std::int64_t, const float(&out)[VEC]) { m = fmaxf(m, chunk_amax(out)); });
        row_amax = row_max.max(m);  // every lane of the row, valid or not
      } else if (table_groups) {    // every lane passes the barrier, valid row or not
        if (valid)
          for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, TPR, kPreload>(
              w, wv, lane, vectors, v, rstd, a,
              [&](std::int64_t idx, const float(&out)[VEC]) { offer_chunk<VEC, (TPR >= 32)>(table, idx, out, a); });
        __syncthreads();
        group_max.clear_ahead(BLOCK);
      }
      const auto amax_of = [&](std::int64_t g) { return a.groups == 1 ? row_amax : __uint_as_float(table[g]); };
      const Divisor row_d = row_divisor(amax_of, qc, a);
      if (valid)
        for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, TPR, kPreload>(
            w, wv, lane, vectors, v, rstd, a, [&](std::int64_t idx, const float(&out)[VEC]) {
              if constexpr (LANE_GROUPS) {
                const float m = lane_group.max(chunk_amax(out));
                const auto group_amax = [m](std::int64_t) { return m; };
                store_chunk<ALIGNED, TY, VEC>(
                    y, idx, a.cols, quantise<VEC>(out, chunk_divisor<VEC>(row, idx, row_d, group_amax, qc, a), a.fp8));
              } else {
                store_chunk<ALIGNED, TY, VEC>(
                    y, idx, a.cols, quantise<VEC>(out, chunk_divisor<VEC>(row, idx, row_d, amax_of, qc, a), a.fp8));
              }
            });
      if (table_groups) group_max.next();
    } else {
      if (!valid) continue;
      for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, TPR, kPreload>(
          w, wv, lane, vectors, v, rstd, a, [&](std::int64_t idx, const float(&out)[VEC]) {
            store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols, pack<TY, VEC>(out));
          });
    }
  }
  if constexpr (kSplit) Sum::finish();
}

// ---------------------------------------------------------------------------------------
// cluster_row (sm_90): a row too long for one block's registers is split over the blocks
// of a thread-block cluster, each holding its slice in registers (and, beyond the registers
// of the largest cluster, in pieces in shared memory: Plan::pieces); the row's sum of
// squares is combined through distributed shared memory. x is still read once. The dynamic
// scales' group maxima too: a group that spans slices takes the max of every block's cell
// for it.
// ---------------------------------------------------------------------------------------
// Whether a cluster row stages the block's next row in shared memory: the plain store of
// aligned rows (x alone read, in 16-byte chunks). The residual add has r_out's store to
// overlap its wait already; the quantised store's dynamic shared memory holds GroupMax.
template <bool ALIGNED, class STEPS, class TX>
inline constexpr bool kClusterStages =
    ALIGNED && !STEPS::kResidual && !STEPS::kQuant && std::is_same_v<typename STEPS::template Input<TX>, TX>;
// Only clusters of kStageFromBlocks blocks or more stage: on the H200 (bf16, 2026-12-04,
// tree d5bc38c, bench/results/...-d5bc38c-explore-staged-cluster-rows.txt) staging moved
// the plain store from 80.5 / 77.9 % of the copy to 82.8 / 80.5 % on rows of 131072 /
// 262144 columns (clusters of 4 / 8 blocks, whose wait is long), and from 92.3 to 86.3 % on
// 65536 (2 blocks), where the shared-memory round trip lengthens a short critical path.
inline constexpr int kStageFromBlocks = 4;
// The dynamic shared memory of a cluster row's slice: its pieces past the first (a row of
// more than one piece a block, cluster_shape in kernel_configs.h), else the staged next
// row (clusters of kStageFromBlocks blocks or more), else none.
template <bool ALIGNED, class STEPS, class TX, int VEC, int ITEMS, int BLOCK>
constexpr std::size_t cluster_slice_bytes(int cluster_size, int pieces) {
  constexpr std::size_t kPiece = sizeof(Vec<TX, VEC>) * ITEMS * BLOCK;
  if (pieces > 1) return STEPS::kQuant ? 0 : kPiece * static_cast<std::size_t>(pieces - 1);
  return kClusterStages<ALIGNED, STEPS, TX> && cluster_size >= kStageFromBlocks ? kPiece : 0;
}

// The shared memory of a block's slice of the weight, where the cluster rows may keep it
// (ForwardArgs::weight_at): a weight read per row (not preloaded), a slice of one piece, not
// the quantised store's (its dynamic shared memory holds GroupMax). 0 where it may not.
template <class STEPS, class TW, int VEC, int ITEMS, int BLOCK>
constexpr std::size_t cluster_weight_bytes(int pieces) {
  return !kForwardPreloadsWeight<TW, VEC, ITEMS> && !STEPS::kQuant && pieces == 1 ? sizeof(Vec<TW, VEC>) * ITEMS * BLOCK
                                                                                  : 0;
}

// Plan::shared_slices: the blocks an SM holds of a cluster row whose slice (ITEMS x BLOCK
// chunks of 16 bytes) lies in shared memory, beside the row sums' mailbox, within the
// threads an SM runs. Its registers are capped to match (three 512 x 8 blocks: 42 a thread).
template <int ITEMS, int BLOCK>
constexpr int shared_slice_blocks() {
  constexpr int kSharedPerSm = 227 * 1024, kMailbox = 4 * 1024;
  constexpr int kByShared = kSharedPerSm / (ITEMS * BLOCK * 16 + kMailbox);
  constexpr int kByThreads = 2048 / BLOCK;
  return kByShared < kByThreads ? kByShared : kByThreads;
}

// The plain store of aligned rows with each block's slice in shared memory
// (Plan::shared_slices): each thread copies its own chunks of the row (cp.async, 16 bytes a
// chunk) into its own slots, chunk i at slot[i * BLOCK], and reads back only those, so no
// block barrier is passed; with few registers a thread, shared memory decides the blocks an
// SM holds, and more of the rows are in flight than registers hold. The grid is a cluster a
// row (the launcher's choice): blocks of later rows load while earlier ones exchange their
// sums. The first row's copies are issued before anything waits (the mailboxes' set-up
// arrives at the cluster barrier, and only the first send waits there), since with a
// cluster a row every block otherwise passes that barrier with nothing in flight. The row
// is summed chunk by chunk in the registers' order, chunks past the slice as zeros: the
// same bits as the slice in registers. The weight is read per chunk as the store needs it.
template <class STEPS, class TX, class TW, class TY, int VEC, int ITEMS, int BLOCK, class TempStorage>
__device__ __forceinline__ void cluster_rows_in_shared(const ForwardArgs& a, TempStorage& temp, Vec<TX, VEC>* slice) {
  using Sum = ClusterSum<BLOCK, 1>;
  const ClusterPlace place = cluster_place();
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const std::int64_t per_block = (vectors + place.size - 1) / place.size;
  const std::int64_t begin = place.rank * per_block;
  const std::int64_t end = begin + per_block < vectors ? begin + per_block : vectors;
  const std::int64_t first = begin + threadIdx.x;  // this thread's chunk i: first + i * BLOCK
  const std::int64_t in_slice = first < end ? (end - first + BLOCK - 1) / BLOCK : 0;
  const int held = in_slice < ITEMS ? static_cast<int>(in_slice) : ITEMS;
  Vec<TX, VEC>* slot = slice + threadIdx.x;
  const auto copy_row = [&](std::int64_t row) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) + first * VEC;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (i < held) __pipeline_memcpy_async(slot + i * BLOCK, x + i * BLOCK * VEC, sizeof(Vec<TX, VEC>));
    __pipeline_commit();
  };
  if (place.cluster < a.total_rows) copy_row(place.cluster);
  Sum::arrive(temp);
  const TW* w = static_cast<const TW*>(a.weight);
  const Vec<TW, VEC> no_weight[1] = {};
  unsigned step = 0;
  for (std::int64_t row = place.cluster; row < a.total_rows; row += place.clusters, ++step) {
    __pipeline_wait_prior(0);
    float ss[1] = {0.f};
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) add_squares(ss[0], i < held ? slot[i * BLOCK] : Vec<TX, VEC>{});
    Sum::template send<true>(temp, ss, step);
    Sum::receive(temp, ss, step);
    if (a.row_sums) ss[0] = a.row_sums[row];  // given sums replace the result
    const float rstd = rstd_from_sum(ss[0], a.inv_cols, a.eps);
    if (a.rstd && place.rank == 0 && threadIdx.x == 0) a.rstd[row] = rstd;
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (i >= held) break;
      const Vec<TX, VEC> v[1] = {slot[i * BLOCK]};
      for_each_value<true, TX, TX, TW, VEC, 1, BLOCK, false>(w, no_weight, first + std::int64_t{i} * BLOCK, end, v,
                                                             rstd, a, [&](std::int64_t idx, const float(&out)[VEC]) {
                                                               store_chunk<true, TY, VEC>(y, idx, a.cols,
                                                                                          pack<TY, VEC>(out));
                                                             });
    }
    // A looping grid (Plan::cluster_grid): the next row into the slots just read.
    if (row + place.clusters < a.total_rows) copy_row(row + place.clusters);
  }
  // No barrier at the end: no block reads another's shared memory (the sums are pushed),
  // and a block leaves only after every store into its own mailbox has landed.
}

template <bool ALIGNED, class STEPS, class TX, class TW, class TY, int VEC, int ITEMS, int BLOCK, bool SHARED = false>
__global__ void __launch_bounds__(BLOCK, SHARED ? shared_slice_blocks<ITEMS, BLOCK>()
                                                : forward_resident_threads<STEPS, true>() / BLOCK)
    ClusterRowImpl(const ForwardArgs a) {
#if RMSNORM_CLUSTER_BODY
  begin_dependent_grid();
  using TC = typename STEPS::template Input<TX>;  // the Llama cast's type: x's
  constexpr bool kPreload = kForwardPreloadsWeight<TW, VEC, ITEMS>;
  using Sum = ClusterSum<BLOCK, 1>;
  __shared__ typename Sum::TempStorage temp;
  // Dynamic shared memory: GroupMax's cells (dynamic scales), the slice's pieces past the
  // first, or the staged row (kStage): cluster_slice_bytes; with SHARED the whole slice.
  extern __shared__ uint4 cluster_dynamic[];
  static_assert(!SHARED || kClusterStages<ALIGNED, STEPS, TX>, "shared slices: the plain store of aligned rows");
  if constexpr (SHARED) {
    cluster_rows_in_shared<STEPS, TX, TW, TY, VEC, ITEMS, BLOCK>(a, temp,
                                                                 reinterpret_cast<Vec<TX, VEC>*>(cluster_dynamic));
    return;
  }
  unsigned* group_cells = reinterpret_cast<unsigned*>(cluster_dynamic);
  const ClusterPlace place = cluster_place();
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const std::int64_t per_block = (vectors + place.size - 1) / place.size;
  const std::int64_t begin = place.rank * per_block;
  const std::int64_t end = begin + per_block < vectors ? begin + per_block : vectors;
  const TW* w = static_cast<const TW*>(a.weight);
  Vec<TW, VEC> wv[ITEMS];
  load_weight<ALIGNED, TW, VEC, ITEMS, BLOCK, kPreload>(w, begin + threadIdx.x, end, a.cols, wv);
  // A weight not preloaded is read again for every row, after the row's sum has crossed the
  // cluster: from L2, since the sum's cluster-scope acquire leaves nothing of it in L1. Where
  // the launcher found room (a.weight_at >= 0: cluster_weight_bytes, no resident cluster
  // lost), the block's slice of it is copied once into shared memory and read from there:
  // chunk idx of the row at slot idx - begin, each thread writing and reading only its own
  // slots (no barrier), whole zero-padded chunks at any alignment. w then points at the slot
  // of chunk 0, so every read of chunk idx goes where it went (generic loads).
  if (!kPreload && !STEPS::kQuant && a.weight_at >= 0 && a.pieces == 1 && w) {
    Vec<TW, VEC>* slice =
        reinterpret_cast<Vec<TW, VEC>*>(reinterpret_cast<unsigned char*>(cluster_dynamic) + a.weight_at);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const std::int64_t idx = begin + threadIdx.x + std::int64_t{i} * BLOCK;
      slice[threadIdx.x + i * BLOCK] = load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, idx < end);
    }
    w = reinterpret_cast<const TW*>(slice - begin);
  }
  Sum::init(temp);
  QuantConstants qc;
  if constexpr (STEPS::kQuant) qc = QuantConstants(a);
  const bool dynamic = STEPS::kQuant && a.dynamic;
  GroupMax group_max(group_cells, dynamic ? a.groups : 0, BLOCK);
  if (dynamic) __syncthreads();

  // The plain store of aligned rows (kStage) keeps the block's next row in flight while
  // this one's sum crosses the cluster and its y is stored, where the block would otherwise
  // have no load outstanding: each thread copies its own chunks of the next row into its own
  // shared-memory slots (cp.async, 16 bytes a chunk) and reads back only those, after
  // waiting for its own copies, so no barrier is passed. The copies are issued after
  // Sum::send, which needs this row's chunks in registers: the slots have been read before
  // they are written again. Chunks past the slice read as zero, as load_row's do, so the
  // row is summed the same way staged or not. Dynamic shared memory: ITEMS x BLOCK chunks
  // (cluster_slice_bytes), on clusters of kStageFromBlocks blocks or more.
  constexpr bool kStage = kClusterStages<ALIGNED, STEPS, TX>;
  static_assert(sizeof(Vec<TX, VEC>) == 16, "cp.async copies, and pieces hold, 16-byte chunks");
  // Uniform over the grid. Pieces take the shared memory staging would.
  const int pieces = STEPS::kQuant ? 1 : a.pieces;
  const bool staging = kStage && pieces == 1 && place.size >= static_cast<unsigned>(kStageFromBlocks);
  Vec<TX, VEC>* stage = reinterpret_cast<Vec<TX, VEC>*>(cluster_dynamic) + threadIdx.x;
  const std::int64_t first = begin + threadIdx.x;  // this thread's chunk i: first + i * BLOCK
  const std::int64_t in_slice = first < end ? (end - first + BLOCK - 1) / BLOCK : 0;  // chunks below end
  const int staged = in_slice < ITEMS ? static_cast<int>(in_slice) : ITEMS;
  const auto stage_row = [&](std::int64_t row) {
    if (row >= a.total_rows) return;
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) + first * VEC;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i)
      if (i < staged) __pipeline_memcpy_async(stage + i * BLOCK, x + i * BLOCK * VEC, sizeof(Vec<TX, VEC>));
    __pipeline_commit();
  };
  if (staging) stage_row(place.cluster);

  // A slice of more than one piece (pieces > 1, never with the quantised store): piece 0 is
  // held in registers like a slice of one, pieces 1.. in shared memory, chunk i of piece p
  // of this thread in slot ((p - 1) * ITEMS + i) * BLOCK of `stage` (each thread writes and
  // reads only its own slots, so no barrier is passed). The row's sum adds the pieces' sums
  // in the order 1, 2, .., 0, each summed chunk by chunk as sum_squares does, whichever way
  // the pieces were loaded: the plain store of aligned rows copies pieces 1.. straight to
  // shared memory (cp.async), all in flight together with piece 0's loads; the others
  // (the residual add, whose pieces are r_out, and unaligned rows) load a piece at a time
  // through registers.
  constexpr std::int64_t kPiece = std::int64_t{ITEMS} * BLOCK;
  const auto held = [&](int p, int i) -> Vec<TX, VEC>& { return stage[((p - 1) * ITEMS + i) * BLOCK]; };
  const auto copy_pieces = [&](std::int64_t row, Vec<TX, VEC>(&v)[ITEMS]) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    for (int p = 1; p < pieces; ++p)
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const std::int64_t idx = first + p * kPiece + std::int64_t{i} * BLOCK;
        if (idx < end) __pipeline_memcpy_async(&held(p, i), x + idx * VEC, sizeof(Vec<TX, VEC>));
      }
    __pipeline_commit();
    load_row<ALIGNED, STEPS, TX, VEC, ITEMS, BLOCK>(a, row, true, first, end, v);
    __pipeline_wait_prior(0);
    float ss = 0.f;
    for (int p = 1; p < pieces; ++p) {
      float part = 0.f;
#pragma unroll
      for (int i = 0; i < ITEMS; ++i)
        add_squares(part, first + p * kPiece + std::int64_t{i} * BLOCK < end ? held(p, i) : Vec<TX, VEC>{});
      ss += part;
    }
    return ss + sum_squares<TX, VEC, ITEMS>(v);
  };

  unsigned step = 0;
  for (std::int64_t row = place.cluster; row < a.total_rows; row += place.clusters, ++step) {
    Vec<TX, VEC> v[ITEMS];
    float ss[1] = {0.f};
    if (staging) {
      __pipeline_wait_prior(0);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) v[i] = i < staged ? stage[i * BLOCK] : Vec<TX, VEC>{};
      ss[0] = sum_squares<TX, VEC, ITEMS>(v);
    } else if (kStage && pieces > 1) {
      ss[0] = copy_pieces(row, v);
    } else {
      // Pieces 1.., then 0, which stays in registers (a slice of one piece: 0 alone, and
      // 0 + its sum is its sum).
      for (int q = 1; q <= pieces; ++q) {
        const int p = q < pieces ? q : 0;
        load_row<ALIGNED, STEPS, TX, VEC, ITEMS, BLOCK>(a, row, true, first + p * kPiece, end, v);
        ss[0] += sum_squares<TX, VEC, ITEMS>(v);
        if (p > 0)
#pragma unroll
          for (int i = 0; i < ITEMS; ++i) held(p, i) = v[i];
      }
    }
    Sum::send(temp, ss, step);
    if (staging) stage_row(row + place.clusters);
    Sum::receive(temp, ss, step);
    if (a.row_sums) ss[0] = a.row_sums[row];  // given sums replace the result, as above
    const float rstd = rstd_from_sum(ss[0], a.inv_cols, a.eps);
    if (a.rstd && place.rank == 0 && threadIdx.x == 0) a.rstd[row] = rstd;
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    if constexpr (STEPS::kQuant) {
      unsigned* table = group_max.table();
      if (dynamic) {
        for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, BLOCK, kPreload>(
            w, wv, begin + threadIdx.x, end, v, rstd, a,
            [&](std::int64_t idx, const float(&out)[VEC]) { offer_chunk<VEC, true>(table, idx, out, a); });
        cluster_barrier();
        group_max.clear_ahead(BLOCK);
      }
      // The blocks whose slices hold some of group g: its cell in each, in this block's
      // shared memory or through distributed shared memory. A row's one group (per-row
      // scales) spans every block: its max is read once a row, not once a chunk.
      const auto group_amax = [&](std::int64_t g) {
        const std::int64_t c0 = a.groups == 1 ? 0 : g * a.group_size / VEC;
        const std::int64_t c1 = a.groups == 1 ? vectors - 1 : ((g + 1) * a.group_size - 1) / VEC;
        const unsigned r0 = static_cast<unsigned>(c0 / per_block), r1 = static_cast<unsigned>(c1 / per_block);
        unsigned m = 0u;
        for (unsigned r = r0; r <= r1 && r < place.size; ++r)
          m = max(m, r == place.rank ? table[g] : *cluster_cell(table + g, r));
        return __uint_as_float(m);
      };
      const Divisor row_d = row_divisor(group_amax, qc, a);
      for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, BLOCK, kPreload>(
          w, wv, begin + threadIdx.x, end, v, rstd, a, [&](std::int64_t idx, const float(&out)[VEC]) {
            store_chunk<ALIGNED, TY, VEC>(
                y, idx, a.cols, quantise<VEC>(out, chunk_divisor<VEC>(row, idx, row_d, group_amax, qc, a), a.fp8));
          });
      if (dynamic) group_max.next();
    } else {
      const auto store = [&](std::int64_t idx, const float(&out)[VEC]) {
        store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols, pack<TY, VEC>(out));
      };
      for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, BLOCK, kPreload>(w, wv, first, end, v, rstd, a, store);
      // Pieces 1.. from shared memory, their weight read as it is needed (a preloaded
      // weight holds piece 0's).
      for (int p = 1; p < pieces; ++p) {
#pragma unroll
        for (int i = 0; i < ITEMS; ++i) v[i] = held(p, i);
        for_each_value<ALIGNED, TX, TC, TW, VEC, ITEMS, BLOCK, false>(w, wv, first + p * kPiece, end, v, rstd, a,
                                                                      store);
      }
    }
  }
  Sum::finish();
#endif
}

// ---------------------------------------------------------------------------------------
// long_row: a row per block, any length, any alignment (chunks as load_chunk reads them).
// The row is streamed twice: once for the sum of squares, once to scale it (the second
// read mostly hits L2, which holds the rows in flight). With the residual add the first
// pass stores r_out and the second reads it back; dynamic scales take a pass between the
// two for the group maxima, except lane groups (LANE_GROUPS, as in the register rows: a
// group of 1-32 chunks, a power of two, aligned rows), whose chunks one pass holds in
// neighbouring lanes of a warp: their max is taken by shuffles in the store's pass.
// ---------------------------------------------------------------------------------------
template <bool ALIGNED, class STEPS, class TX, class TW, class TY, int VEC, int BLOCK, bool LANE_GROUPS = false>
__global__ void __launch_bounds__(BLOCK) LongRowImpl(const ForwardArgs a) {
  static_assert(!LANE_GROUPS || (STEPS::kQuant && BLOCK % 32 == 0), "lane groups are a warp's chunks of a pass");
  begin_dependent_grid();
  using Sum = RowSum<BLOCK, BLOCK>;
  __shared__ typename Sum::TempStorage temp;
  extern __shared__ unsigned group_cells[];  // dynamic scales only: GroupMax
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);
  QuantConstants qc;
  if constexpr (STEPS::kQuant) qc = QuantConstants(a);
  const bool table_groups = !LANE_GROUPS && STEPS::kQuant && a.dynamic;
  GroupMax group_max(group_cells, table_groups ? a.groups : 0, BLOCK);
  if (table_groups) __syncthreads();
  // A pass gives lane l of warp k chunk base + 32 k + l (base a multiple of BLOCK): a group's
  // chunks are neighbouring lanes (groups are whole chunks from the row's start), the same
  // lanes in every pass.
  [[maybe_unused]] LaneGroup lane_group;
  if constexpr (LANE_GROUPS) lane_group = LaneGroup(a.group_size, VEC);

  using TI = typename STEPS::template Input<TX>;  // x's storage, and the Llama cast's type
  for (std::int64_t row = blockIdx.x; row < a.total_rows; row += gridDim.x) {
    const TI* x = static_cast<const TI*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    TY* y = static_cast<TY*>(a.y) + row_offset(row, a.rows, a.y_batch_stride, a.y_row_stride);
    const TX* r = nullptr;
    TX* r_out = nullptr;
    if constexpr (STEPS::kResidual) {
      r = residual_row<TX>(a, row);
      r_out = residual_out_row<TX>(a, row);
    }
    float ss = 0.f;
    // Given sums skip the first pass (the apply step has no residual add to store in it).
    const std::int64_t summed = a.row_sums ? 0 : vectors;
#pragma unroll 4
    for (std::int64_t idx = threadIdx.x; idx < summed; idx += BLOCK) {
      Vec<TX, VEC> xv;
      if constexpr (STEPS::kResidual) {
        if constexpr (STEPS::kRanks) {
          Vec<TX, VEC> sum[1];
          add_ranks_residual<ALIGNED, TI, TX, VEC, 1, BLOCK>(a, row, true, idx, vectors, sum);
          xv = sum[0];
        } else {
          xv = add_residual<ALIGNED, TI, TX, VEC>(load_chunk<ALIGNED, TI, VEC>(x, idx, a.cols, true),
                                                  load_chunk<ALIGNED, TX, VEC>(r, idx, a.cols, true), r_out, idx,
                                                  a.cols, true);
        }
      } else
        xv = load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true);
      float f[VEC];
      unpack(xv, f);
#pragma unroll
      for (int k = 0; k < VEC; ++k) ss += f[k] * f[k];
    }
    // Given sums replace the block's reduction in every thread (a.row_sums is the grid's).
    const float rstd = rstd_from_sum(a.row_sums ? a.row_sums[row] : Sum::sum(temp, ss), a.inv_cols, a.eps);
    if (a.rstd && threadIdx.x == 0) a.rstd[row] = rstd;
    // The row the norm read: x, or r_out as this lane stored it in the first pass.
    const TX* src = nullptr;
    if constexpr (STEPS::kResidual)
      src = r_out;
    else
      src = x;
    with_mode(a.llama, w != nullptr, [&](auto llama, auto has_w) {
      constexpr bool kLlama = decltype(llama)::value, kHasW = decltype(has_w)::value;
      const auto values = [&](std::int64_t idx, float(&out)[VEC]) {
        float xf[VEC], wf[VEC];
        unpack(load_chunk<ALIGNED, TX, VEC>(src, idx, a.cols, true), xf);
        if constexpr (kHasW) unpack(load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, true), wf);
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          out[k] = normalise<TI, TW, kLlama, kHasW>(xf[k], rstd, kHasW ? wf[k] : 1.f, a.weight_offset);
      };
      if constexpr (LANE_GROUPS) {
        // Every lane of a warp makes the same passes (the bound rounded up to whole warps),
        // so that each shuffle has the group's lanes; those past the row's end hold whole
        // groups of their own and store nothing.
        const std::int64_t passes_end = (vectors + 31) / 32 * 32;
        const Divisor none;
#pragma unroll 4
        for (std::int64_t idx = threadIdx.x; idx < passes_end; idx += BLOCK) {
          const bool in_row = idx < vectors;
          float out[VEC] = {};
          if (in_row) values(idx, out);
          const float m = lane_group.max(chunk_amax(out));
          const auto group_amax = [m](std::int64_t) { return m; };
          if (in_row)
            store_chunk<ALIGNED, TY, VEC>(
                y, idx, a.cols, quantise<VEC>(out, chunk_divisor<VEC>(row, idx, none, group_amax, qc, a), a.fp8));
        }
      } else if constexpr (STEPS::kQuant) {
        const bool dynamic = a.dynamic;
        unsigned* table = group_max.table();
        if (dynamic) {
          for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
            float out[VEC];
            values(idx, out);
            offer_chunk<VEC, true>(table, idx, out, a);
          }
          __syncthreads();
          group_max.clear_ahead(BLOCK);
        }
        const auto amax_of = [&](std::int64_t g) { return __uint_as_float(table[g]); };
        const Divisor row_d = row_divisor(amax_of, qc, a);
#pragma unroll 4
        for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
          float out[VEC];
          values(idx, out);
          store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols,
                                        quantise<VEC>(out, chunk_divisor<VEC>(row, idx, row_d, amax_of, qc, a), a.fp8));
        }
        if (dynamic) group_max.next();
      } else {
#pragma unroll 4
        for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
          float out[VEC];
          values(idx, out);
          store_chunk<ALIGNED, TY, VEC>(y, idx, a.cols, pack<TY, VEC>(out));
        }
      }
    });
  }
}

}  // namespace rmsnorm::detail::cuda
