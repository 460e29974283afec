// Launch configurations of the register-resident kernels, shared by the planner
// (plain C++, testable without a GPU) and the CUDA dispatch that instantiates them.
//
// Capacity in 16-byte vectors per row = threads_per_row * items. The planner takes the
// smallest capacity that holds the row (the first listed among equals). Why these values:
//  - small rows (QK-norm, head_dim 64..256) give each row a few lanes of a warp and put
//    many rows in a 128-thread block, so every lane issues a full 16-byte access and a
//    block still moves 2 KB per step;
//  - longer rows get a block sized to them, 4 vectors (64 bytes) a lane in flight before
//    the reduction needs them, 8 (or 6) where 4 would leave an SM fewer than 1024 threads
//    (rows of 1536 and of over 2048 vectors); the raw row costs 4 registers per vector;
//  - beyond 4096 vectors (32768 16-bit elements) a row no longer fits one block's registers
//    at full width: it is split over a cluster (sm_90) or streamed (long_row).
// Each choice was timed against the alternatives on the H100 (bench/results/README.md).
#pragma once

#include <type_traits>
#include <utility>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail {

struct RegisterConfig {
  int threads_per_row;
  int items;  // vectors per lane
  int threads_per_block;
  constexpr int capacity() const { return threads_per_row * items; }
};

// Sub-warp / warp rows: threads_per_row <= 32, several rows per block. QK-norm rows of 64
// and 128 16-bit elements take four lanes of two and four vectors: on the H100 (262144
// rows, 2026-11-25) 2.78 / 2.88 TB/s bf16 against 2.70 / 2.82 with one vector a lane in two
// and four times the lanes (2 x 4 on 64: 2.58; 8 x 2 on 128: 2.87): more bytes in flight
// per lane for the same rows in flight.
inline constexpr RegisterConfig kWarpRowsConfigs[] = {
    {4, 1, 128}, {4, 2, 128}, {8, 1, 128}, {4, 4, 128}, {16, 1, 128}, {32, 1, 128}, {32, 2, 128}, {32, 4, 128},
};
// A row per block, the block sized to the row so that few lanes idle (128 lanes of two
// vectors for the shortest rows). On the H100 (bf16, 16384 rows, 2026-11-25, bench/results/),
// four vectors a lane in half the threads beat two at every length from 3072 to 8192
// elements (2.90-2.96 against 2.55-2.85 TB/s for 6144-8192), and a block that left a third
// of its lanes empty lost 15-30 % (512 x 2 on 5120-element rows: 2.12 TB/s). The planner
// takes the smallest capacity that holds the row, the first listed among equals.
//
// What decides a configuration is the bytes an SM has in flight: the threads it holds at
// once times the vectors a lane loads before the reduction. At 64 registers a thread an SM
// holds 1024 threads in whole blocks, so a 384-thread block runs two (768 threads) and
// every block of 576 to 1024 threads runs alone. On the H200 (2026-12-03, 16384 rows, bf16,
// the kernel timed alone beside the copy, bench/results/2026-12-03-h200-ece5212-wide-configs.txt)
// those blocks of four vectors a lane moved 79.6 % of the copy on 24576 elements (768 x 4)
// and 87.6 % on 32768 (1024 x 4); eight vectors a lane in half the threads, two blocks an
// SM, 97.2 % (384 x 8) and 96.6 % (512 x 8), 512 x 6 97.7 % on 24576; the residual add
// 97.3-97.8 % against 93.7 % on 32768, and the static fp8 store 73-78 % against 51-56 %. On
// 12288 elements 192 x 8 (five blocks an SM) moved 96.4 % against 91.5 % for 384 x 4. Where
// four vectors a lane already fill an SM (512 x 4, two blocks of 512), they stay: 98.4 %
// against 96.6 % for 256 x 8 on 16384 elements.
inline constexpr RegisterConfig kBlockRowConfigs[] = {
    {128, 2, 128}, {96, 4, 96},   {128, 4, 128}, {160, 4, 160}, {192, 4, 192}, {224, 4, 224}, {256, 4, 256},
    {320, 4, 320}, {192, 8, 192}, {448, 4, 448}, {512, 4, 512}, {288, 8, 288}, {320, 8, 320}, {352, 8, 352},
    {512, 6, 512}, {416, 8, 416}, {448, 8, 448}, {480, 8, 480}, {512, 8, 512},
};
// The quantised store issues about twice the plain store's instructions a value (docs/
// performance.md 4(j)), so its blocks gain from more loads in flight where the plain
// store's do not: on 16384 elements 256 x 8 moved the static fp8 store's bytes at 79.3 % of
// the copy against 64.5 % for 512 x 4 (per-row fp8 55.5 against 51.0 %), in the run above.
// Its table is the plain one with those two capacities at eight vectors a lane (the same
// capacities, so the same rows are block rows).
inline constexpr RegisterConfig kQuantBlockRowConfigs[] = {
    {128, 2, 128}, {96, 4, 96},   {128, 4, 128}, {160, 4, 160}, {192, 4, 192}, {224, 4, 224}, {256, 4, 256},
    {320, 4, 320}, {192, 8, 192}, {224, 8, 224}, {256, 8, 256}, {288, 8, 288}, {320, 8, 320}, {352, 8, 352},
    {512, 6, 512}, {416, 8, 416}, {448, 8, 448}, {480, 8, 480}, {512, 8, 512},
};
inline constexpr int kNumWarpRowsConfigs = sizeof(kWarpRowsConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumBlockRowConfigs = sizeof(kBlockRowConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumQuantBlockRowConfigs = sizeof(kQuantBlockRowConfigs) / sizeof(RegisterConfig);
static_assert(kNumQuantBlockRowConfigs == kNumBlockRowConfigs,
              "the two block-row tables differ only in configurations");
// The block-row table of a store, the quantised one's or the plain one's: the planner, the
// launcher and the bench's --config choose through this one function, so they cannot disagree.
using BlockRowTable = RegisterConfig[kNumBlockRowConfigs];
constexpr const BlockRowTable& block_row_configs(bool quantize) {
  return quantize ? kQuantBlockRowConfigs : kBlockRowConfigs;
}

// The backward holds two rows (x and dy) and a dw accumulator per element, about three
// times the forward's registers per vector: rows of up to 2048 vectors (16384 16-bit
// elements) in one block's registers; longer rows go to a cluster. (A 1024-thread block,
// capped at 64 registers a thread, spilled 124 bytes a thread in bf16 with two vectors a
// lane, so it is not offered.) Each block leaves a partial dw row for the finalisation to
// add up, so the block_row blocks are all 512 threads, shorter rows sharing one: the SMs'
// resident blocks then leave 132 to 264 partial rows. On the H100 (bf16, 16384 rows,
// 2026-11-25), 128-thread blocks left 1056 of them on 2048-element rows (17 MB written
// and read again, and a long finalisation): 2.15 TB/s, against 2.71 four rows a block.
// Among equal capacities two vectors a lane come first: at 64 registers a thread an SM
// holds two 512-thread blocks of them, where four vectors (about 110 registers) leave it
// one, 16 warps with too few loads in flight to cover the memory's latency (Nsight
// Compute: an instruction every 2.3 cycles a scheduler, a third of the stalls on global
// loads). On the H200 (bf16, 16384 rows, 2026-12-03, bench/results/...-a18ed4a-backward-
// configs.txt): 91.8 against 84.3 % of the copy (256x2 and 128x4, 4096 elements), 88.3
// against 87.1 % (512x2 and 256x4, 8192). (On the H100 in 2026-11 four vectors had won:
// 2.75 against 2.66 TB/s, 2.80 against 2.61.)
inline constexpr RegisterConfig kBackwardWarpRowsConfigs[] = {
    {4, 1, 128}, {8, 1, 128}, {16, 1, 128}, {32, 1, 128}, {32, 2, 128}, {32, 4, 128},
};
inline constexpr RegisterConfig kBackwardBlockRowConfigs[] = {
    {128, 2, 512}, {256, 2, 512}, {128, 4, 512}, {512, 2, 512}, {256, 4, 512}, {512, 4, 512},
};
inline constexpr int kNumBackwardWarpRowsConfigs = sizeof(kBackwardWarpRowsConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumBackwardBlockRowConfigs = sizeof(kBackwardBlockRowConfigs) / sizeof(RegisterConfig);

// cluster_row (sm_90): a row over a cluster of blocks, each holding its slice in
// registers: 8 vectors a lane forward (up to 4096 vectors, 32768 16-bit elements, a
// 512-thread block), 4 backward (x, dy and the dw sums: 2048 vectors a block). Clusters stay
// within the portable 8 blocks: 16-block clusters of these blocks failed to launch on the
// H100 (cudaErrorInvalidClusterSize) even with the non-portable size allowed. So a cluster
// holds rows of up to 32768 vectors forward (262144 16-bit elements), 16384 backward.
// The planner takes the first entry of a cluster table (the plain store's second on clusters
// of kWideClusterBlocks blocks or more, below); the others are there to be timed against it (`bench --strategy
// cluster_row --config TxI`, T threads a block). Backward, on the H100 (bf16, 2026-11-25, rows of 16384 / 32768 / 65536
// elements, each grid the clusters resident at once): 512x4 moved 2.82 / 2.76 / 2.60 TB/s; 256x4, two blocks an SM in
// clusters twice the size, 2.78 / 2.63 / 2.17; 512x2 (64 registers, two blocks an SM) lost too, 2.04 / 1.96 on 32768 /
// 65536 with the grids of the time.
inline constexpr RegisterConfig kClusterRowConfigs[] = {{512, 8, 512}};
// The plain store's: 512 x 8 first, 1024 x 4 and 256 x 8 timed against it since the
// row sums cross the cluster without a barrier (afac980), which took the residual add's
// 1024 x 4 from 88.5 to 93.3 % of the copy at 262144 columns: before it (290102e, below)
// 1024 x 4 moved the plain store at 76.0 / 70.9 / 66.6 % on 65536 / 131072 / 262144
// columns and 256 x 8 (four blocks an SM, clusters twice the size) at 86.9 / 78.6 % on
// 65536 / 131072, against 512 x 8's 89.1 / 87.4 / 78.1 %.
inline constexpr RegisterConfig kPlainClusterRowConfigs[] = {{512, 8, 512}, {1024, 4, 1024}, {256, 8, 256}};
// The planner's entry of a cluster table for clusters of kWideClusterBlocks blocks or more:
// the plain store's 1024 x 4 there. Timed on the H200 (bf16, 2026-12-05, tree b1aa570,
// bench/results/2026-12-05-h200-b1aa570-explore-cluster-rows.txt), each on the grid of twice
// the resident clusters, 1024 x 4 against 512 x 8 in % of the copy: 86.3 / 82.3 on 2048 x
// 131072 (4 blocks), 85.6 / 80.3 on 1024 x 262144 (8), 80.5 / 65.6 on 1024 x 524288 (8
// blocks of two pieces); on 4096 x 65536 (2 blocks) 512 x 8 stays ahead, 91.6 / 89.3. The
// other tables keep their first entry. Rows of one piece on kSharedSliceBlocks blocks or
// more take kSharedSliceEntry instead (below), so 1024 x 4 serves the rows in pieces.
inline constexpr int kPlainWideClusterEntry = 1;
inline constexpr int kWideClusterBlocks = 4;
// The plain store's aligned rows of one piece on clusters of kSharedSliceBlocks blocks or
// more keep each block's slice in shared memory (Plan::shared_slices), in the table's first
// entry (512 x 8: three blocks an SM with 42 registers a thread, where registers hold two).
// On the H100 (bf16, 2026-12-06, bench/results/...-h100-bc89bfd-compare.txt, against the
// slices in registers, % of the copy): 93.3 against 90.1 at 2048 x 131072 (4 blocks), 92.2
// against 92.0 at 1024 x 262144 (8), but 93.8 against 96.1 at 4096 x 65536 (2 blocks).
// Bare kernels there (tools/explore/cluster_smem_rows.cu) moved 2-7 % more than in registers.
// Only blocks of up to kSharedSliceMaxThreads threads have the instantiation (1024 x 4 in
// shared memory would cap a thread at 32 registers).
inline constexpr int kSharedSliceBlocks = 4;
inline constexpr int kSharedSliceEntry = 0;
inline constexpr int kSharedSliceMaxThreads = 512;
// The residual add's cluster rows: 1024 x 4, the same capacity (so the same cluster sizes).
// Timed alone on the H200 (bf16, 2026-12-03, bench/results/...-290102e-cluster-configs.txt),
// each on the grid of twice the resident clusters: 93.6 / 91.6 / 89.1 % of the copy on rows
// of 65536 / 131072 / 262144 columns, against 86.2 / 79.6 / 73.9 % for 512 x 8, which the
// add's second row (r) held at 100 registers a thread, one 512-thread block an SM.
inline constexpr RegisterConfig kAddClusterRowConfigs[] = {{1024, 4, 1024}};
// 512 x 2 (64 registers, two blocks an SM, each with its two staged rows: 64 KB) to be
// timed against 512 x 4 on the H200 since the block rows' two vectors a lane won there
// (91.8 against 84.3 % at 4096 columns, a18ed4a): 16384 columns take clusters of 2.
inline constexpr RegisterConfig kBackwardClusterRowConfigs[] = {{512, 4, 512}, {256, 4, 256}, {512, 2, 512}};
inline constexpr int kNumClusterRowConfigs = sizeof(kClusterRowConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumPlainClusterRowConfigs = sizeof(kPlainClusterRowConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumAddClusterRowConfigs = sizeof(kAddClusterRowConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumBackwardClusterRowConfigs = sizeof(kBackwardClusterRowConfigs) / sizeof(RegisterConfig);
static_assert(kAddClusterRowConfigs[0].capacity() == kClusterRowConfigs[0].capacity() &&
                  kPlainClusterRowConfigs[0].capacity() == kClusterRowConfigs[0].capacity(),
              "the planner's cluster configurations hold as much a block, so every op makes the same clusters");
static_assert(kPlainClusterRowConfigs[kSharedSliceEntry].capacity() == kPlainClusterRowConfigs[0].capacity() &&
                  kPlainClusterRowConfigs[kSharedSliceEntry].threads_per_block <= kSharedSliceMaxThreads,
              "the shared slices hold as much a block as the plain store's others, in an instantiated block size");
static_assert(kPlainClusterRowConfigs[kPlainWideClusterEntry].capacity() == kPlainClusterRowConfigs[0].capacity(),
              "the plain store's wide clusters hold as much a block as its others: the same cluster sizes");
// The forward's cluster table of an op: the plain store's (neither the residual add nor the
// quantised store); the residual add's for the add of a residual of x's dtype, with or
// without the ranks' sum (which must share it: y of the ranks' sum is the residual add's of
// the same r_out bit for bit, and the block's shape orders the sum of squares), without the
// quantised store (whose registers at 1024 threads were not measured; with an f32 residual
// and 16-bit x, 1024 x 4 spilled 24-28 bytes a thread, sm_90, nvcc 13.0); else the others'.
// The planner, the launcher and the bench's --config choose through it: f(table) with the
// op's table (an array reference: the tables differ in length), or, at compile time,
// ClusterRowTableOf.
enum class ClusterTable { plain, add, other };
constexpr ClusterTable cluster_table_of(bool residual, bool residual_is_x_dtype, bool quantize) {
  if (!residual && !quantize) return ClusterTable::plain;
  return residual && residual_is_x_dtype && !quantize ? ClusterTable::add : ClusterTable::other;
}
template <ClusterTable T>
struct ClusterRowTableOf {
  static constexpr const RegisterConfig* table = T == ClusterTable::plain ? kPlainClusterRowConfigs
                                                 : T == ClusterTable::add ? kAddClusterRowConfigs
                                                                          : kClusterRowConfigs;
  static constexpr int size = T == ClusterTable::plain ? kNumPlainClusterRowConfigs
                              : T == ClusterTable::add ? kNumAddClusterRowConfigs
                                                       : kNumClusterRowConfigs;
};
// The table's entry for clusters of kWideClusterBlocks blocks or more (the plain store's
// kPlainWideClusterEntry; the first entry elsewhere).
constexpr int wide_cluster_entry(ClusterTable t) { return t == ClusterTable::plain ? kPlainWideClusterEntry : 0; }
template <class F>
decltype(auto) with_cluster_row_configs(ClusterTable table, F&& f) {
  switch (table) {
    case ClusterTable::plain:
      return f(kPlainClusterRowConfigs);
    case ClusterTable::add:
      return f(kAddClusterRowConfigs);
    case ClusterTable::other:
      break;
  }
  return f(kClusterRowConfigs);
}
template <class F>
decltype(auto) with_cluster_row_configs(bool residual, bool residual_is_x_dtype, bool quantize, F&& f) {
  return with_cluster_row_configs(cluster_table_of(residual, residual_is_x_dtype, quantize), std::forward<F>(f));
}
inline constexpr int kMaxClusterSize = 8;
// A block row split over a cluster (Params::split_few_rows; RegisterRowsImpl's SPLIT): a row
// of a one-row block of 128, 256 or 512 lanes (bf16 rows of 4096, 8192 and 16384 columns)
// in blocks of kSplitBlockThreads, on batches of at most SMs / blocks rows (a cluster each).
// The excess of decode over the copy followed the bytes one row moves through its one SM
// (docs/performance.md); smaller blocks spread a row over more SMs, in clusters of up to 8.
// Other block rows (and unaligned rows, and the quantised store) are not split: fewer
// instantiations, and the same bits either way. A split row passes one cluster barrier,
// split around its first loads (none at the end): on the H200 (tree ff27b44's kernels, in a
// CUDA graph) that won where a row moves 16 KB of x or more (the residual add at 1 x 8192
// 1.70 against 1.95 us, 32 x 8192 2.19 against 2.35) and lost at 8 KB (1 x 4096 1.61
// against 1.49), so SplitFewRows::automatic splits block rows of kSplitAutoLanes lanes and
// more, and SplitFewRows::on the 128-lane ones too.
inline constexpr int kSplitBlockThreads = 64;
inline constexpr int kSplitAutoLanes = 256;
constexpr int split_blocks(const RegisterConfig& c) {
  const bool split = c.threads_per_row == c.threads_per_block &&
                     (c.threads_per_row == 128 || c.threads_per_row == 256 || c.threads_per_row == 512);
  return split ? c.threads_per_row / kSplitBlockThreads : 1;
}
// The blocks a row of `rows` in configuration c is launched in (1: the block row itself)
// under `mode`; sm_count 0 where no split may be launched (not sm_90).
constexpr int split_launch_blocks(const RegisterConfig& c, std::int64_t rows, int sm_count,
                                  SplitFewRows mode = SplitFewRows::automatic) {
  const int blocks = split_blocks(c);
  const bool wanted = mode == SplitFewRows::on || (mode == SplitFewRows::automatic && c.threads_per_row >= kSplitAutoLanes);
  return wanted && blocks > 1 && rows * blocks <= sm_count ? blocks : 1;
}
static_assert(512 / kSplitBlockThreads <= kMaxClusterSize, "split rows take portable clusters");
// sm_90 runs clusters of up to 16 blocks where a kernel allows the non-portable sizes
// (cudaFuncAttributeNonPortableClusterSizeAllowed) and the occupancy calculator finds room
// for one: QuACK's forward takes 16 blocks of 256 threads on rows of more than 131072
// 16-bit columns. The planner keeps to the portable 8; a forced plan may ask for up to 16
// (bench --max-cluster 16) to time them.
inline constexpr int kMaxNonPortableClusterSize = 16;
// The blocks of a cluster row of `vectors` chunks in a configuration of `capacity` chunks
// a block: as many as hold the row, and never fewer than two, since a cluster's row sums
// are stores into the other blocks' shared memory (st.async), which a cluster of one block
// cannot make. Only a forced cluster_row meets a row that one block holds (the cluster
// tables hold as much a block as the largest block row): it is split over two blocks.
constexpr std::int64_t cluster_blocks(std::int64_t vectors, int capacity) {
  const std::int64_t blocks = (vectors + capacity - 1) / capacity;
  return blocks < 2 ? 2 : blocks;
}
// A forward cluster row longer than kMaxClusterSize blocks' registers (beyond 262144 16-bit
// columns) keeps its slices in pieces of a block's register capacity: one in registers and
// the others in shared memory, so that the row is still read from memory once (where the
// streamed long_row reads it twice, the second time from memory too once rows of that length
// no longer stay in L2 between the reads). A piece of 16-byte chunks is 64 KB a block (512 x
// 8 and 1024 x 4 chunks), so three in shared memory (192 KB, one block an SM) hold rows of
// up to 1048576 16-bit or 524288 f32 columns. The quantised store keeps one piece (its shared
// memory holds group maxima); the backward two (kBackwardClusterPieces).
inline constexpr int kMaxClusterPieces = 4;
// The cluster of a row of `vectors` chunks in blocks of `capacity` chunks, up to
// `max_pieces` pieces a block: cluster_blocks' blocks in one piece where max_blocks
// (kMaxClusterSize unless a forced plan asks for more) blocks hold the row in registers,
// else max_blocks blocks of as many pieces as a block's slice needs. blocks > max_blocks or
// pieces > max_pieces: no cluster holds the row. The planner and the bench's --config take
// their clusters from here.
struct ClusterShape {
  std::int64_t blocks, pieces;
  constexpr bool fits(int max_pieces, int max_blocks = kMaxClusterSize) const {
    return blocks <= max_blocks && pieces <= max_pieces;
  }
};
constexpr ClusterShape cluster_shape(std::int64_t vectors, int capacity, int max_pieces,
                                     int max_blocks = kMaxClusterSize) {
  const std::int64_t per_cluster = std::int64_t{max_blocks} * capacity;
  if (vectors <= per_cluster || max_pieces <= 1) return {cluster_blocks(vectors, capacity), 1};
  return {max_blocks, (vectors + per_cluster - 1) / per_cluster};
}
// The most pieces a block of an op's cluster rows takes: the planner and the bench's
// --config choose through it.
constexpr int forward_cluster_pieces(bool quantize) { return quantize ? 1 : kMaxClusterPieces; }
// The backward's cluster rows in up to two pieces a block: rows of up to 262144 16-bit or
// 131072 f32 columns, x and dy read once (ClusterBackwardImpl's PIECES: piece 0 in registers,
// piece 1 in its stage buffer, with the lane's dw sums of both pieces in registers).
inline constexpr int kBackwardClusterPieces = 2;
// The width in columns of each column shard of a backward row too long for one cluster row
// (plan_backward plans a shard; the CUDA launcher cuts the row, backward_in_column_shards):
// the fewest shards of at most `held` chunks of `vw` columns, of equal width in whole chunks
// (the last may be narrower). One function for both, so that the launcher's shards are the
// ones the plan was made for.
constexpr std::int64_t column_shard_cols(std::int64_t cols, std::int64_t vw, std::int64_t held) {
  const std::int64_t vectors = (cols + vw - 1) / vw;
  const std::int64_t shards = (vectors + held - 1) / held;
  return (vectors + shards - 1) / shards * vw;
}

// Whether a plan names a configuration: register rows by their lanes a row and vectors a
// lane; clusters by their threads a block and vectors a lane (a cluster row's lanes are the
// block's times the cluster size).
inline bool names_rows(const Plan& p, const RegisterConfig& c) {
  return p.threads_per_row == c.threads_per_row && p.items_per_thread == c.items;
}
inline bool names_cluster(const Plan& p, const RegisterConfig& c) {
  return p.threads_per_block == c.threads_per_block && p.items_per_thread == c.items;
}

// Calls f(std::integral_constant<int, I>{}) for the first entry I of TABLE (N entries) that
// `names` says the plan names, so that f can instantiate that entry's kernel (TABLE[I] is a
// constant expression there), and returns what f returns; Error(internal) when none is.
template <const RegisterConfig* TABLE, int N, int I = 0, class F>
decltype(auto) with_config(const Plan& plan, bool (*names)(const Plan&, const RegisterConfig&), F&& f) {
  static_assert(I < N, "an empty configuration table");
  if (names(plan, TABLE[I])) return f(std::integral_constant<int, I>{});
  if constexpr (I + 1 < N)
    return with_config<TABLE, N, I + 1>(plan, names, std::forward<F>(f));
  else
    throw Error(Code::internal, "no configuration of its table matches the plan");
}

// An SM's threads, and the smallest block: the workspace holds at most sm_count * 2048 /
// 128 partial dw rows, whatever the plan.
inline constexpr int kMaxThreadsPerSm = 2048;
inline constexpr int kMinBlockThreads = 128;

// Threads an SM is sure to hold for a register kernel whose lanes hold `items` vectors: its
// launch bounds ask for at most 64 registers a thread up to two vectors (1024 threads), 128
// beyond (512). The backward's persistent grids are sized to this: each block leaves one
// partial dw row, so blocks beyond what the SMs hold at once would run as a second wave and
// add partial rows for the finalisation to read (sized for 2048 threads an SM, the 16384 x
// 2048 bf16 backward wrote and re-read 17 MB of them, 8 % of its traffic).
constexpr int resident_threads(int items) { return items <= 2 ? 1024 : 512; }

// The streaming kernel: a row per block of this many threads (512 leaves 128 registers
// per thread for four unrolled 16-byte loads in flight; at 1024 threads it spilled).
inline constexpr int kLongRowThreads = 512;

}  // namespace rmsnorm::detail
