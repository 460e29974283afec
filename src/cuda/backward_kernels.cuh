// The backward kernels, one template per parallel strategy, and the dw finalisation.
//
//   g = dy * (w + offset),  s = sum_j g_j x_j,  dx = rstd * g - rstd^3 * s / cols * x,
//   dw partial += dy * x * rstd   (per lane, for the columns the lane owns)
//
// Memory-bound like the forward: x and dy are read once, dx written once; the dw partial
// sums stay in registers across all the rows a block processes and leave as one row per
// block. A second kernel adds those rows in a fixed order, so dw is deterministic.
#pragma once

#include "cuda/cluster.cuh"
#include "cuda/forward_kernels.cuh"
#include "cuda/row_stage.cuh"

namespace rmsnorm::detail::cuda {

struct BackwardArgs {
  const void* dy;
  const void* x;
  const void* weight;  // nullptr: no weight
  const float* rstd;   // nullptr: recompute
  void* dx;
  float* partial;  // one row of cols floats per block, or nullptr when dw is not wanted
  std::int64_t rows, total_rows, cols;
  std::int64_t dy_batch_stride, dy_row_stride;
  std::int64_t x_batch_stride, x_row_stride;
  std::int64_t dx_batch_stride, dx_row_stride;
  float eps, inv_cols, weight_offset;
  // The residual add's backward (RESIDUAL kernels): dx = dnorm + dr_out, and dr (when set)
  // the same values; dr_out and dr have x's dtype (x being r_out), dy and dx the
  // gradients' (x's too, or 16-bit with an f32 r_out: the kernels' TG).
  const void* dr_out;
  void* dr;
  std::int64_t dr_out_batch_stride, dr_out_row_stride;
  std::int64_t dr_batch_stride, dr_row_stride;
  // The sharded rows' apply step: the rows' sum(g x), taken instead of the kernel's own
  // (inv_cols is then 1/full_cols). The same for the whole grid, so a branch on it is uniform.
  const float* row_dots;
};

// The store of a chunk of dx (`out`: dnorm in fp32). With the residual add's backward the
// gradient arriving at r_out is added first, in fp32, and the sum rounded once, to dx (TG)
// and to dr (TX, r_out's dtype). dx may be dy or dr_out, dr may be dr_out: each chunk is
// read (dy earlier, dr_out here) by the lane that then writes it.
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, int VEC>
__device__ __forceinline__ void store_dx_chunk(TG* dx, std::int64_t row, std::int64_t idx, float (&out)[VEC],
                                               const BackwardArgs& a) {
  if constexpr (RESIDUAL) {
    const TX* dr_out =
        static_cast<const TX*>(a.dr_out) + row_offset(row, a.rows, a.dr_out_batch_stride, a.dr_out_row_stride);
    float df[VEC];
    unpack(load_chunk<ALIGNED, TX, VEC>(dr_out, idx, a.cols, true), df);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] += df[k];
    const Vec<TX, VEC> v = pack<TX, VEC>(out);
    if constexpr (std::is_same<TX, TG>::value)
      store_chunk<ALIGNED, TG, VEC>(dx, idx, a.cols, v);
    else
      store_chunk<ALIGNED, TG, VEC>(dx, idx, a.cols, pack<TG, VEC>(out));
    if (a.dr)
      store_chunk<ALIGNED, TX, VEC>(
          static_cast<TX*>(a.dr) + row_offset(row, a.rows, a.dr_batch_stride, a.dr_row_stride), idx, a.cols, v);
  } else {
    (void)row;
    store_chunk<ALIGNED, TG, VEC>(dx, idx, a.cols, pack<TG, VEC>(out));
  }
}

// Calls f with the weight's presence as a compile-time constant (branch-free inner loops).
template <class F>
__device__ __forceinline__ void with_weight(bool has_w, F&& f) {
  if (has_w)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// g . x over a lane's vectors (g = dy * (w + offset)); `wsrc` gives the lane's weight
// vectors (LaneWeight or SharedLaneWeight in forward_kernels.cuh), when there is a weight.
template <class TX, class TG, int VEC, int ITEMS, int STRIDE, class WSRC>
__device__ __forceinline__ float dot_gx(const WSRC& wsrc, std::int64_t first, std::int64_t end,
                                        const Vec<TX, VEC> (&xv)[ITEMS], const Vec<TG, VEC> (&gv)[ITEMS],
                                        const BackwardArgs& a) {
  float gx = 0.f;
  with_weight(wsrc.w != nullptr, [&](auto has_w) {
    constexpr bool kHasW = decltype(has_w)::value;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
      float wf[VEC], xf[VEC], gf[VEC];
      if constexpr (kHasW) {
        if (WSRC::kZeroPadded || idx < end) {
          unpack(wsrc(i, idx), wf);
        } else {
#pragma unroll
          for (int k = 0; k < VEC; ++k) wf[k] = 0.f;
        }
      }
      unpack(xv[i], xf);
      unpack(gv[i], gf);
#pragma unroll
      for (int k = 0; k < VEC; ++k) gx += (kHasW ? gf[k] * (wf[k] + a.weight_offset) : gf[k]) * xf[k];
    }
  });
  return gx;
}

// dx = rstd * g - coef * x for a lane's vectors, and the lane's dw partial sums.
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, int VEC, int ITEMS, int STRIDE, class WSRC>
__device__ __forceinline__ void store_dx(TG* dx, std::int64_t row, const WSRC& wsrc, std::int64_t first,
                                         std::int64_t end, const Vec<TX, VEC> (&xv)[ITEMS],
                                         const Vec<TG, VEC> (&gv)[ITEMS], float rstd, float coef,
                                         float (&dw_acc)[ITEMS][VEC], const BackwardArgs& a) {
  with_weight(wsrc.w != nullptr, [&](auto has_w) {
    constexpr bool kHasW = decltype(has_w)::value;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
      if (idx >= end) continue;
      float wf[VEC], xf[VEC], gf[VEC], out[VEC];
      if constexpr (kHasW) unpack(wsrc(i, idx), wf);
      unpack(opaque(xv[i]), xf);
      unpack(opaque(gv[i]), gf);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float g = kHasW ? gf[k] * (wf[k] + a.weight_offset) : gf[k];
        out[k] = rstd * g - coef * xf[k];
        if constexpr (kHasW) dw_acc[i][k] += gf[k] * xf[k] * rstd;
      }
      store_dx_chunk<ALIGNED, RESIDUAL, TX, TG, VEC>(dx, row, idx, out, a);
    }
  });
}

// Writes a lane's dw partial sums into its block's partial row (`cols` floats; the last
// chunk of an unaligned row may be partial). Aligned rows (cols a multiple of VEC, itself a
// multiple of 4: plan.cpp's load_width) into a 16-byte aligned workspace write a chunk as
// 16-byte stores: one float a store put each lane's 4 bytes in a sector of its own, eight
// requests a 128-byte line where two do (Nsight Compute's 28.8 of 32 bytes a sector over
// the backward's stores on an H100 was these: 2.1 M sectors of 4 bytes beside dx's whole ones).
template <bool ALIGNED, int VEC, int ITEMS, int STRIDE>
__device__ __forceinline__ void write_partial(float* out, std::int64_t first, std::int64_t end, std::int64_t cols,
                                              const float (&dw_acc)[ITEMS][VEC]) {
  if constexpr (ALIGNED) {
    static_assert(VEC % 4 == 0, "a chunk is whole 16-byte stores of floats");
    if (reinterpret_cast<std::uintptr_t>(out) % 16 == 0) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
        if (idx < end)
#pragma unroll
          for (int k = 0; k < VEC; k += 4)
            *reinterpret_cast<float4*>(out + idx * VEC + k) =
                make_float4(dw_acc[i][k], dw_acc[i][k + 1], dw_acc[i][k + 2], dw_acc[i][k + 3]);
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const std::int64_t idx = first + static_cast<std::int64_t>(i) * STRIDE;
    if (idx < end)
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        if (idx * VEC + k < cols) out[idx * VEC + k] = dw_acc[i][k];
  }
}

// ---------------------------------------------------------------------------------------
// warp_rows and block_row: x and dy of a row in registers (see RegisterRowsImpl).
// ---------------------------------------------------------------------------------------
// Launch bounds as the forward's: 2 vectors a lane within 64 registers (1024 threads an SM
// resident), 4 vectors within 128 (x, dy and the dw sums: 94 registers, no spills).
// TX: x's type (r_out's, for the residual add's backward); TG: dy's and dx's.
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW, int VEC, int TPR, int ITEMS, int BLOCK>
__global__ void __launch_bounds__(BLOCK, resident_threads(ITEMS) / BLOCK) BackwardRowsImpl(const BackwardArgs a) {
  begin_dependent_grid();
  constexpr int kRowsPerBlock = BLOCK / TPR;
  constexpr int kRowCapacity = TPR * ITEMS * VEC;
  using Sum = RowSum<TPR, BLOCK>;
  __shared__ typename Sum::TempStorage temp;

  const int lane = threadIdx.x % TPR;
  const int slot = threadIdx.x / TPR;
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const LaneWeight<ALIGNED, TW, VEC, ITEMS, TPR, kBackwardPreloadsWeight<TW, VEC, BLOCK, ITEMS>> wsrc(
      static_cast<const TW*>(a.weight), lane, vectors, a.cols);
  float dw_acc[ITEMS][VEC] = {};

  for (std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock; first < a.total_rows;
       first += static_cast<std::int64_t>(gridDim.x) * kRowsPerBlock) {
    const std::int64_t row = first + slot;
    const bool valid = row < a.total_rows;
    const TX* x = static_cast<const TX*>(a.x) + (valid ? row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride) : 0);
    const TG* dy =
        static_cast<const TG*>(a.dy) + (valid ? row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride) : 0);
    Vec<TX, VEC> xv[ITEMS];
    Vec<TG, VEC> gv[ITEMS];
    load_items<ALIGNED, TX, VEC, ITEMS, TPR>(x, lane, vectors, a.cols, valid, xv);
    load_items<ALIGNED, TG, VEC, ITEMS, TPR>(dy, lane, vectors, a.cols, valid, gv);
    const float rstd = a.rstd ? (valid ? a.rstd[row] : 0.f)
                              : rstd_from_sum(Sum::sum(temp, sum_squares<TX, VEC, ITEMS>(xv)), a.inv_cols, a.eps);
    const float gx = a.row_dots ? (valid ? a.row_dots[row] : 0.f)
                                : Sum::sum(temp, dot_gx<TX, TG, VEC, ITEMS, TPR>(wsrc, lane, vectors, xv, gv, a));
    if (!valid) continue;
    TG* dx = static_cast<TG*>(a.dx) + row_offset(row, a.rows, a.dx_batch_stride, a.dx_row_stride);
    store_dx<ALIGNED, RESIDUAL, TX, TG, VEC, ITEMS, TPR>(dx, row, wsrc, lane, vectors, xv, gv, rstd,
                                                         rstd * rstd * rstd * gx * a.inv_cols, dw_acc, a);
  }

  if (!a.partial) return;
  float* out = a.partial + static_cast<std::int64_t>(blockIdx.x) * a.cols;
  if constexpr (kRowsPerBlock == 1) {
    write_partial<ALIGNED, VEC, ITEMS, TPR>(out, lane, vectors, a.cols, dw_acc);
  } else {
    // Several row groups in the block: their partial rows are added into one shared row in
    // slot order (a fixed order: dw stays bit-reproducible), then written out whole.
    __shared__ float stage[kRowCapacity];
    for (int r = 0; r < kRowsPerBlock; ++r) {
      if (slot == r)
#pragma unroll
        for (int i = 0; i < ITEMS; ++i)
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            float& cell = stage[(i * TPR + lane) * VEC + k];
            cell = r == 0 ? dw_acc[i][k] : cell + dw_acc[i][k];
          }
      __syncthreads();
    }
    for (int c = threadIdx.x; c < a.cols; c += BLOCK) out[c] = stage[c];
  }
}

// ---------------------------------------------------------------------------------------
// cluster_row (sm_90): x and dy of a long row split over the blocks of a cluster, in
// registers; the two row sums combined through distributed shared memory. Each block's
// dw partial covers its slice of the columns, for the rows of its cluster. The next row's
// slices are copied into shared memory (RowStage) while this one is reduced and stored, and
// the weight's slice is kept there: the cluster-scope acquire of the row sums leaves
// nothing of it in L1, and registers are taken by x, dy and the dw sums. Bulk copies need
// 16-byte aligned slices: unaligned rows are loaded from global memory (load_chunk)
// instead. So are the 16-bit gradients of an f32 r_out (TG other than TX): the stage
// holds x and dy in slots of one vector type. Dynamic shared memory:
// cluster_backward_shared_bytes.
//
// Rows beyond the registers of kMaxClusterSize blocks (Plan::pieces = PIECES = 2: up to
// 262144 16-bit or 131072 f32 columns) give each block a slice of two pieces of its
// register capacity, so that x and dy are still read from memory once. Piece 0 is held in
// registers as above; piece 1 (chunks first + kPiece + i * BLOCK) is read twice, for the
// sums and for dx, from the stage's second buffer where rows are staged (the two buffers
// then hold the row's two pieces, not two rows), else from global memory. Each buffer takes
// the next row's piece once every thread of the block has read it: buffer 0 after piece 0
// went to registers, buffer 1 after piece 1's dx is stored (a block barrier each), so the
// next row's piece 0 is in flight through the sums' exchange and the stores, and its piece 1
// through piece 0's stores. Piece 1's dw sums live in
// shared memory (LaneSums), since x, dy and the dw sums of piece 0 take the registers (held
// there too at 512 x 4, they spilled 224 bytes a thread, sm_90). The weight's slice stays in
// shared memory where it fits beside them (kSharedBackwardWeight: one piece), else it is
// read from global memory.
// ---------------------------------------------------------------------------------------
template <class TX, int VEC, int ITEMS, int BLOCK>
using ClusterBackwardStage = RowStage<Vec<TX, VEC>, ITEMS * BLOCK, 2>;
template <bool ALIGNED, class TX, class TG>
inline constexpr bool kStagesRows = ALIGNED&& std::is_same<TX, TG>::value;
// The most dynamic shared memory a cluster-row block asks for (sm_90 allows 227 KB a block).
inline constexpr std::size_t kMaxClusterBackwardShared = 200 * 1024;
template <bool ALIGNED, class TX, class TG, int VEC, int ITEMS, int BLOCK>
inline constexpr std::size_t kClusterBackwardStageBytes =
    kStagesRows<ALIGNED, TX, TG> ? ClusterBackwardStage<TX, VEC, ITEMS, BLOCK>::kBytes : 0;
template <int VEC, int ITEMS, int BLOCK, int PIECES>
inline constexpr std::size_t kClusterBackwardSumsBytes = sizeof(float) * VEC* ITEMS* BLOCK*(PIECES - 1);
template <bool ALIGNED, class TX, class TG, class TW, int VEC, int ITEMS, int BLOCK, int PIECES>
inline constexpr bool kSharedBackwardWeight = kClusterBackwardStageBytes<ALIGNED, TX, TG, VEC, ITEMS, BLOCK> +
                                                  kClusterBackwardSumsBytes<VEC, ITEMS, BLOCK, PIECES> +
                                                  sizeof(Vec<TW, VEC>) * ITEMS* PIECES* BLOCK
                                              <= kMaxClusterBackwardShared;

// Dynamic shared memory: the stage, piece 1's dw sums, the weight's slice (each where used).
template <bool ALIGNED, class TX, class TG, class TW, int VEC, int ITEMS, int BLOCK, int PIECES>
constexpr std::size_t cluster_backward_shared_bytes(bool has_weight) {
  constexpr bool kSharedWeight = kSharedBackwardWeight<ALIGNED, TX, TG, TW, VEC, ITEMS, BLOCK, PIECES>;
  return kClusterBackwardStageBytes<ALIGNED, TX, TG, VEC, ITEMS, BLOCK> +
         kClusterBackwardSumsBytes<VEC, ITEMS, BLOCK, PIECES> +
         (has_weight && kSharedWeight ? sizeof(Vec<TW, VEC>) * ITEMS * PIECES * BLOCK : 0);
}

// A lane's dw sums of a piece kept in shared memory (`cells`: ITEMS * VEC floats a thread of
// the block), as float4 cells a thread apart, so that a warp's accesses take no bank twice.
// Each thread reads and writes only its own cells: no barrier.
template <int VEC, int ITEMS, int BLOCK>
struct LaneSums {
  static_assert(VEC % 4 == 0, "whole float4 cells");
  float4* cells;
  __device__ __forceinline__ explicit LaneSums(float* block_cells)
      : cells(reinterpret_cast<float4*>(block_cells) + threadIdx.x) {}
  __device__ __forceinline__ float4& cell(int i, int q) const { return cells[(i * (VEC / 4) + q) * BLOCK]; }
  // Item i's sums.
  __device__ __forceinline__ void load(int i, float (&s)[VEC]) const {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) {
      const float4 c = cell(i, q);
      s[4 * q] = c.x, s[4 * q + 1] = c.y, s[4 * q + 2] = c.z, s[4 * q + 3] = c.w;
    }
  }
  __device__ __forceinline__ void save(int i, const float (&s)[VEC]) const {
#pragma unroll
    for (int q = 0; q < VEC / 4; ++q) cell(i, q) = make_float4(s[4 * q], s[4 * q + 1], s[4 * q + 2], s[4 * q + 3]);
  }
  __device__ __forceinline__ void load(float (&s)[ITEMS][VEC]) const {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) load(i, s[i]);
  }
};

// Items offset.. of a lane's weight vectors, as items 0..: a piece's (or an item's) weight in
// a source that holds both pieces' (dot_gx and store_dx address their items from 0).
template <class WSRC, class TW>
struct PieceWeight {
  static constexpr bool kZeroPadded = WSRC::kZeroPadded;
  const TW* w;
  const WSRC& src;
  int offset;
  __device__ __forceinline__ auto operator()(int i, std::int64_t idx) const { return src(offset + i, idx); }
};

template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW, int VEC, int ITEMS, int BLOCK, int PIECES>
__global__ void __launch_bounds__(BLOCK, resident_threads(ITEMS) / BLOCK) ClusterBackwardImpl(const BackwardArgs a) {
#if RMSNORM_CLUSTER_BODY
  static_assert(PIECES == 1 || PIECES == 2, "a slice in one or two pieces");
  begin_dependent_grid();
  using Sum = ClusterSum<BLOCK, 2>;
  using Stage = ClusterBackwardStage<TX, VEC, ITEMS, BLOCK>;
  constexpr bool kStaged = kStagesRows<ALIGNED, TX, TG>;
  constexpr bool kSharedWeight = kSharedBackwardWeight<ALIGNED, TX, TG, TW, VEC, ITEMS, BLOCK, PIECES>;
  constexpr std::int64_t kPiece = std::int64_t{ITEMS} * BLOCK;
  __shared__ typename Sum::TempStorage temp;
  __shared__ typename Stage::Barriers bars;
  extern __shared__ uint4 dynamic_shared[];
  const ClusterPlace place = cluster_place();
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const std::int64_t per_block = (vectors + place.size - 1) / place.size;
  const std::int64_t begin = place.rank * per_block;
  const std::int64_t end = begin + per_block < vectors ? begin + per_block : vectors;
  const std::int64_t first = begin + threadIdx.x;
  Stage stage(bars, reinterpret_cast<Vec<TX, VEC>*>(dynamic_shared));
  unsigned char* const sums_at =
      reinterpret_cast<unsigned char*>(dynamic_shared) + kClusterBackwardStageBytes<ALIGNED, TX, TG, VEC, ITEMS, BLOCK>;
  using WeightSource = std::conditional_t<kSharedWeight, SharedLaneWeight<ALIGNED, TW, VEC, ITEMS * PIECES, BLOCK>,
                                          LaneWeight<ALIGNED, TW, VEC, ITEMS * PIECES, BLOCK, false>>;
  const WeightSource wsrc = [&] {
    const TW* w = static_cast<const TW*>(a.weight);
    if constexpr (kSharedWeight)
      return WeightSource(
          w, first, end, a.cols,
          reinterpret_cast<Vec<TW, VEC>*>(sums_at + kClusterBackwardSumsBytes<VEC, ITEMS, BLOCK, PIECES>));
    else
      return WeightSource(w, first, end, a.cols);
  }();
  const PieceWeight<WeightSource, TW> wsrc1{wsrc.w, wsrc, ITEMS};
  float dw_acc[ITEMS][VEC] = {};  // piece 0's
  // Piece 1's dw sums (PIECES = 2), where dw is wanted (a uniform branch).
  const LaneSums<VEC, ITEMS, BLOCK> sums1(reinterpret_cast<float*>(sums_at));
  const bool dw1 = PIECES > 1 && a.partial && a.weight;
  if (dw1)
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) sums1.save(i, dw_acc[i]);
  Sum::init(temp);

  // Starts the copies of piece `piece` of `row`'s slices into `buffer` (thread 0; staged
  // rows only).
  const auto prefetch = [&](std::int64_t row, int buffer, int piece) {
    if (!kStaged || threadIdx.x != 0) return;
    const Vec<TX, VEC>* x = reinterpret_cast<const Vec<TX, VEC>*>(
        static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride));
    const Vec<TX, VEC>* dy = reinterpret_cast<const Vec<TX, VEC>*>(
        static_cast<const TX*>(a.dy) + row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride));
    const std::int64_t lo = begin + piece * kPiece;
    const std::int64_t left = end > lo ? end - lo : 0;
    const Vec<TX, VEC>* const src[2] = {x + lo, dy + lo};
    stage.issue(buffer, src, left < kPiece ? left : kPiece);
  };
  // Item i of piece 1 of `row` (PIECES = 2): from the stage's buffer 1, or from global memory.
  const auto piece1_item = [&](std::int64_t row, int i, Vec<TX, VEC>& xv, Vec<TG, VEC>& gv) {
    const std::int64_t idx = first + kPiece + static_cast<std::int64_t>(i) * BLOCK;
    if constexpr (kStaged) {
      xv = idx < end ? stage.slot(1, 0)[threadIdx.x + i * BLOCK] : Vec<TX, VEC>{};
      gv = idx < end ? stage.slot(1, 1)[threadIdx.x + i * BLOCK] : Vec<TX, VEC>{};
    } else {
      const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
      const TG* dy = static_cast<const TG*>(a.dy) + row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride);
      xv = load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, idx < end);
      gv = load_chunk<ALIGNED, TG, VEC>(dy, idx, a.cols, idx < end);
    }
  };
  for (int p = 0; p < PIECES; ++p) prefetch(place.cluster, p, p);
  float next_rstd = a.rstd ? a.rstd[place.cluster] : 0.f;

  unsigned step = 0;
  for (std::int64_t row = place.cluster; row < a.total_rows; row += place.clusters, ++step) {
    // One piece: the buffers alternate between rows. Two: buffer p holds piece p of every row.
    const int buffer = PIECES == 1 ? static_cast<int>(step & 1u) : 0;
    const unsigned use = PIECES == 1 ? step >> 1 : step;
    Vec<TX, VEC> xv[ITEMS];
    Vec<TG, VEC> gv[ITEMS];
    if constexpr (kStaged) {
      stage.wait(buffer, use);
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        const bool in = first + static_cast<std::int64_t>(i) * BLOCK < end;
        xv[i] = in ? stage.slot(buffer, 0)[threadIdx.x + i * BLOCK] : Vec<TX, VEC>{};
        gv[i] = in ? stage.slot(buffer, 1)[threadIdx.x + i * BLOCK] : Vec<TX, VEC>{};
      }
    } else {
      const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
      const TG* dy = static_cast<const TG*>(a.dy) + row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride);
      load_items<ALIGNED, TX, VEC, ITEMS, BLOCK>(x, first, end, a.cols, true, xv);
      load_items<ALIGNED, TG, VEC, ITEMS, BLOCK>(dy, first, end, a.cols, true, gv);
    }
    // One piece: the other buffer was last read for the previous row, and thread 0 has
    // since waited for that row's sums: every warp of the block sent its part of them after
    // its reads of the buffer (the parts are computed from what it read), so the copies
    // cannot overwrite a slot that a warp has yet to read. Two pieces: buffer 0 has just been
    // read into registers by every thread (the barrier).
    const float saved_rstd = next_rstd;
    const std::int64_t next = row + place.clusters;
    if (PIECES > 1 && kStaged) __syncthreads();
    if (next < a.total_rows) {
      prefetch(next, buffer ^ (PIECES == 1 ? 1 : 0), 0);
      if (a.rstd) next_rstd = a.rstd[next];
    }
    // Both sums travel in one exchange (the rstd one is unused when given). Given dots
    // replace the second one's result; the exchange stays (the stage's reuse relies on
    // it, see above). Two pieces: piece 0's sums, then piece 1's added.
    float sums[2] = {a.rstd ? 0.f : sum_squares<TX, VEC, ITEMS>(xv),
                     dot_gx<TX, TG, VEC, ITEMS, BLOCK>(wsrc, first, end, xv, gv, a)};
    if constexpr (PIECES > 1) {
      if (kStaged) stage.wait(1, use);
      Vec<TX, VEC> xv1[ITEMS];
      Vec<TG, VEC> gv1[ITEMS];
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) piece1_item(row, i, xv1[i], gv1[i]);
      if (!a.rstd) sums[0] += sum_squares<TX, VEC, ITEMS>(xv1);
      sums[1] += dot_gx<TX, TG, VEC, ITEMS, BLOCK>(wsrc1, first + kPiece, end, xv1, gv1, a);
    }
    Sum::sum(temp, sums, step);
    const float rstd = a.rstd ? saved_rstd : rstd_from_sum(sums[0], a.inv_cols, a.eps);
    const float gx = a.row_dots ? a.row_dots[row] : sums[1];
    const float coef = rstd * rstd * rstd * gx * a.inv_cols;
    TG* dx = static_cast<TG*>(a.dx) + row_offset(row, a.rows, a.dx_batch_stride, a.dx_row_stride);
    // Two pieces: piece 1's dx first, so that buffer 1 takes the next row's piece 1 while
    // piece 0's dx is stored from registers; an item at a time (piece 0's x, dy and dw sums
    // hold the registers meanwhile: whole, piece 1 spilled 140 bytes a thread, sm_90).
    if constexpr (PIECES > 1) {
#pragma unroll
      for (int i = 0; i < ITEMS; ++i) {
        Vec<TX, VEC> xv1[1];
        Vec<TG, VEC> gv1[1];
        piece1_item(row, i, xv1[0], gv1[0]);
        float acc1[1][VEC] = {};
        if (dw1) sums1.load(i, acc1[0]);
        const PieceWeight<WeightSource, TW> w1{wsrc.w, wsrc, ITEMS + i};
        store_dx<ALIGNED, RESIDUAL, TX, TG, VEC, 1, BLOCK>(dx, row, w1, first + kPiece + std::int64_t{i} * BLOCK, end,
                                                           xv1, gv1, rstd, coef, acc1, a);
        if (dw1) sums1.save(i, acc1[0]);
      }
      if (kStaged) {
        __syncthreads();  // every thread has read buffer 1 for this row
        if (next < a.total_rows) prefetch(next, 1, 1);
      }
    }
    store_dx<ALIGNED, RESIDUAL, TX, TG, VEC, ITEMS, BLOCK>(dx, row, wsrc, first, end, xv, gv, rstd, coef, dw_acc, a);
  }
  // One partial row per cluster: each block fills its slice.
  if (a.partial) {
    write_partial<ALIGNED, VEC, ITEMS, BLOCK>(a.partial + place.cluster * a.cols, first, end, a.cols, dw_acc);
    if (PIECES > 1) {
      float acc1[ITEMS][VEC] = {};
      if (dw1) sums1.load(acc1);
      write_partial<ALIGNED, VEC, ITEMS, BLOCK>(a.partial + place.cluster * a.cols, first + kPiece, end, a.cols, acc1);
    }
  }
  Sum::finish();
#endif
}

// ---------------------------------------------------------------------------------------
// long_row: any length and alignment; the row is streamed twice (sums, then dx). The
// block's partial dw row lives in the workspace and is updated in place: each column is
// owned by one thread of the block for every row, so there is no race and no atomic.
// ---------------------------------------------------------------------------------------
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW, int VEC, int BLOCK>
__global__ void __launch_bounds__(BLOCK, resident_threads(2) / BLOCK) LongRowBackwardImpl(const BackwardArgs a) {
  begin_dependent_grid();
  using Sum = RowSum<BLOCK, BLOCK>;
  __shared__ typename Sum::TempStorage temp;
  const std::int64_t vectors = chunks_of(a.cols, VEC);
  const TW* w = static_cast<const TW*>(a.weight);
  float* part = a.partial ? a.partial + static_cast<std::int64_t>(blockIdx.x) * a.cols : nullptr;
  bool first_row = true;

  for (std::int64_t row = blockIdx.x; row < a.total_rows; row += gridDim.x) {
    const TX* x = static_cast<const TX*>(a.x) + row_offset(row, a.rows, a.x_batch_stride, a.x_row_stride);
    const TG* dy = static_cast<const TG*>(a.dy) + row_offset(row, a.rows, a.dy_batch_stride, a.dy_row_stride);
    TG* dx = static_cast<TG*>(a.dx) + row_offset(row, a.rows, a.dx_batch_stride, a.dx_row_stride);
    float ss = 0.f, gx = 0.f;
    const std::int64_t summed = a.rstd && a.row_dots ? 0 : vectors;  // given both, the first pass is skipped
#pragma unroll 2
    for (std::int64_t idx = threadIdx.x; idx < summed; idx += BLOCK) {
      float xf[VEC], gf[VEC], wf[VEC];
      unpack(load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true), xf);
      unpack(load_chunk<ALIGNED, TG, VEC>(dy, idx, a.cols, true), gf);
      if (w) unpack(load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, true), wf);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        ss += xf[k] * xf[k];
        gx += gf[k] * (w ? wf[k] + a.weight_offset : 1.f) * xf[k];
      }
    }
    const float rstd = a.rstd ? a.rstd[row] : rstd_from_sum(Sum::sum(temp, ss), a.inv_cols, a.eps);
    gx = a.row_dots ? a.row_dots[row] : Sum::sum(temp, gx);  // uniform: a.row_dots is the grid's
    const float coef = rstd * rstd * rstd * gx * a.inv_cols;
#pragma unroll 2
    for (std::int64_t idx = threadIdx.x; idx < vectors; idx += BLOCK) {
      float xf[VEC], gf[VEC], wf[VEC], out[VEC], contrib[VEC];
      unpack(load_chunk<ALIGNED, TX, VEC>(x, idx, a.cols, true), xf);
      unpack(load_chunk<ALIGNED, TG, VEC>(dy, idx, a.cols, true), gf);
      if (w) unpack(load_chunk<ALIGNED, TW, VEC>(w, idx, a.cols, true), wf);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        out[k] = rstd * gf[k] * (w ? wf[k] + a.weight_offset : 1.f) - coef * xf[k];
        contrib[k] = gf[k] * xf[k] * rstd;
      }
      store_dx_chunk<ALIGNED, RESIDUAL, TX, TG, VEC>(dx, row, idx, out, a);
      if (part)
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          if (ALIGNED || idx * VEC + k < a.cols)
            part[idx * VEC + k] = (first_row ? 0.f : part[idx * VEC + k]) + contrib[k];
    }
    first_row = false;
  }
}

// dw[c] = sum over partial rows p of partial[p][c], in a fixed order: a block takes 32 * VEC
// columns; its 32 thread rows each add every 32nd partial row (VEC neighbouring columns a
// lane, one load), then one thread per column adds the 32 results in order. The order does
// not depend on VEC, so neither do the bits. VEC = 4 (16-byte loads: cols a multiple of 4,
// the partial rows 16-byte aligned) keeps four times the bytes in flight a load and a
// quarter of the blocks: one float a lane took the kernel 4.5-11 us at 14-28 % of the
// DRAM's throughput (H100, 2048-32768 columns).
template <class TDW, int VEC>
__global__ void __launch_bounds__(1024)
    DwFinalizeImpl(const float* partial, std::int64_t partials, std::int64_t cols, TDW* dw) {
  static_assert(VEC == 1 || VEC == 4, "one float or a float4 a lane");
  using Chunk = std::conditional_t<VEC == 4, float4, float>;
  begin_dependent_grid();
  __shared__ Chunk stage[32][32];
  const std::int64_t block_first = static_cast<std::int64_t>(blockIdx.x) * 32 * VEC;
  const std::int64_t c = block_first + threadIdx.x * VEC;  // a whole chunk: cols % VEC == 0
  float s[VEC] = {};
  if (c < cols)
#pragma unroll 8  // loads in flight: the sum waits on them, not the reverse
    for (std::int64_t p = threadIdx.y; p < partials; p += 32) {
      const Chunk v = *reinterpret_cast<const Chunk*>(partial + p * cols + c);
      const float* f = reinterpret_cast<const float*>(&v);
#pragma unroll
      for (int k = 0; k < VEC; ++k) s[k] += f[k];
    }
  Chunk mine;
#pragma unroll
  for (int k = 0; k < VEC; ++k) reinterpret_cast<float*>(&mine)[k] = s[k];
  stage[threadIdx.y][threadIdx.x] = mine;  // a warp's row of the stage at once, no bank conflict
  __syncthreads();
  const int t = threadIdx.y * 32 + threadIdx.x;  // the block's column t
  if (t < 32 * VEC && block_first + t < cols) {
    float sum = 0.f;
#pragma unroll
    for (int r = 0; r < 32; ++r) sum += reinterpret_cast<const float*>(&stage[r][0])[t];
    dw[block_first + t] = from_float<TDW>(sum);
  }
}

}  // namespace rmsnorm::detail::cuda
