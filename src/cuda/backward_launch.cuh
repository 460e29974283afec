// Launchers of the backward: the main kernel of the plan's strategy, then the dw
// finalisation. Included by the generated translation units, one per (input dtype, form,
// alignment: backward_instance.cu.in).
#pragma once

#include <algorithm>

#include "cuda/backward_kernels.cuh"
#include "cuda/forward_launch.cuh"

namespace rmsnorm::detail::cuda {

// Blocks of the backward grid: as many as the SMs hold at once (see resident_threads), never
// more than there are row groups. Each block leaves one partial dw row; the workspace
// (cuda_backward_workspace) is sized for the most any plan launches.
inline std::int64_t backward_blocks(std::int64_t row_groups, int threads_per_block, int items, int sm_count) {
  return std::min(row_groups, filling_blocks(threads_per_block, sm_count, resident_threads(items)));
}

inline BackwardArgs make_backward_args(const BackwardProblem& p) {
  BackwardArgs a{};
  a.dy = p.dy;
  a.x = p.x;
  a.weight = p.weight;
  a.rstd = static_cast<const float*>(p.rstd);
  a.dx = p.dx;
  a.partial = p.dw ? static_cast<float*>(p.workspace) : nullptr;
  a.rows = p.rows;
  a.total_rows = p.total_rows();
  a.cols = p.cols;
  a.dy_batch_stride = p.dy_batch_stride;
  a.dy_row_stride = p.dy_row_stride;
  a.x_batch_stride = p.x_batch_stride;
  a.x_row_stride = p.x_row_stride;
  a.dx_batch_stride = p.dx_batch_stride;
  a.dx_row_stride = p.dx_row_stride;
  a.eps = static_cast<float>(p.eps);
  a.inv_cols = static_cast<float>(1.0 / static_cast<double>(p.row_dots ? p.full_cols : p.cols));
  a.row_dots = p.row_dots;
  a.weight_offset = static_cast<float>(p.weight_offset);
  a.dr_out = p.dr_out;
  a.dr = p.dr;
  a.dr_out_batch_stride = p.dr_out_batch_stride;
  a.dr_out_row_stride = p.dr_out_row_stride;
  a.dr_batch_stride = p.dr_batch_stride;
  a.dr_row_stride = p.dr_row_stride;
  return a;
}

// The register configuration the plan names among a compile-time table; returns the blocks
// launched, one partial dw row each.
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW, int VEC, const RegisterConfig* TABLE, int N>
std::int64_t launch_backward_rows(const BackwardArgs& a, const Plan& plan, int sm_count, const Queue& q) {
  return with_config<TABLE, N>(plan, names_rows, [&](auto i) {
    constexpr RegisterConfig c = TABLE[decltype(i)::value];
    constexpr int kRowsPerBlock = c.threads_per_block / c.threads_per_row;
    const std::int64_t blocks =
        backward_blocks((a.total_rows + kRowsPerBlock - 1) / kRowsPerBlock, c.threads_per_block, c.items, sm_count);
    launch_kernel(BackwardRowsImpl<ALIGNED, RESIDUAL, TX, TG, TW, VEC, c.threads_per_row, c.items, c.threads_per_block>,
                  {grid_for(blocks), c.threads_per_block}, q, "BackwardRowsImpl", &plan, a);
    return blocks;
  });
}

// The cluster configuration the plan names (kBackwardClusterRowConfigs). The grid is the
// clusters the device holds at once (resident_clusters), each looping over its share of
// the rows; returns their count, one partial dw row each. Measured on the H100 (bf16,
// 2026-11-25, rows of 16384 / 32768 / 65536 elements): 2.82 / 2.76 / 2.60 TB/s, against
// 2.51 / 2.43 / 2.09 with cluster_count's four times as many clusters (which the forward
// keeps): once the next row's loads are in flight during this one's barrier (RowStage),
// further clusters only add partial rows and waves.
// A slice of two pieces (Plan::pieces, rows beyond kMaxClusterSize blocks' registers) takes
// the kernel's PIECES = 2.
template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW, int VEC>
std::int64_t launch_backward_clusters(const BackwardArgs& a, const Plan& plan, int sm_count, const Queue& q) {
  if (plan.pieces < 1 || plan.pieces > kBackwardClusterPieces)
    throw Error(Code::internal, "backward cluster rows in " + std::to_string(plan.pieces) + " pieces");
  return with_config<kBackwardClusterRowConfigs, kNumBackwardClusterRowConfigs>(plan, names_cluster, [&](auto i) {
    constexpr RegisterConfig c = kBackwardClusterRowConfigs[decltype(i)::value];
    const auto launch = [&](auto pieces) {
      constexpr int kPieces = decltype(pieces)::value;
      const auto kernel =
          ClusterBackwardImpl<ALIGNED, RESIDUAL, TX, TG, TW, VEC, c.items, c.threads_per_block, kPieces>;
      LaunchShape shape{dim3(1), c.threads_per_block, plan.cluster_size,
                        cluster_backward_shared_bytes<ALIGNED, TX, TG, TW, VEC, c.items, c.threads_per_block, kPieces>(
                            a.weight != nullptr)};
      const int resident = resident_clusters(kernel, shape);
      const std::int64_t clusters = resident > 0
                                        ? std::min<std::int64_t>(a.total_rows, resident)
                                        : cluster_count(a.total_rows, c.threads_per_block, plan.cluster_size, sm_count);
      shape.grid = grid_for(clusters * plan.cluster_size);
      launch_kernel(kernel, shape, q, "ClusterBackwardImpl", &plan, a);
      return clusters;
    };
    return plan.pieces == 2 ? launch(std::integral_constant<int, 2>{}) : launch(std::integral_constant<int, 1>{});
  });
}

// A float a lane (32 columns a 1024-thread block) where that grid fits the SMs in one wave
// of two blocks each; four (16-byte loads, 128 columns a block) where it would take more,
// when the partial rows are 16-byte aligned. On an H100 the one-float kernel took 4.5 / 5.2
// us at 2048 / 4096 columns (one wave) and 9.1 / 11.1 us at 16384 / 32768 (two and four);
// four floats a lane at 128 columns (one block) cost 262144 x 128 1.3 us a call.
template <class TDW>
void launch_dw_finalize(const float* partial, std::int64_t partials, std::int64_t cols, void* dw, int sm_count,
                        const Queue& q) {
  const std::int64_t narrow_blocks = (cols + 31) / 32;
  if (narrow_blocks > 2 * std::int64_t{sm_count} && cols % 4 == 0 &&
      reinterpret_cast<std::uintptr_t>(partial) % 16 == 0)
    launch_kernel(DwFinalizeImpl<TDW, 4>, {grid_for((cols + 127) / 128), dim3(32, 32)}, q, "DwFinalizeImpl", nullptr,
                  partial, partials, cols, static_cast<TDW*>(dw));
  else
    launch_kernel(DwFinalizeImpl<TDW, 1>, {grid_for(narrow_blocks), dim3(32, 32)}, q, "DwFinalizeImpl", nullptr,
                  partial, partials, cols, static_cast<TDW*>(dw));
}

template <bool ALIGNED, bool RESIDUAL, class TX, class TG, class TW>
void launch_backward_typed(const BackwardProblem& p, const Plan& plan, int sm_count, const Queue& q) {
  constexpr int kVec = 16 / sizeof(TX);
  const BackwardArgs a = make_backward_args(p);
  std::int64_t blocks = 0;
  switch (plan.strategy) {
    case Strategy::warp_rows:
      blocks = launch_backward_rows<ALIGNED, RESIDUAL, TX, TG, TW, kVec, kBackwardWarpRowsConfigs,
                                    kNumBackwardWarpRowsConfigs>(a, plan, sm_count, q);
      break;
    case Strategy::block_row:
      blocks = launch_backward_rows<ALIGNED, RESIDUAL, TX, TG, TW, kVec, kBackwardBlockRowConfigs,
                                    kNumBackwardBlockRowConfigs>(a, plan, sm_count, q);
      break;
    case Strategy::long_row:
      blocks = backward_blocks(a.total_rows, kLongRowThreads, /*items=*/2, sm_count);
      launch_kernel(LongRowBackwardImpl<ALIGNED, RESIDUAL, TX, TG, TW, kVec, kLongRowThreads>,
                    {grid_for(blocks), kLongRowThreads}, q, "LongRowBackwardImpl", &plan, a);
      break;
    case Strategy::cluster_row:
      blocks = launch_backward_clusters<ALIGNED, RESIDUAL, TX, TG, TW, kVec>(a, plan, sm_count, q);
      break;
    case Strategy::automatic:
      throw Error(Code::internal, "plan without a strategy");
  }
  if (!p.dw) return;
  if (p.dw_dtype == DType::f32)
    launch_dw_finalize<float>(a.partial, blocks, p.cols, p.dw, sm_count, q);
  else
    launch_dw_finalize<TW>(a.partial, blocks, p.cols, p.dw, sm_count, q);
}

// TX: x's type (r_out's); TG: the gradients' (dy, dx), x's or 16-bit with an f32 r_out; the
// weight is TG's or f32. RESIDUAL: the residual add's backward (store_dx_chunk); kAligned:
// whole chunks loaded.
template <class TX, class TG, bool RESIDUAL, bool kAligned>
void launch_backward(const BackwardProblem& p, const Plan& plan, int sm_count, const Queue& q) {
  static_assert(std::is_same<TX, TG>::value || RESIDUAL, "gradients differ from x only for an f32 r_out");
  if constexpr (std::is_same<TG, float>::value) {
    launch_backward_typed<kAligned, RESIDUAL, float, float, float>(p, plan, sm_count, q);
  } else {
    if (!p.weight || p.w_dtype == StorageOf<TG>::value)
      return launch_backward_typed<kAligned, RESIDUAL, TX, TG, TG>(p, plan, sm_count, q);
    launch_backward_typed<kAligned, RESIDUAL, TX, TG, float>(p, plan, sm_count, q);
  }
}

}  // namespace rmsnorm::detail::cuda
