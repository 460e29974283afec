// Launchers: turn a validated problem and its plan into one kernel launch. Included by one
// translation unit per input dtype (forward_f32.cu, forward_f16.cu, forward_bf16.cu), so the
// instantiations compile in parallel.
#pragma once

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

inline ForwardArgs make_args(const ForwardProblem& p, const GivenSums& given) {
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
  a.inv_cols = static_cast<float>(1.0 / static_cast<double>(given.sums ? given.full_cols : p.cols));
  a.weight_offset = static_cast<float>(p.weight_offset);
  a.llama = p.cast == Cast::llama;
  a.row_sums = given.sums;
  return a;
}

// Grids stay within the hardware's limit; the kernels loop over any remaining rows.
inline unsigned grid_for(std::int64_t work_items) {
  constexpr std::int64_t kMaxGrid = 0x7fffffff;
  return static_cast<unsigned>(work_items < kMaxGrid ? work_items : kMaxGrid);
}

// The register configuration the plan names among a compile-time table: its instantiation.
template <bool ALIGNED, class TX, class TW, class TY, int VEC, const RegisterConfig* TABLE, int N>
void launch_register_rows(const ForwardArgs& a, const Plan& plan, const Queue& q) {
  with_config<TABLE, N>(plan, names_rows, [&](auto i) {
    constexpr RegisterConfig c = TABLE[decltype(i)::value];
    constexpr int kRowsPerBlock = c.threads_per_block / c.threads_per_row;
    const std::int64_t blocks = (a.total_rows + kRowsPerBlock - 1) / kRowsPerBlock;
    launch_kernel(RegisterRowsImpl<ALIGNED, TX, TW, TY, VEC, c.threads_per_row, c.items, c.threads_per_block>,
                  {grid_for(blocks), c.threads_per_block}, q, "RegisterRowsImpl", &plan, a);
  });
}

// The cluster configuration the plan names (kClusterRowConfigs).
template <bool ALIGNED, class TX, class TW, class TY, int VEC>
void launch_clusters(const ForwardArgs& a, const Plan& plan, int sm_count, const Queue& q) {
  with_config<kClusterRowConfigs, kNumClusterRowConfigs>(plan, names_cluster, [&](auto i) {
    constexpr RegisterConfig c = kClusterRowConfigs[decltype(i)::value];
    const std::int64_t clusters = cluster_count(a.total_rows, c.threads_per_block, plan.cluster_size, sm_count);
    launch_kernel(ClusterRowImpl<ALIGNED, TX, TW, TY, VEC, c.items, c.threads_per_block>,
                  {grid_for(clusters * plan.cluster_size), c.threads_per_block, plan.cluster_size}, q, "ClusterRowImpl",
                  &plan, a);
  });
}

template <bool ALIGNED, class TX, class TW, class TY>
void launch_typed(const ForwardProblem& p, const Plan& plan, int sm_count, const Queue& q, const GivenSums& given) {
  constexpr int kVec = 16 / sizeof(TX);
  const ForwardArgs a = make_args(p, given);
  switch (plan.strategy) {
    case Strategy::warp_rows:
      return launch_register_rows<ALIGNED, TX, TW, TY, kVec, kWarpRowsConfigs, kNumWarpRowsConfigs>(a, plan, q);
    case Strategy::block_row:
      return launch_register_rows<ALIGNED, TX, TW, TY, kVec, kBlockRowConfigs, kNumBlockRowConfigs>(a, plan, q);
    case Strategy::long_row:
      launch_kernel(LongRowImpl<ALIGNED, TX, TW, TY, kVec, kLongRowThreads>, {grid_for(a.total_rows), kLongRowThreads},
                    q, "LongRowImpl", &plan, a);
      return;
    case Strategy::cluster_row:
      return launch_clusters<ALIGNED, TX, TW, TY, kVec>(a, plan, sm_count, q);
    case Strategy::automatic:
      break;
  }
  throw Error(Code::internal, "plan without a strategy");
}

// Calls f with whether the plan loads whole chunks (Plan::load_width) as a compile-time
// constant: every kernel has an aligned and an unaligned instantiation (load_chunk).
template <class F>
decltype(auto) with_alignment(const Plan& plan, F&& f) {
  if (plan.load_width == plan.vector_width) return f(std::true_type{});
  return f(std::false_type{});
}

// Chooses the (weight, output) types for input type TX among the supported combinations.
// `given`: the rows' sums of squares when they come from outside (forward_from_sums).
template <class TX>
void launch_forward(const ForwardProblem& p, const Plan& plan, int sm_count, const Queue& q, const GivenSums& given) {
  with_alignment(plan, [&](auto aligned) {
    constexpr bool kAligned = decltype(aligned)::value;
    if constexpr (std::is_same<TX, float>::value) {
      launch_typed<kAligned, float, float, float>(p, plan, sm_count, q, given);
    } else {
      if (!p.weight || p.w_dtype == StorageOf<TX>::value)
        return launch_typed<kAligned, TX, TX, TX>(p, plan, sm_count, q, given);
      if (p.y_dtype == StorageOf<TX>::value) return launch_typed<kAligned, TX, float, TX>(p, plan, sm_count, q, given);
      launch_typed<kAligned, TX, float, float>(p, plan, sm_count, q, given);
    }
  });
}

}  // namespace rmsnorm::detail::cuda
