// Launchers: turn a validated problem and its plan into one kernel launch. Included by the
// generated translation units, one per (input dtype, steps, alignment: forward_instance.cu.in),
// so that the instantiations compile in parallel.
#pragma once

#include <algorithm>
#include <string>

#include "cuda/forward_kernels.cuh"
#include "cuda/launch.h"
#include "kernel_configs.h"
#include "problem.h"

namespace rmsnorm::detail::cuda {

template <class T>
struct StorageOf;
template <>
struct StorageOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct StorageOf<__half> {
  static constexpr DType value = DType::f16;
};
template <>
struct StorageOf<__nv_bfloat16> {
  static constexpr DType value = DType::bf16;
};

inline ForwardArgs make_args(const ForwardProblem& p) {
  ForwardArgs a{};
  a.x = p.x;
  a.y = p.y;
  a.weight = p.weight;
  a.rstd = static_cast<float*>(p.rstd);
  a.rows = p.rows;
  a.total_rows = p.total_rows();
  a.cols = p.cols;
  a.x_batch_stride = p.x_batch_stride;
  a.x_row_stride = p.x_row_stride;
  a.y_batch_stride = p.y_batch_stride;
  a.y_row_stride = p.y_row_stride;
  a.eps = static_cast<float>(p.eps);
  a.inv_cols = static_cast<float>(1.0 / static_cast<double>(p.row_sums ? p.full_cols : p.cols));
  a.row_sums = p.row_sums;
  a.pieces = 1;      // the cluster launcher sets its plan's
  a.weight_at = -1;  // and the weight's place
  a.weight_offset = static_cast<float>(p.weight_offset);
  a.llama = p.cast == Cast::llama;
  a.residual = p.residual;
  a.residual_out = p.residual_out;
  a.r_batch_stride = p.r_batch_stride;
  a.r_row_stride = p.r_row_stride;
  a.r_out_batch_stride = p.r_out_batch_stride;
  a.r_out_row_stride = p.r_out_row_stride;
  a.ranks = p.ranks;
  for (int k = 0; k < p.ranks; ++k) a.rank_x[k] = p.rank_x[k];
  if (p.quantize) {
    a.fp8 = p.y_dtype == DType::f8e4m3;
    a.dynamic = p.quant_scale != QuantScale::static_tensor;
    a.scale = p.scales;
    a.scales = p.scales;
    a.scale_ub = p.scale_ub;
    a.pow2 = p.pow2_scales;
    a.reciprocal = p.reciprocal;
    a.group_size = a.dynamic ? p.group_size : p.cols;
    a.groups = a.dynamic ? p.groups() : 1;
    a.scale_row_stride = p.scale_row_stride;
    a.scale_group_stride = p.scale_group_stride;
    a.qmax = a.fp8 ? 448.0f : 127.0f;
    a.min_scale = 1.0f / (a.qmax * 512.0f);  // as src/cpu/quantize.h computes it
  }
  return a;
}

// Shared memory a block for the dynamic scales' group maxima (GroupMax: `entries` cells for
// the rows a block holds), refused with a named error beyond what a block may have.
inline std::size_t dynamic_scale_bytes(const ForwardArgs& a, std::int64_t rows_per_block) {
  if (!a.dynamic) return 0;
  const std::size_t bytes = group_max_bytes(rows_per_block * a.groups);
  constexpr std::size_t kMost = 200 * 1024;
  if (bytes > kMost)
    throw Error(Code::unsupported, "group_size: " + std::to_string(a.groups) + " groups a row of " +
                                       std::to_string(a.cols) + " columns need " + std::to_string(bytes) +
                                       " bytes of shared memory a block for their maxima on CUDA, more than " +
                                       std::to_string(kMost) + " (use larger groups)");
  return bytes;
}

// Per-group scales whose group is a power of two of at most 32 chunks (bf16 and f16 groups
// of 8-256 columns, f32 of 4-128): in a row of whole warps (TPR a multiple of 32) the
// group's chunks lie in neighbouring lanes of one warp, and the register rows take its max
// by shuffles (RegisterRowsImpl's LANE_GROUPS); long_row's passes hold them in neighbouring
// lanes too (LongRowImpl's LANE_GROUPS). Aligned rows only: the others keep the
// shared-memory table (one instantiation fewer a configuration).
inline bool lane_groups(const ForwardArgs& a, int vec) {
  if (!a.dynamic || a.groups <= 1) return false;
  const std::int64_t lanes = a.group_size / vec;  // a group is whole chunks (launch_typed)
  return lanes <= 32 && (lanes & (lanes - 1)) == 0;
}

// Grids stay within the hardware's limit; the kernels loop over any remaining rows.
inline unsigned grid_for(std::int64_t work_items) {
  constexpr std::int64_t kMaxGrid = 0x7fffffff;
  return static_cast<unsigned>(work_items < kMaxGrid ? work_items : kMaxGrid);
}

// The register configuration the plan names among a compile-time table: its instantiation.
// split_sms > 0 (block rows on sm_90: the SM count): a batch of no more rows than fill the
// SMs split over clusters (split_blocks) as `split` (Params::split_few_rows) asks, aligned
// rows of the plain store or the residual add; the same bits as the block row.
template <bool ALIGNED, class STEPS, class TX, class TW, class TY, int VEC, const RegisterConfig* TABLE, int N>
void launch_register_rows(const ForwardArgs& a, const Plan& plan, const Queue& q, int split_sms = 0,
                          SplitFewRows split = SplitFewRows::off) {
  with_config<TABLE, N>(plan, names_rows, [&](auto i) {
    constexpr RegisterConfig c = TABLE[decltype(i)::value];
    constexpr int kSplit = split_blocks(c);
    if constexpr (ALIGNED && !STEPS::kQuant && kSplit > 1)
      if (split_launch_blocks(c, a.total_rows, split_sms, split) == kSplit) {
        constexpr int kBlock = c.threads_per_row / kSplit;
        launch_kernel(
            RegisterRowsImpl<ALIGNED, STEPS, TX, TW, TY, VEC, c.threads_per_row, c.items, kBlock, false, kSplit>,
            {grid_for(a.total_rows * kSplit), kBlock, kSplit, 0}, q, "RegisterRowsImpl (split)", &plan, a);
        return;
      }
    constexpr int kRowsPerBlock = c.threads_per_block / c.threads_per_row;
    const std::int64_t blocks = (a.total_rows + kRowsPerBlock - 1) / kRowsPerBlock;
    if constexpr (ALIGNED && STEPS::kQuant && c.threads_per_row % 32 == 0)
      if (lane_groups(a, VEC)) {
        launch_kernel(
            RegisterRowsImpl<ALIGNED, STEPS, TX, TW, TY, VEC, c.threads_per_row, c.items, c.threads_per_block, true>,
            {grid_for(blocks), c.threads_per_block, 0, 0}, q, "RegisterRowsImpl", &plan, a);
        return;
      }
    launch_kernel(RegisterRowsImpl<ALIGNED, STEPS, TX, TW, TY, VEC, c.threads_per_row, c.items, c.threads_per_block>,
                  {grid_for(blocks), c.threads_per_block, 0, dynamic_scale_bytes(a, kRowsPerBlock)}, q,
                  "RegisterRowsImpl", &plan, a);
  });
}

// Plan::shared_slices: the plain store of aligned rows in one piece, each block's slice in
// shared memory (ClusterRowImpl's SHARED), on a cluster a row unless the plan asks for
// another grid (Plan::cluster_grid: multiples of the resident clusters, each looping).
template <class STEPS, class TX, class TW, class TY, int VEC, int ITEMS, int BLOCK>
void launch_shared_slices(const ForwardArgs& a, const Plan& plan, const Queue& q) {
  const auto kernel = ClusterRowImpl<true, STEPS, TX, TW, TY, VEC, ITEMS, BLOCK, true>;
  const std::int64_t slice = (chunks_of(a.cols, VEC) + plan.cluster_size - 1) / plan.cluster_size;
  if (plan.pieces != 1 || slice > std::int64_t{ITEMS} * BLOCK)
    throw Error(Code::internal, "cluster_row: a slice in shared memory is one piece of " +
                                    std::to_string(ITEMS * BLOCK) + " chunks, not " + std::to_string(plan.pieces) +
                                    " holding " + std::to_string(slice));
  if (plan.cluster_size < 2 || plan.cluster_size > kMaxNonPortableClusterSize)
    throw Error(Code::internal, "cluster_row: a plan of " + std::to_string(plan.cluster_size) +
                                    " blocks a cluster (2 to " + std::to_string(kMaxNonPortableClusterSize) + ")");
  LaunchShape shape{dim3(1), BLOCK, plan.cluster_size, sizeof(Vec<TX, VEC>) * ITEMS * BLOCK};
  const int resident = resident_clusters(kernel, shape);
  if (resident == 0)
    throw Error(Code::unsupported, "cluster_row: the device holds no cluster of " + std::to_string(plan.cluster_size) +
                                       " blocks of " + std::to_string(BLOCK) +
                                       " threads with their slices in shared memory");
  const std::int64_t most = 0x7fffffff / plan.cluster_size;
  const std::int64_t clusters = plan.cluster_grid > 0
                                    ? std::min({a.total_rows, plan.cluster_grid * std::int64_t{resident}, most})
                                    : std::min(a.total_rows, most);
  shape.grid = grid_for(clusters * plan.cluster_size);
  launch_kernel(kernel, shape, q, "ClusterRowImpl (shared slices)", &plan, a);
}

// The cluster configuration the plan names (the op's table, cluster_table_of). The grid
// is twice the clusters the device holds at once, each looping over its share of the rows.
// Timed alone on the H200 (bf16, 2026-12-03, bench/results/...-290102e-cluster-configs.txt),
// 512 x 8 on rows of 65536 / 131072 / 262144 columns: 89.1 / 87.4 / 78.1 % of the copy,
// against 89.4 / 76.0 / 74.1 % on cluster_count's grid (SMs x 4 blocks) and 87.9 / 85.6 /
// 80.6 % on the resident clusters alone; the residual add's 1024 x 4 was as fast on either
// grid of resident clusters (93.6 / 91.6 / 89.1 % at twice).
template <bool ALIGNED, class STEPS, class TX, class TW, class TY, int VEC>
void launch_clusters(const ForwardArgs& a, const Plan& plan, int sm_count, const Queue& q) {
  using Table = ClusterRowTableOf<cluster_table_of(
      STEPS::kResidual, std::is_same_v<typename STEPS::template Input<TX>, TX>, STEPS::kQuant)>;
  constexpr const RegisterConfig* kTable = Table::table;
  with_config<kTable, Table::size>(plan, names_cluster, [&](auto i) {
    constexpr RegisterConfig c = kTable[decltype(i)::value];
    if (plan.shared_slices) {
      if constexpr (kClusterStages<ALIGNED, STEPS, TX> && c.threads_per_block <= kSharedSliceMaxThreads)
        return launch_shared_slices<STEPS, TX, TW, TY, VEC, c.items, c.threads_per_block>(a, plan, q);
      throw Error(Code::internal,
                  "cluster_row: slices in shared memory serve the plain store of aligned rows in blocks of up to " +
                      std::to_string(kSharedSliceMaxThreads) + " threads, not this plan's " +
                      std::to_string(c.threads_per_block) + "-thread blocks or its op");
    }
    const auto kernel = ClusterRowImpl<ALIGNED, STEPS, TX, TW, TY, VEC, c.items, c.threads_per_block>;
    // The kernel trusts the plan's pieces to hold a block's slice (cluster_shape), and its
    // blocks to fit the row sums' mailbox (ClusterSum: kMaxNonPortableClusterSize ranks).
    const std::int64_t slice = (chunks_of(a.cols, VEC) + plan.cluster_size - 1) / plan.cluster_size;
    if (plan.pieces < 1 || (STEPS::kQuant && plan.pieces > 1) || slice > std::int64_t{plan.pieces} * c.capacity())
      throw Error(Code::internal, "cluster_row: a plan of " + std::to_string(plan.pieces) +
                                      " pieces cannot hold a block's slice of " + std::to_string(slice) + " chunks");
    if (plan.cluster_size < 2 || plan.cluster_size > kMaxNonPortableClusterSize)
      throw Error(Code::internal, "cluster_row: a plan of " + std::to_string(plan.cluster_size) +
                                      " blocks a cluster (2 to " + std::to_string(kMaxNonPortableClusterSize) + ")");
    ForwardArgs args = a;
    args.pieces = plan.pieces;
    const std::size_t slice_bytes =
        cluster_slice_bytes<ALIGNED, STEPS, TX, VEC, c.items, c.threads_per_block>(plan.cluster_size, plan.pieces);
    LaunchShape shape{dim3(1), c.threads_per_block, plan.cluster_size,
                      slice_bytes > 0 ? slice_bytes : dynamic_scale_bytes(a, 1)};
    int resident = resident_clusters(kernel, shape);
    // A non-portable size (a forced plan's) runs only where the device finds room for one.
    if (plan.cluster_size > kMaxClusterSize && resident == 0)
      throw Error(Code::unsupported, "cluster_row: the device holds no cluster of " +
                                         std::to_string(plan.cluster_size) + " blocks of " +
                                         std::to_string(c.threads_per_block) + " threads of this kernel");
    // The weight slice goes to shared memory after the rest where that costs no resident
    // cluster: the plain store's clusters of 2 and 3 blocks keep two blocks an SM with it
    // (a 16-bit weight), the staged rows of larger clusters would fall to one.
    const std::size_t weight_bytes =
        a.weight ? cluster_weight_bytes<STEPS, TW, VEC, c.items, c.threads_per_block>(plan.pieces) : 0;
    if (weight_bytes > 0 && resident > 0) {
      LaunchShape with_weight = shape;
      with_weight.shared_bytes = shape.shared_bytes + weight_bytes;
      const int resident_with = resident_clusters(kernel, with_weight);
      if (resident_with >= resident) {
        args.weight_at = static_cast<std::int64_t>(shape.shared_bytes);
        shape = with_weight;
        resident = resident_with;
      }
    }
    // Plan::cluster_grid, where a benchmark asks for another grid: multiples of the resident
    // clusters, or one a row (the hardware then starts each cluster as another retires).
    const std::int64_t most = 0x7fffffff / plan.cluster_size;
    const std::int64_t waves = plan.cluster_grid > 0 ? plan.cluster_grid : 2;
    const std::int64_t clusters = plan.cluster_grid == kClusterPerRow ? std::min(a.total_rows, most)
                                  : resident > 0
                                      ? std::min({a.total_rows, waves * resident, most})
                                      : cluster_count(a.total_rows, c.threads_per_block, plan.cluster_size, sm_count);
    shape.grid = grid_for(clusters * plan.cluster_size);
    launch_kernel(kernel, shape, q, "ClusterRowImpl", &plan, args);
  });
}

template <bool ALIGNED, class STEPS, class TX, class TW, class TY>
void launch_typed(const ForwardProblem& p, const Plan& plan, int sm_count, const Queue& q) {
  constexpr int kVec = 16 / sizeof(TX);
  const ForwardArgs a = make_args(p);
  // The kernels take one max and one scale a chunk (16 bytes of the row: x's, or r_out's with
  // the residual add): a group is whole chunks.
  if (a.dynamic && a.groups > 1 && a.group_size % kVec != 0)
    throw Error(Code::unsupported, "group_size: on CUDA a group is a multiple of " + std::to_string(kVec) +
                                       " columns with " + (p.residual ? "a residual of " : "x of ") +
                                       dtype_name(StorageOf<TX>::value) + " (16 bytes of the row), got " +
                                       std::to_string(a.group_size));
  // The kernels find a chunk's group by a 32-bit division (forward_steps.cuh, group_of).
  if (a.dynamic && a.groups > 1 && a.cols > 0xffffffffll)
    throw Error(Code::unsupported, "group_size: per-group scales on CUDA take rows of fewer than 2^32 columns, got " +
                                       std::to_string(a.cols));
  switch (plan.strategy) {
    case Strategy::warp_rows:
      return launch_register_rows<ALIGNED, STEPS, TX, TW, TY, kVec, kWarpRowsConfigs, kNumWarpRowsConfigs>(a, plan, q);
    case Strategy::block_row:
      return launch_register_rows<ALIGNED, STEPS, TX, TW, TY, kVec, block_row_configs(STEPS::kQuant),
                                  kNumBlockRowConfigs>(a, plan, q, sm_count, p.split_few_rows);
    case Strategy::long_row:
      // Lane groups: one pass fewer over the row, and no table of maxima.
      if constexpr (ALIGNED && STEPS::kQuant)
        if (lane_groups(a, kVec)) {
          launch_kernel(LongRowImpl<ALIGNED, STEPS, TX, TW, TY, kVec, kLongRowThreads, true>,
                        {grid_for(a.total_rows), kLongRowThreads, 0, 0}, q, "LongRowImpl", &plan, a);
          return;
        }
      launch_kernel(LongRowImpl<ALIGNED, STEPS, TX, TW, TY, kVec, kLongRowThreads>,
                    {grid_for(a.total_rows), kLongRowThreads, 0, dynamic_scale_bytes(a, 1)}, q, "LongRowImpl", &plan,
                    a);
      return;
    case Strategy::cluster_row:
      return launch_clusters<ALIGNED, STEPS, TX, TW, TY, kVec>(a, plan, sm_count, q);
    case Strategy::automatic:
      break;
  }
  throw Error(Code::internal, "plan without a strategy");
}

// Chooses the (weight, output) types for a row of TX among the supported combinations, for
// the kernels that take STEPS (ForwardSteps) and load whole chunks or not (kAligned, as the
// plan says: with_alignment). The weight and output follow x's dtype (STEPS::Input: TX, or
// 16-bit x of an f32 row). A quantised output is one byte an element (f8e4m3 or i8, told
// apart at run time).
template <class TX, class STEPS, bool kAligned>
void launch_forward(const ForwardProblem& p, const Plan& plan, int sm_count, const Queue& q) {
  using TI = typename STEPS::template Input<TX>;
  [[maybe_unused]] const bool w_as_x = !p.weight || p.w_dtype == StorageOf<TI>::value;
  if constexpr (STEPS::kQuant) {
    if (w_as_x) return launch_typed<kAligned, STEPS, TX, TI, unsigned char>(p, plan, sm_count, q);
    if constexpr (!std::is_same<TI, float>::value)
      launch_typed<kAligned, STEPS, TX, float, unsigned char>(p, plan, sm_count, q);
  } else if constexpr (std::is_same<TI, float>::value) {
    launch_typed<kAligned, STEPS, float, float, float>(p, plan, sm_count, q);
  } else {
    if (w_as_x) return launch_typed<kAligned, STEPS, TX, TI, TI>(p, plan, sm_count, q);
    if (p.y_dtype == StorageOf<TI>::value) return launch_typed<kAligned, STEPS, TX, float, TI>(p, plan, sm_count, q);
    launch_typed<kAligned, STEPS, TX, float, float>(p, plan, sm_count, q);
  }
}

}  // namespace rmsnorm::detail::cuda
