// `bench --config TxI` (CUDA): the plan of one register configuration of the library's
// tables (src/kernel_configs.h) in place of the planner's choice, so that configurations
// can be timed against each other. The configuration must be instantiated and hold a row of
// `cols` elements in 16-byte chunks; otherwise Error(unsupported), which the benchmark
// reports as n/a.
#pragma once

#include <cstdint>
#include <string>

#include "kernel_configs.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

// "TxI", as --config spells it.
inline std::string config_name(int threads, int items) { return std::to_string(threads) + "x" + std::to_string(items); }

// How a benchmark row names a forced plan: "block_row 256x4", "cluster_row 2048x8 grid 1x"
// (--grid: 1 x the resident clusters), "... grid rows" (a cluster a row).
inline std::string forced_name(const Plan& plan) {
  std::string name =
      std::string(strategy_name(plan.strategy)) + " " + config_name(plan.threads_per_row, plan.items_per_thread);
  if (plan.shared_slices) name += " shared";
  if (plan.cluster_grid == kClusterPerRow) name += " grid rows";
  if (plan.cluster_grid > 0) name += " grid " + std::to_string(plan.cluster_grid) + "x";
  return name;
}

// `plan` is the planner's (its vector width is kept); the tables are the op's warp_rows,
// block_row and cluster_row configurations. With `cluster` (--strategy cluster_row) TxI
// names a cluster configuration, T threads a block, and the row is split over as many
// blocks as it needs (sm_90, at most max_blocks: kMaxClusterSize, or up to 16 with
// --max-cluster), in up to max_pieces pieces a block beyond that (the op's, as the planner
// takes them); otherwise a warp_rows or block_row one.
template <int NW, int NB, int NC>
Plan forced_config(Plan plan, int threads, int items, std::int64_t cols, const detail::RegisterConfig (&warp_table)[NW],
                   const detail::RegisterConfig (&block_table)[NB], const detail::RegisterConfig (&cluster_table)[NC],
                   bool cluster, int cc_major, int max_pieces, int max_blocks = detail::kMaxClusterSize) {
  const std::string name = config_name(threads, items);
  const std::int64_t vectors = (cols + plan.vector_width - 1) / plan.vector_width;
  if (cluster) {
    const detail::RegisterConfig* found = nullptr;
    for (const auto& c : cluster_table)
      if (c.threads_per_block == threads && c.items == items) found = &c;
    if (!found) throw Error(Code::unsupported, "--config " + name + " is not in the library's cluster table");
    if (cc_major < 9) throw Error(Code::unsupported, "--config " + name + ": clusters need an sm_90 device");
    const detail::ClusterShape shape = detail::cluster_shape(vectors, found->capacity(), max_pieces, max_blocks);
    if (!shape.fits(max_pieces, max_blocks))
      throw Error(Code::unsupported, "--config " + name + " cannot hold a row of " + std::to_string(cols) +
                                         " elements in " + std::to_string(max_blocks) + " blocks of " +
                                         std::to_string(max_pieces) + " pieces");
    plan.strategy = Strategy::cluster_row;
    plan.threads_per_row = found->threads_per_block * static_cast<int>(shape.blocks);
    plan.items_per_thread = found->items;
    plan.threads_per_block = found->threads_per_block;
    plan.cluster_size = static_cast<int>(shape.blocks);
    plan.pieces = static_cast<int>(shape.pieces);
    return plan;
  }
  const auto is = [&](const detail::RegisterConfig& c) { return c.threads_per_row == threads && c.items == items; };
  const detail::RegisterConfig* found = nullptr;
  Strategy s = Strategy::warp_rows;
  for (const auto& c : warp_table)
    if (is(c)) found = &c;
  if (!found) {
    s = Strategy::block_row;
    for (const auto& c : block_table)
      if (is(c)) found = &c;
  }
  if (!found) throw Error(Code::unsupported, "--config " + name + " is not in the library's tables");
  if (found->capacity() < vectors)
    throw Error(Code::unsupported, "--config " + name + " cannot hold a row of " + std::to_string(cols) +
                                       " elements in chunks of " + std::to_string(plan.vector_width));
  plan.strategy = s;
  plan.threads_per_row = found->threads_per_row;
  plan.items_per_thread = found->items;
  plan.threads_per_block = found->threads_per_block;
  plan.cluster_size = 1;
  plan.pieces = 1;
  return plan;
}

}  // namespace rmsnorm::cli
