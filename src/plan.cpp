// The strategy choice: one small function of (cols, dtype). It never looks at the number
// of rows, the strides or the alignment, so the reduction order of a row, and therefore its
// bits, are the same whether it is normalised alone (decode), inside a batch (prefill) or
// inside any view (layout invariance). Alignment only decides how the chunks are loaded
// (Plan::load_width).
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernel_configs.h"
#include "problem.h"

namespace rmsnorm::detail {
namespace {

bool aligned(const void* p, std::size_t bytes) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// One array a kernel accesses per row: base pointer, element type, strides (elements).
struct Access {
  const void* ptr;
  DType dtype;
  std::int64_t row_stride, batch_stride;
};

// A row is summed in chunks of 16 bytes of x (chunk_width elements) whatever its layout.
// Loading a chunk as one 16-byte vector needs every row start 16-byte aligned in every
// array (x, y, the weight, dy, dx) and cols a multiple of the chunk; anything less loads
// the same chunks an element at a time (load_width 1), same order, same bits.
int chunk_width(DType x_dtype) { return static_cast<int>(16 / dtype_size(x_dtype)); }
int load_width(DType x_dtype, std::int64_t cols, std::initializer_list<Access> arrays) {
  const int full = chunk_width(x_dtype);
  if (cols % full != 0) return 1;
  for (const Access& a : arrays) {
    const std::size_t chunk = std::min<std::size_t>(16, full * dtype_size(a.dtype));
    if (!aligned(a.ptr, chunk) || a.row_stride % full != 0 || a.batch_stride % full != 0) return 1;
  }
  return full;
}

// The smallest capacity that holds the row; the first listed among equal capacities.
template <int N>
const RegisterConfig* first_fit(const RegisterConfig (&table)[N], std::int64_t vectors) {
  const RegisterConfig* best = nullptr;
  for (const RegisterConfig& c : table)
    if (vectors <= c.capacity() && (!best || c.capacity() < best->capacity())) best = &c;
  return best;
}

Plan from_config(Strategy s, int vw, const RegisterConfig& c) {
  return Plan{s, vw, c.threads_per_row, c.items, c.threads_per_block};
}

// long_row: any row, a block of kLongRowThreads streaming it.
Plan long_row_plan(DType x_dtype) {
  return Plan{Strategy::long_row, chunk_width(x_dtype), kLongRowThreads, 0, kLongRowThreads};
}

Plan with_load_width(Plan p, int lw) {
  p.load_width = lw;
  return p;
}

// The choice itself, from the row's chunk count: the smallest warp configuration that
// holds the row, else the smallest block configuration, else the first cluster
// configuration (sm_90, a cluster of at most kMaxClusterSize blocks), else streaming.
// Forced strategies are honoured when they can serve. The choice is made at the chunk
// width; the load width (alignment) is attached afterwards and changes nothing else.
// A cluster row beyond kMaxClusterSize blocks' registers takes up to max_pieces pieces a
// block (cluster_shape: 1 for the ops whose cluster rows hold one). Clusters of
// kWideClusterBlocks blocks or more take the table's wide_entry (of the same capacity).
template <int NW, int NB, int NC>
Plan choose(DType x_dtype, std::int64_t cols, Strategy requested, int cc_major, const RegisterConfig (&warp_table)[NW],
            const RegisterConfig (&block_table)[NB], const RegisterConfig (&cluster_table)[NC], int max_pieces,
            int wide_entry) {
  const int vw = chunk_width(x_dtype);
  const std::int64_t vectors = (cols + vw - 1) / vw;
  const Plan long_row = long_row_plan(x_dtype);
  const RegisterConfig* warp = first_fit(warp_table, vectors);
  const RegisterConfig* block = first_fit(block_table, vectors);
  const ClusterShape shape = cluster_shape(vectors, cluster_table[0].capacity(), max_pieces);
  const RegisterConfig& cluster_config = cluster_table[shape.blocks >= kWideClusterBlocks ? wide_entry : 0];
  const bool cluster_ok = cc_major >= 9 && shape.fits(max_pieces);
  const Plan cluster{Strategy::cluster_row,
                     vw,
                     cluster_config.threads_per_row * static_cast<int>(shape.blocks),
                     cluster_config.items,
                     cluster_config.threads_per_block,
                     static_cast<int>(shape.blocks),
                     static_cast<int>(shape.pieces)};
  const auto refuse = [&](const char* name, int cap) {
    throw Error(Code::unsupported, std::string("strategy: ") + name + " cannot serve this view: a row of " +
                                       std::to_string(cols) + " elements (" + std::to_string(vectors) +
                                       " 16-byte chunks) exceeds its " + std::to_string(cap) + "-chunk capacity");
  };
  switch (requested) {
    case Strategy::warp_rows:
      if (!warp) refuse("warp_rows", warp_table[NW - 1].capacity());
      return from_config(Strategy::warp_rows, vw, *warp);
    case Strategy::block_row:
      if (!block) refuse("block_row", block_table[NB - 1].capacity());
      return from_config(Strategy::block_row, vw, *block);
    case Strategy::long_row:
      return long_row;
    case Strategy::cluster_row:
      if (!cluster_ok) {
        if (cc_major < 9) throw Error(Code::unsupported, "strategy: cluster_row needs an sm_90 device or newer");
        refuse("cluster_row", kMaxClusterSize * cluster_config.capacity() * max_pieces);
      }
      return cluster;
    case Strategy::automatic:
      break;
  }
  if (warp) return from_config(Strategy::warp_rows, vw, *warp);
  if (block) return from_config(Strategy::block_row, vw, *block);
  if (cluster_ok) return cluster;
  return long_row;
}

}  // namespace

Plan plan_problem(const ForwardProblem& p, Strategy requested, int cc_major) {
  // The row the norm reads: x's, or r_out's with the residual add (f32 with 16-bit x: an f32
  // row's plan, x read half a chunk's bytes at a time).
  const DType row = p.residual ? p.r_dtype : p.x_dtype;
  int lw = load_width(row, p.cols,
                      {{p.x, p.x_dtype, p.x_row_stride, p.x_batch_stride},
                       {p.y, p.y_dtype, p.y_row_stride, p.y_batch_stride},
                       {p.weight, p.w_dtype, 0, 0},
                       {p.residual, p.r_dtype, p.r_row_stride, p.r_batch_stride},
                       {p.residual_out, p.r_dtype, p.r_out_row_stride, p.r_out_batch_stride}});
  // The ranks' partials share x's strides but not its base address: one of them misaligned
  // loads every array an element at a time (same chunks, same order, same bits).
  for (int k = 1; k < p.ranks; ++k)
    lw = std::min(lw, load_width(row, p.cols, {{p.rank_x[k], p.x_dtype, p.x_row_stride, p.x_batch_stride}}));
  // Rows beyond one block go to a cluster on sm_90: on the H100 (2026-11-25, bf16,
  // bench/results/), once its registers fell from 96 to 62 a thread (two blocks an SM),
  // cluster_row moved 2.85 / 2.44 / 2.31 TB/s on rows of 65536 / 131072 / 262144 elements,
  // long_row 2.08 / 1.74 / 1.67 (long_row reads the row twice, and rows that many no longer
  // stay in L2 between the reads). long_row remains for older GPUs and unaligned rows.
  // The quantised store's block rows have their own table, the residual add its cluster rows
  // (kernel_configs.h). Rows beyond a cluster's registers keep pieces of their slices in
  // shared memory (cluster_shape), except the quantised store's.
  const ClusterTable table = cluster_table_of(p.residual != nullptr, p.r_dtype == p.x_dtype, p.quantize);
  Plan plan = with_cluster_row_configs(table, [&](const auto& t) {
    return choose(row, p.cols, requested, cc_major, kWarpRowsConfigs, block_row_configs(p.quantize), t,
                  forward_cluster_pieces(p.quantize), wide_cluster_entry(table));
  });
  // The plain store's rows of one piece on clusters of kSharedSliceBlocks blocks or more:
  // the table's kSharedSliceEntry (kernel_configs.h), whose aligned rows keep their slices
  // in shared memory, as the planner chooses them or cluster_row is asked for (the same
  // plan either way). Unaligned rows take the same blocks in registers: the block's shape
  // orders the row's sum, so a row gives the same bits at any alignment.
  if (requested != Strategy::cluster_row && requested != Strategy::automatic) return with_load_width(plan, lw);
  if (table == ClusterTable::plain && plan.strategy == Strategy::cluster_row && plan.pieces == 1 &&
      plan.cluster_size >= kSharedSliceBlocks) {
    const RegisterConfig& c = kPlainClusterRowConfigs[kSharedSliceEntry];
    plan.threads_per_row = c.threads_per_row * plan.cluster_size;
    plan.items_per_thread = c.items;
    plan.threads_per_block = c.threads_per_block;
    plan.shared_slices = lw == plan.vector_width;
  }
  // Except the quantised store: its rows beyond one block stream (long_row) unless
  // cluster_row is asked for. Timed side by side on the H200 (bf16, 2026-12-03, tree a18ed4a,
  // bench/results/2026-12-03-h200-a18ed4a-explore-quant-strategies.txt) on 4096 x 65536 ..
  // 1024 x 262144, long_row against cluster_row in % of the copy: static fp8 52-66 against
  // 40-46, per-row fp8 34-43 against 23-27, group-128 fp8 27-32 against 16-19, per-row int8
  // 31-38 against 22-26. A cluster row's store is issue-bound (64 registers a thread, 8
  // vectors a lane, spilling), and the dynamic scales add two cluster barriers and reads of
  // every block's maxima through distributed shared memory; long_row's 512 threads each hold
  // one vector at a time, and its later reads of a row mostly hit L2.
  if (p.quantize && requested == Strategy::automatic && plan.strategy == Strategy::cluster_row)
    plan = long_row_plan(row);
  return with_load_width(plan, lw);
}

Plan plan_backward(const BackwardProblem& p, Strategy requested, int cc_major) {
  // x is the row (r_out for the residual add's backward, whose gradients dy and dx may be
  // 16-bit with an f32 r_out: an f32 row's plan).
  const int lw = load_width(p.x_dtype, p.cols,
                            {{p.x, p.x_dtype, p.x_row_stride, p.x_batch_stride},
                             {p.dy, p.dx_dtype, p.dy_row_stride, p.dy_batch_stride},
                             {p.dx, p.dx_dtype, p.dx_row_stride, p.dx_batch_stride},
                             {p.weight, p.w_dtype, 0, 0},
                             {p.dr_out, p.x_dtype, p.dr_out_row_stride, p.dr_out_batch_stride},
                             {p.dr, p.x_dtype, p.dr_row_stride, p.dr_batch_stride}});
  // The backward's long_row re-reads and rewrites its fp32 dw partial row for every row
  // (8 extra bytes an element); cluster_row keeps it in registers, so it is the default for
  // long rows: on the H100 (bf16, 2026-11-25) 2.76 / 2.61 TB/s on rows of 32768 / 65536
  // elements against long_row's 0.95 / 0.91.
  const auto pick = [&](std::int64_t cols, Strategy s) {
    return choose(p.x_dtype, cols, s, cc_major, kBackwardWarpRowsConfigs, kBackwardBlockRowConfigs,
                  kBackwardClusterRowConfigs, kBackwardClusterPieces, 0);
  };
  const Plan plan = pick(p.cols, requested);
  // Rows beyond the largest cluster's two pieces (262144 16-bit columns), with dw wanted and
  // rstd saved: column shards of equal width (whole chunks), each a cluster row whose rows'
  // dot products are given (computed first over the whole row, unless the sharded rows' apply
  // step gives them; their kernel takes dy of x's dtype). The plan is a shard's: a cluster row
  // holding fewer vectors than the row has, which the CUDA launcher splits (cuda_backward).
  // long_row moves 18 bytes an element of a 16-bit row there (x and dy twice, the partial dw
  // row read and rewritten every row); the shards 10 (x and dy for the dots, then x, dy and
  // dx). Without dw long_row moves those 10 bytes too.
  const bool dots_summable = p.row_dots != nullptr || p.x_dtype == p.dx_dtype;
  if (requested == Strategy::automatic && plan.strategy == Strategy::long_row && cc_major >= 9 && p.dw && p.rstd &&
      dots_summable) {
    const std::int64_t most =
        std::int64_t{kMaxClusterSize} * kBackwardClusterPieces * kBackwardClusterRowConfigs[0].capacity();
    return with_load_width(pick(column_shard_cols(p.cols, chunk_width(p.x_dtype), most), Strategy::cluster_row), lw);
  }
  return with_load_width(plan, lw);
}

}  // namespace rmsnorm::detail
