// plan_forward: what the CUDA backend would launch. Available in every build, and it
// never touches the memory, so the views here point at made-up, well-separated addresses
// (x at 2^40, y at 2^44: 16-byte aligned, far apart for any shape used).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kernel_configs.h"
#include "problem.h"
#include "rmsnorm/rmsnorm.h"
#include "support.h"  // PrintTo of the enums

namespace rmsnorm {
namespace {

constexpr std::uintptr_t kX = std::uintptr_t{1} << 40, kY = std::uintptr_t{1} << 44;

struct Views {
  TensorView x, y;
};

// (batch, rows, cols) views of x and y, contiguous unless row_stride says otherwise,
// their base pointers `lead_x` / `lead_y` elements past a 16-byte boundary.
Views views(DType t, std::int64_t rows, std::int64_t cols, std::int64_t row_stride = -1, std::int64_t lead_x = 0,
            std::int64_t lead_y = 0, std::int64_t batch = 1) {
  if (row_stride < 0) row_stride = cols;
  const std::int64_t es = static_cast<std::int64_t>(dtype_size(t));
  auto at = [&](std::uintptr_t base, std::int64_t lead) {
    return reinterpret_cast<void*>(base + static_cast<std::uintptr_t>(lead * es));
  };
  return {TensorView::batched(at(kX, lead_x), t, Device::cpu(), batch, rows, cols, rows * row_stride, row_stride),
          TensorView::batched(at(kY, lead_y), t, Device::cpu(), batch, rows, cols, rows * row_stride, row_stride)};
}

Plan plan(const Views& v, Strategy s = Strategy::automatic) { return plan_forward(v.x, v.y, s); }

std::string show(const Plan& p) {
  return std::string(strategy_name(p.strategy)) + " vector_width=" + std::to_string(p.vector_width) +
         " threads_per_row=" + std::to_string(p.threads_per_row) +
         " items_per_thread=" + std::to_string(p.items_per_thread) +
         " threads_per_block=" + std::to_string(p.threads_per_block) +
         " cluster_size=" + std::to_string(p.cluster_size) + " pieces=" + std::to_string(p.pieces) +
         " cluster_grid=" + std::to_string(p.cluster_grid) + " load_width=" + std::to_string(p.load_width) +
         (p.shared_slices ? " shared_slices" : "");
}

// The fields that decide a row's reduction order: all but the load width.
bool same(const Plan& a, const Plan& b) {
  return a.strategy == b.strategy && a.vector_width == b.vector_width && a.threads_per_row == b.threads_per_row &&
         a.items_per_thread == b.items_per_thread && a.threads_per_block == b.threads_per_block &&
         a.cluster_size == b.cluster_size && a.pieces == b.pieces && a.cluster_grid == b.cluster_grid;
}

int full_width(DType t) { return static_cast<int>(16 / dtype_size(t)); }

// The plain store's problem of 8 contiguous rows of `cols` elements of t (x and y), at kX / kY.
detail::ForwardProblem plain_problem(DType t, std::int64_t cols) {
  detail::ForwardProblem p;
  p.x = reinterpret_cast<const void*>(kX);
  p.y = reinterpret_cast<void*>(kY);
  p.x_dtype = p.y_dtype = t;
  p.rows = 8;
  p.cols = cols;
  p.x_row_stride = p.y_row_stride = cols;
  p.x_batch_stride = p.y_batch_stride = 8 * cols;
  return p;
}

const std::vector<DType> kDtypes = {DType::f32, DType::f16, DType::bf16};
const std::vector<std::int64_t> kCols = {1,     2,     3,      7,      8,      17,      64,     100,   127,
                                         128,   257,   512,    520,    1000,   1024,    1031,   1032,  2048,
                                         4096,  4097,  5120,   8191,   8192,   12288,   16384,  16388, 32768,
                                         32776, 65536, 262144, 262152, 524288, 1048576, 1048584};

std::string where(DType t, std::int64_t cols, std::int64_t lead = 0) {
  return std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + " lead=" + std::to_string(lead);
}

// Batch invariance starts here: the launch configuration (hence every row's reduction
// order) is the same whether a row comes alone or with 65535 others.
TEST(Plan, AutomaticIgnoresRowCount) {
  for (DType t : kDtypes)
    for (std::int64_t cols : kCols)
      for (std::int64_t lead : {0, 1}) {
        const Plan one = plan(views(t, 1, cols, -1, lead, lead));
        for (std::int64_t rows : {2, 3, 4, 7, 8, 17, 64, 132, 256, 1000, 1024, 4097, 65536}) {
          const Plan many = plan(views(t, rows, cols, -1, lead, lead));
          EXPECT_TRUE(same(one, many) && one.load_width == many.load_width)
              << where(t, cols, lead) << ": 1 row gives " << show(one) << ", " << rows << " rows give " << show(many);
          const Plan batched = plan(views(t, 1, cols, -1, lead, lead, rows));
          EXPECT_TRUE(same(one, batched)) << where(t, cols, lead) << ": 1 row gives " << show(one) << ", a batch of "
                                          << rows << " gives " << show(batched);
        }
      }
}

TEST(Plan, FullVectorsForAlignedRows) {
  for (DType t : kDtypes)
    for (std::int64_t cols : {8, 64, 128, 1024, 4096, 8192, 65536}) {
      const Plan p = plan(views(t, 17, cols));
      EXPECT_EQ(p.vector_width, full_width(t)) << where(t, cols) << ": " << show(p);
      EXPECT_EQ(p.load_width, full_width(t)) << where(t, cols) << ": " << show(p);
    }
}

// Unaligned rows keep the 16-byte chunks (the order in which a row is summed) and load
// them an element at a time.
TEST(Plan, ScalarAccessWhenMisaligned) {
  for (DType t : kDtypes) {
    for (std::int64_t cols : {1, 3, 7, 17, 127, 1031, 4097, 8191}) {
      const Plan p = plan(views(t, 17, cols));
      EXPECT_EQ(p.load_width, 1) << where(t, cols) << " (odd): " << show(p);
      EXPECT_EQ(p.vector_width, full_width(t)) << where(t, cols) << " (odd): " << show(p);
    }
    for (std::int64_t cols : {64, 1024, 4096}) {
      const Plan px = plan(views(t, 17, cols, -1, 1, 0));
      EXPECT_EQ(px.load_width, 1) << where(t, cols) << " x one element off: " << show(px);
      const Plan py = plan(views(t, 17, cols, -1, 0, 1));
      EXPECT_EQ(py.load_width, 1) << where(t, cols) << " y one element off: " << show(py);
      const Plan ps = plan(views(t, 17, cols, cols + 1));
      EXPECT_EQ(ps.load_width, 1) << where(t, cols) << " row_stride cols+1: " << show(ps);
    }
  }
}

// fused_allreduce_add_forward's partials share x's strides but each has its own base: one
// partial an element off a 16-byte boundary loads the row an element at a time, whatever
// rank it is, and the configuration is the aligned one's.
TEST(Plan, ScalarAccessWhenAPartialIsMisaligned) {
  for (DType t : kDtypes)
    for (std::int64_t cols : {64, 1024, 4096, 65536}) {
      const std::int64_t es = static_cast<std::int64_t>(dtype_size(t));
      detail::ForwardProblem p;
      p.x = reinterpret_cast<const void*>(kX);
      p.y = reinterpret_cast<void*>(kY);
      p.residual = reinterpret_cast<const void*>(kY + (std::uintptr_t{1} << 36));
      p.residual_out = const_cast<void*>(p.residual);
      p.x_dtype = p.y_dtype = p.r_dtype = t;
      p.rows = 8;
      p.cols = cols;
      p.x_row_stride = p.y_row_stride = p.r_row_stride = p.r_out_row_stride = cols;
      p.x_batch_stride = p.y_batch_stride = p.r_batch_stride = p.r_out_batch_stride = 8 * cols;
      p.ranks = 4;
      for (int k = 0; k < p.ranks; ++k) p.rank_x[k] = reinterpret_cast<const void*>(kX + (std::uintptr_t{k} << 36));
      const Plan aligned = detail::plan_problem(p, Strategy::automatic, 9);
      EXPECT_EQ(aligned.load_width, full_width(t)) << where(t, cols) << ": " << show(aligned);
      for (int k = 1; k < p.ranks; ++k) {
        detail::ForwardProblem q = p;
        q.rank_x[k] = reinterpret_cast<const void*>((kX + (std::uintptr_t{k} << 36)) + static_cast<std::uintptr_t>(es));
        const Plan off = detail::plan_problem(q, Strategy::automatic, 9);
        EXPECT_EQ(off.load_width, 1) << where(t, cols) << " partial " << k << " one element off: " << show(off);
        EXPECT_TRUE(same(off, aligned)) << where(t, cols) << ": " << show(off) << " against " << show(aligned);
      }
    }
}

// Layout invariance starts here: the same row length gives the same configuration (every
// field but the load width) at every alignment, row stride, batch stride and row count, for
// the automatic plan and every forced strategy that serves the row.
TEST(Plan, IgnoresLayout) {
  for (DType t : kDtypes)
    for (std::int64_t cols : kCols)
      for (Strategy s :
           {Strategy::automatic, Strategy::warp_rows, Strategy::block_row, Strategy::long_row, Strategy::cluster_row}) {
        Plan base;
        try {
          base = plan(views(t, 5, cols), s);
        } catch (const Error&) {
          continue;  // a forced strategy that cannot hold the row; tested below
        }
        for (std::int64_t lead : {0, 1, 3})
          for (std::int64_t extra : {0, 1, 5, 8})
            for (std::int64_t batch : {1, 3}) {
              const Plan p = plan(views(t, 5, cols, cols + extra, lead, 7 - lead, batch), s);
              EXPECT_TRUE(same(base, p)) << where(t, cols, lead) << " " << strategy_name(s) << " row_stride cols+"
                                         << extra << " batch " << batch << ": " << show(p) << " against the contiguous "
                                         << show(base);
            }
      }
}

// The fields agree with what the strategy means (Plan's and Strategy's comments).
TEST(Plan, FieldsAreConsistent) {
  for (DType t : kDtypes)
    for (std::int64_t cols : kCols)
      for (std::int64_t lead : {0, 1})
        for (Strategy s : {Strategy::automatic, Strategy::warp_rows, Strategy::block_row, Strategy::long_row,
                           Strategy::cluster_row}) {
          Plan p;
          try {
            p = plan(views(t, 17, cols, -1, lead, lead), s);
          } catch (const Error& e) {
            EXPECT_NE(s, Strategy::automatic) << where(t, cols, lead) << ": automatic refused: " << e.what();
            continue;
          }
          const std::string w = where(t, cols, lead) + " " + strategy_name(s) + ": " + show(p);
          EXPECT_NE(p.strategy, Strategy::automatic) << w;
          if (s != Strategy::automatic) {
            EXPECT_EQ(p.strategy, s) << w;
          }
          EXPECT_EQ(p.vector_width, full_width(t)) << w;
          EXPECT_TRUE(p.load_width == 1 || p.load_width == p.vector_width) << w;
          const std::int64_t chunks = (cols + p.vector_width - 1) / p.vector_width;
          EXPECT_GE(p.threads_per_row, 1) << w;
          EXPECT_LE(p.threads_per_block, 1024) << w;
          EXPECT_EQ(p.threads_per_block % 32, 0) << w;
          if (p.strategy != Strategy::cluster_row) {
            EXPECT_EQ(p.cluster_size, 1) << w;
            EXPECT_EQ(p.pieces, 1) << w;
            EXPECT_GE(p.threads_per_block, p.threads_per_row) << w;
            EXPECT_EQ(p.threads_per_block % p.threads_per_row, 0) << w;
          }
          switch (p.strategy) {
            case Strategy::warp_rows:
              EXPECT_LE(p.threads_per_row, 32) << w;
              EXPECT_GE(std::int64_t{p.items_per_thread} * p.threads_per_row, chunks)
                  << w << ": the row does not fit in the lanes' registers";
              break;
            case Strategy::block_row:
              EXPECT_EQ(p.threads_per_row, p.threads_per_block) << w << ": a row per block";
              EXPECT_GE(std::int64_t{p.items_per_thread} * p.threads_per_row, chunks)
                  << w << ": the row does not fit in the block's registers";
              break;
            case Strategy::long_row:
              EXPECT_EQ(p.threads_per_row, p.threads_per_block) << w << ": a row per block";
              EXPECT_EQ(p.items_per_thread, 0) << w << ": long_row streams";
              break;
            case Strategy::cluster_row:
              // A cluster has at most 16 blocks on sm_90 (8 portably).
              EXPECT_TRUE(p.cluster_size >= 1 && p.cluster_size <= 16) << w;
              EXPECT_EQ(p.threads_per_row, p.threads_per_block * p.cluster_size) << w << ": a row per cluster";
              // Pieces past the registers only where the largest cluster's registers are full.
              EXPECT_TRUE(p.pieces >= 1 && p.pieces <= detail::kMaxClusterPieces) << w;
              EXPECT_EQ(p.cluster_grid, 0) << w << ": the planner leaves the grid to the launcher";
              EXPECT_TRUE(p.pieces == 1 || p.cluster_size == detail::kMaxClusterSize) << w;
              EXPECT_GE(std::int64_t{p.items_per_thread} * p.threads_per_row * p.pieces, chunks)
                  << w << ": the row does not fit in the cluster's pieces";
              EXPECT_LT(std::int64_t{p.items_per_thread} * p.threads_per_row * (p.pieces - 1), chunks)
                  << w << ": a piece fewer would hold the row";
              break;
            default:
              ADD_FAILURE() << w;
          }
        }
}

// What automatic picks can also be forced (it never picks beyond a strategy's limits), and
// forcing it gives the same plan.
TEST(Plan, AutomaticPicksAServableStrategy) {
  for (DType t : kDtypes)
    for (std::int64_t cols : kCols)
      for (std::int64_t lead : {0, 1}) {
        const Views v = views(t, 17, cols, -1, lead, lead);
        const Plan a = plan(v);
        Plan f;
        ASSERT_NO_THROW(f = plan(v, a.strategy)) << where(t, cols, lead) << ": " << show(a);
        EXPECT_TRUE(same(a, f)) << where(t, cols, lead) << ": automatic " << show(a) << ", forced " << show(f);
        EXPECT_EQ(a.shared_slices, f.shared_slices)
            << where(t, cols, lead) << ": automatic " << show(a) << ", forced " << show(f);
      }
}

// Slices in shared memory (Plan::shared_slices): the plain store of aligned rows in one piece
// on clusters of kSharedSliceBlocks blocks or more, in the table's kSharedSliceEntry (and
// unaligned rows in the same blocks), as automatic or a forced cluster_row plans it; not on
// fewer blocks, unaligned rows, rows in pieces, the residual add or the quantised store, nor
// before sm_90.
TEST(Plan, ClusterRowSlicesInSharedMemory) {
  const detail::RegisterConfig& entry = detail::kPlainClusterRowConfigs[detail::kSharedSliceEntry];
  for (DType t : kDtypes) {
    const std::int64_t capacity = std::int64_t{entry.capacity()} * full_width(t);
    for (std::int64_t blocks : {2, 3, 4, 5, 8, 9})
      for (std::int64_t extra : {std::int64_t{0}, std::int64_t{1}}) {
        const std::int64_t cols = (blocks - 1) * capacity + capacity / 2 + extra * 3 + (1 - extra) * full_width(t);
        for (Strategy s : {Strategy::automatic, Strategy::cluster_row}) {
          const Views v = views(t, 5, cols, -1, 0, 0);
          const Plan p = plan(v, s);
          const std::string w = where(t, cols) + " " + strategy_name(s) + ": " + show(p);
          const bool aligned = p.load_width == p.vector_width;
          EXPECT_EQ(aligned, extra == 0) << w;
          const bool wide = blocks >= detail::kSharedSliceBlocks && blocks <= detail::kMaxClusterSize;
          EXPECT_EQ(p.shared_slices, aligned && wide) << w;
          if (!wide) continue;
          // Unaligned rows: the same blocks in registers (the same order of the row's sum).
          EXPECT_EQ(p.strategy, Strategy::cluster_row) << w;
          EXPECT_EQ(p.cluster_size, blocks) << w;
          EXPECT_EQ(p.pieces, 1) << w;
          EXPECT_EQ(p.threads_per_block, entry.threads_per_block) << w;
          EXPECT_EQ(p.items_per_thread, entry.items) << w;
          EXPECT_EQ(p.threads_per_row, entry.threads_per_block * blocks) << w;
          EXPECT_LE(entry.threads_per_block, detail::kSharedSliceMaxThreads) << w;
        }
      }
  }
  // Not the residual add, the quantised store, rows in pieces, or sm_80 (no clusters).
  const std::int64_t cols = 131072;
  detail::ForwardProblem p = plain_problem(DType::bf16, cols);
  EXPECT_TRUE(detail::plan_problem(p, Strategy::automatic, 9).shared_slices);
  EXPECT_FALSE(detail::plan_problem(p, Strategy::automatic, 8).shared_slices) << "sm_80";
  EXPECT_FALSE(detail::plan_problem(p, Strategy::long_row, 9).shared_slices) << "long_row asked for";
  const Plan pieces = detail::plan_problem(plain_problem(DType::bf16, 4 * 262144), Strategy::automatic, 9);
  EXPECT_GT(pieces.pieces, 1) << show(pieces);
  EXPECT_FALSE(pieces.shared_slices) << show(pieces);
  p.residual = reinterpret_cast<const void*>(kY + (std::uintptr_t{1} << 36));
  p.residual_out = const_cast<void*>(p.residual);
  p.r_dtype = DType::bf16;
  p.r_row_stride = p.r_out_row_stride = cols;
  p.r_batch_stride = p.r_out_batch_stride = 8 * cols;
  EXPECT_FALSE(detail::plan_problem(p, Strategy::automatic, 9).shared_slices) << "the residual add";
  p.residual = p.residual_out = nullptr;
  p.quantize = true;
  p.y_dtype = DType::f8e4m3;
  EXPECT_FALSE(detail::plan_problem(p, Strategy::cluster_row, 9).shared_slices) << "the quantised store";
}

void expect_serves(Strategy s, const Views& v, const std::string& w) {
  try {
    const Plan p = plan(v, s);
    EXPECT_EQ(p.strategy, s) << w;
  } catch (const Error& e) {
    ADD_FAILURE() << w << ": " << strategy_name(s) << " refused: " << e.what();
  }
}

void expect_unsupported(Strategy s, const Views& v, const std::string& w) {
  try {
    const Plan p = plan(v, s);
    ADD_FAILURE() << w << ": " << strategy_name(s) << " accepted: " << show(p);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Code::unsupported) << w << ": " << e.what();
    EXPECT_GT(std::string(e.what()).size(), 0u);
  }
}

// warp_rows holds up to 128 16-byte chunks per row, at any alignment.
TEST(Plan, WarpRowsLimits) {
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t), max_cols = 128 * vw;
    for (std::int64_t cols : {vw, 8 * vw, max_cols / 2, max_cols})
      expect_serves(Strategy::warp_rows, views(t, 17, cols), where(t, cols));
    expect_serves(Strategy::warp_rows, views(t, 17, 127), where(t, 127) + " (odd cols)");
    expect_serves(Strategy::warp_rows, views(t, 17, 64, -1, 1, 1), where(t, 64, 1) + " (misaligned)");
    expect_serves(Strategy::warp_rows, views(t, 17, max_cols - 1), where(t, max_cols - 1) + " (odd cols)");
    expect_unsupported(Strategy::warp_rows, views(t, 17, max_cols + 1), where(t, max_cols + 1));
    expect_unsupported(Strategy::warp_rows, views(t, 17, 4096), where(t, 4096));
  }
}

// block_row holds up to 4096 16-byte chunks per row, at any alignment.
TEST(Plan, BlockRowLimits) {
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t), max_cols = 4096 * vw;
    for (std::int64_t cols : {vw, std::int64_t{1024}, std::int64_t{4096}, max_cols})
      expect_serves(Strategy::block_row, views(t, 17, cols), where(t, cols));
    expect_serves(Strategy::block_row, views(t, 17, 4097), where(t, 4097) + " (odd cols)");
    expect_serves(Strategy::block_row, views(t, 17, 8192, -1, 1, 1), where(t, 8192, 1) + " (misaligned)");
    expect_unsupported(Strategy::block_row, views(t, 17, max_cols + 1), where(t, max_cols + 1));
  }
}

// The launchers find the kernel of a plan with detail::with_config: the entry of the table
// that the plan names, whatever its place; a plan that names none is an internal error.
template <const detail::RegisterConfig* TABLE, int N>
void expect_with_config_finds_each(bool (*names)(const Plan&, const detail::RegisterConfig&), bool cluster) {
  for (int i = 0; i < N; ++i) {
    const detail::RegisterConfig& c = TABLE[i];
    // A plan as the planner makes it: a cluster row spans cluster_size blocks.
    const Plan p{cluster ? Strategy::cluster_row : Strategy::block_row,
                 8,
                 cluster ? c.threads_per_block * 3 : c.threads_per_row,
                 c.items,
                 c.threads_per_block,
                 cluster ? 3 : 1};
    const int found = detail::with_config<TABLE, N>(p, names, [](auto k) { return decltype(k)::value; });
    EXPECT_EQ(found, i) << "entry " << i;
  }
  const Plan none{Strategy::block_row, 8, 3, 5, 7, 1};
  const auto nothing = [](auto) {};
  EXPECT_THROW((detail::with_config<TABLE, N>(none, names, nothing)), Error);
}

TEST(Plan, LaunchersFindTheConfigurationThePlanNames) {
  expect_with_config_finds_each<detail::kWarpRowsConfigs, detail::kNumWarpRowsConfigs>(detail::names_rows, false);
  expect_with_config_finds_each<detail::kBlockRowConfigs, detail::kNumBlockRowConfigs>(detail::names_rows, false);
  expect_with_config_finds_each<detail::kQuantBlockRowConfigs, detail::kNumQuantBlockRowConfigs>(detail::names_rows,
                                                                                                 false);
  expect_with_config_finds_each<detail::kBackwardWarpRowsConfigs, detail::kNumBackwardWarpRowsConfigs>(
      detail::names_rows, false);
  expect_with_config_finds_each<detail::kBackwardBlockRowConfigs, detail::kNumBackwardBlockRowConfigs>(
      detail::names_rows, false);
  expect_with_config_finds_each<detail::kClusterRowConfigs, detail::kNumClusterRowConfigs>(detail::names_cluster, true);
  expect_with_config_finds_each<detail::kPlainClusterRowConfigs, detail::kNumPlainClusterRowConfigs>(
      detail::names_cluster, true);
  expect_with_config_finds_each<detail::kAddClusterRowConfigs, detail::kNumAddClusterRowConfigs>(detail::names_cluster,
                                                                                                 true);
  expect_with_config_finds_each<detail::kBackwardClusterRowConfigs, detail::kNumBackwardClusterRowConfigs>(
      detail::names_cluster, true);
}

// Blocks are sized to the row (src/kernel_configs.h): for 16-bit rows of whole kilo-elements
// from 2048 to 32768, the automatic plan is one block whose idle vectors are at most an
// eighth of the row (blocks that left a third of their lanes idle lost 15-30 % on the H100).
TEST(Plan, BlockRowIsSizedToTheRow) {
  for (DType t : {DType::f16, DType::bf16})
    for (std::int64_t k = 2; k <= 32; ++k) {
      const std::int64_t cols = k * 1024;
      const Plan p = plan(views(t, 17, cols));
      const std::string w = where(t, cols) + ": " + show(p);
      EXPECT_EQ(p.strategy, Strategy::block_row) << w;
      const std::int64_t capacity = std::int64_t{p.threads_per_row} * p.items_per_thread * p.vector_width;
      EXPECT_GE(capacity, cols) << w;
      EXPECT_LE(capacity - cols, cols / 8) << w << ": too many idle lanes";
    }
}

// A batch of few rows is split over clusters (Params::split_few_rows, sm_90) when its block
// row is one of 128, 256 or 512 lanes, the rows times the cluster's blocks at most the
// SMs: the decode shapes of 4096, 8192 and 16384 16-bit columns (2, 4 and 8 blocks of 64
// threads), up to 66 / 33 / 16 rows of an H200's 132 SMs, and never without an SM count.
// SplitFewRows::automatic (the default) splits the 256- and 512-lane rows only, `on` all
// three, `off` none.
TEST(Plan, FewRowsOfSomeBlockRowsAreSplit) {
  const auto config_of = [](const Plan& p) {
    return detail::RegisterConfig{p.threads_per_row, p.items_per_thread, p.threads_per_block};
  };
  EXPECT_EQ(Params{}.split_few_rows, SplitFewRows::automatic);
  for (DType t : {DType::f16, DType::bf16}) {
    const std::int64_t cols[] = {4096, 8192, 16384}, blocks[] = {2, 4, 8};
    const bool automatic[] = {false, true, true};
    for (int k = 0; k < 3; ++k) {
      const Plan p = plan(views(t, 1, cols[k]));
      const std::string w = where(t, cols[k]) + ": " + show(p);
      ASSERT_EQ(p.strategy, Strategy::block_row) << w;
      const detail::RegisterConfig c = config_of(p);
      EXPECT_EQ(detail::split_blocks(c), blocks[k]) << w;
      EXPECT_EQ(p.threads_per_row / detail::split_blocks(c), detail::kSplitBlockThreads) << w;
      const SplitFewRows on = SplitFewRows::on;
      EXPECT_EQ(detail::split_launch_blocks(c, 1, 132, on), blocks[k]) << w;
      EXPECT_EQ(detail::split_launch_blocks(c, 132 / blocks[k], 132, on), blocks[k]) << w;
      EXPECT_EQ(detail::split_launch_blocks(c, 132 / blocks[k] + 1, 132, on), 1) << w;
      EXPECT_EQ(detail::split_launch_blocks(c, 1, 0, on), 1) << w << ": split without an SM count";
      EXPECT_EQ(detail::split_launch_blocks(c, 1, 132, SplitFewRows::off), 1) << w << ": split while off";
      const int by_default = automatic[k] ? static_cast<int>(blocks[k]) : 1;
      EXPECT_EQ(detail::split_launch_blocks(c, 1, 132), by_default) << w << ": automatic";
      EXPECT_EQ(detail::split_launch_blocks(c, 132 / blocks[k], 132, SplitFewRows::automatic), by_default) << w;
      EXPECT_EQ(detail::split_launch_blocks(c, 132 / blocks[k] + 1, 132, SplitFewRows::automatic), 1) << w;
    }
  }
  // Block rows of other sizes and warp rows are not split.
  for (const detail::RegisterConfig& c : detail::kBlockRowConfigs)
    if (c.threads_per_row != 128 && c.threads_per_row != 256 && c.threads_per_row != 512)
      EXPECT_EQ(detail::split_blocks(c), 1) << c.threads_per_row << "x" << c.items;
  for (const detail::RegisterConfig& c : detail::kWarpRowsConfigs) EXPECT_EQ(detail::split_blocks(c), 1);
}

// Where four vectors a lane would leave an SM fewer than 1024 threads (blocks of 384 and of
// 576 to 1024 threads at 64 registers), block rows take eight (or six) vectors a lane in
// half the threads; the quantised store also on 14336 and 16384 16-bit elements. Its table
// has the plain one's capacities, so the same rows are block rows for both.
TEST(Plan, WideBlockRowsKeepAnSmFull) {
  struct Want {
    std::int64_t cols;
    int threads, items, quant_threads, quant_items;
  };
  for (const Want& w : {Want{8192, 256, 4, 256, 4}, Want{12288, 192, 8, 192, 8}, Want{14336, 448, 4, 224, 8},
                        Want{16384, 512, 4, 256, 8}, Want{18432, 288, 8, 288, 8}, Want{24576, 512, 6, 512, 6},
                        Want{32768, 512, 8, 512, 8}}) {
    for (DType t : {DType::f16, DType::bf16}) {
      detail::ForwardProblem p = plain_problem(t, w.cols);
      const Plan plain = detail::plan_problem(p, Strategy::automatic, 9);
      EXPECT_EQ(plain.strategy, Strategy::block_row) << where(t, w.cols) << ": " << show(plain);
      EXPECT_EQ(plain.threads_per_block, w.threads) << where(t, w.cols) << ": " << show(plain);
      EXPECT_EQ(plain.items_per_thread, w.items) << where(t, w.cols) << ": " << show(plain);
      p.quantize = true;
      p.y_dtype = DType::f8e4m3;
      const Plan quant = detail::plan_problem(p, Strategy::automatic, 9);
      EXPECT_EQ(quant.strategy, Strategy::block_row) << where(t, w.cols) << ": " << show(quant);
      EXPECT_EQ(quant.threads_per_block, w.quant_threads) << where(t, w.cols) << ": " << show(quant);
      EXPECT_EQ(quant.items_per_thread, w.quant_items) << where(t, w.cols) << ": " << show(quant);
    }
  }
  ASSERT_EQ(detail::kNumQuantBlockRowConfigs, detail::kNumBlockRowConfigs);
  for (int i = 0; i < detail::kNumBlockRowConfigs; ++i)
    EXPECT_EQ(detail::kQuantBlockRowConfigs[i].capacity(), detail::kBlockRowConfigs[i].capacity()) << "entry " << i;
}

// The residual add's cluster rows are 1024 x 4, with the ranks' sum or without (its y is the
// add's bit for bit, and the block's shape orders the sum of squares); the plain store's
// 512 x 8 (on 4 blocks or more its aligned rows' slices in shared memory, 1024 x 4 for rows
// in pieces); everything else's 512 x 8 (the quantised store with or without the add, an f32 residual
// with 16-bit x): the same capacity, so the same clusters.
TEST(Plan, ResidualAddClusterRowsHaveTheirOwnBlocks) {
  for (std::int64_t cols : {65536, 131072, 262144}) {
    detail::ForwardProblem p = plain_problem(DType::bf16, cols);
    const Plan plain = detail::plan_problem(p, Strategy::automatic, 9);
    p.residual = p.x;
    p.residual_out = p.y;
    p.r_dtype = DType::bf16;
    p.r_row_stride = p.r_out_row_stride = cols;
    p.r_batch_stride = p.r_out_batch_stride = 8 * cols;
    const Plan add = detail::plan_problem(p, Strategy::automatic, 9);
    p.ranks = 2;
    const Plan ranks = detail::plan_problem(p, Strategy::automatic, 9);
    p.ranks = 1;
    p.r_dtype = DType::f32;
    const Plan f32_residual = detail::plan_problem(p, Strategy::automatic, 9);
    p.r_dtype = DType::bf16;
    p.quantize = true;
    p.y_dtype = DType::f8e4m3;
    // The quantised store streams these rows unless its cluster rows are asked for.
    const Plan add_quant = detail::plan_problem(p, Strategy::cluster_row, 9);
    for (const Plan& plan : {plain, add, ranks, add_quant}) {
      EXPECT_EQ(plan.strategy, Strategy::cluster_row) << where(DType::bf16, cols) << ": " << show(plan);
      EXPECT_EQ(plan.cluster_size, plain.cluster_size) << where(DType::bf16, cols) << ": " << show(plan);
    }
    // An f32 residual's row is f32: twice the chunks, so a cluster twice the size (or none).
    // Beyond kMaxClusterSize blocks, twice the pieces.
    if (f32_residual.strategy == Strategy::cluster_row) {
      EXPECT_EQ(f32_residual.cluster_size * f32_residual.pieces, 2 * plain.cluster_size)
          << where(DType::f32, cols) << ": " << show(f32_residual);
      EXPECT_EQ(f32_residual.threads_per_block, 512) << where(DType::f32, cols) << ": " << show(f32_residual);
    }
    EXPECT_EQ(add_quant.threads_per_block, 512) << where(DType::bf16, cols) << ": " << show(add_quant);
    EXPECT_EQ(add_quant.items_per_thread, 8) << where(DType::bf16, cols) << ": " << show(add_quant);
    // The plain store's aligned rows on wide clusters keep their slices in shared memory, in
    // 512 x 8 blocks (ClusterRowSlicesInSharedMemory below); unaligned rows the same blocks.
    const bool wide = plain.cluster_size >= detail::kWideClusterBlocks;
    EXPECT_EQ(wide, cols > 65536) << where(DType::bf16, cols) << ": " << show(plain);
    EXPECT_EQ(plain.shared_slices, wide) << where(DType::bf16, cols) << ": " << show(plain);
    EXPECT_EQ(plain.threads_per_block, 512) << where(DType::bf16, cols) << ": " << show(plain);
    EXPECT_EQ(plain.items_per_thread, 8) << where(DType::bf16, cols) << ": " << show(plain);
    p.residual = p.residual_out = nullptr;
    p.quantize = false;
    p.y_dtype = DType::bf16;
    p.cols = p.x_row_stride = p.y_row_stride = cols - 1;  // an unaligned row: the same clusters
    const Plan unaligned = detail::plan_problem(p, Strategy::automatic, 9);
    EXPECT_EQ(unaligned.cluster_size, plain.cluster_size) << where(DType::bf16, cols - 1) << ": " << show(unaligned);
    EXPECT_FALSE(unaligned.shared_slices) << where(DType::bf16, cols - 1) << ": " << show(unaligned);
    EXPECT_EQ(unaligned.threads_per_block, 512) << where(DType::bf16, cols - 1) << ": " << show(unaligned);
    EXPECT_EQ(unaligned.items_per_thread, 8) << where(DType::bf16, cols - 1) << ": " << show(unaligned);
    for (const Plan& plan : {add, ranks}) {
      EXPECT_EQ(plan.threads_per_block, 1024) << where(DType::bf16, cols) << ": " << show(plan);
      EXPECT_EQ(plan.items_per_thread, 4) << where(DType::bf16, cols) << ": " << show(plan);
    }
  }
  EXPECT_EQ(detail::kAddClusterRowConfigs[0].capacity(), detail::kClusterRowConfigs[0].capacity());
  EXPECT_EQ(detail::kPlainClusterRowConfigs[0].capacity(), detail::kClusterRowConfigs[0].capacity());
}

// The quantised store (with and without the residual add, every scale) keeps the block rows
// of its own table while a row fits one block, and beyond that streams (long_row) on sm_90
// too, where the plain store and the add go to a cluster; cluster_row stays on request.
TEST(Plan, QuantisedLongRowsStream) {
  for (DType x : {DType::bf16, DType::f16, DType::f32})
    for (bool add : {false, true}) {
      const std::int64_t vw = full_width(x);
      const std::int64_t block_cols =
          detail::kQuantBlockRowConfigs[detail::kNumQuantBlockRowConfigs - 1].capacity() * vw;
      for (std::int64_t cols : {block_cols, block_cols + vw, std::int64_t{65536}, std::int64_t{262144}}) {
        detail::ForwardProblem p = plain_problem(x, cols);
        p.y_dtype = DType::bf16;
        if (add) {
          p.residual = p.x;
          p.residual_out = p.y;
          p.r_dtype = x;
          p.r_row_stride = p.r_out_row_stride = cols;
          p.r_batch_stride = p.r_out_batch_stride = 8 * cols;
        }
        const Plan plain = detail::plan_problem(p, Strategy::automatic, 9);
        p.quantize = true;
        p.y_dtype = DType::f8e4m3;
        const std::string w = where(x, cols) + (add ? " with the residual add" : "");
        const Plan quant = detail::plan_problem(p, Strategy::automatic, 9);
        if (cols <= block_cols) {
          EXPECT_EQ(quant.strategy, Strategy::block_row) << w << ": " << show(quant);
          continue;
        }
        EXPECT_NE(plain.strategy, Strategy::block_row) << w << ": " << show(plain);
        EXPECT_EQ(quant.strategy, Strategy::long_row) << w << ": " << show(quant);
        EXPECT_EQ(quant.threads_per_block, detail::kLongRowThreads) << w << ": " << show(quant);
        EXPECT_EQ(quant.vector_width, vw) << w << ": " << show(quant);
        EXPECT_EQ(detail::plan_problem(p, Strategy::automatic, 8).strategy, Strategy::long_row) << w << " (sm_80)";
        // Asked for, the cluster rows still serve it (on sm_90) where they serve the plain
        // store in one piece a block, in 512 x 8 blocks (kClusterRowConfigs).
        if (plain.strategy != Strategy::cluster_row || plain.pieces > 1) continue;
        const Plan cluster = detail::plan_problem(p, Strategy::cluster_row, 9);
        EXPECT_EQ(cluster.strategy, Strategy::cluster_row) << w << ": " << show(cluster);
        EXPECT_EQ(cluster.threads_per_block, detail::kClusterRowConfigs[0].threads_per_block)
            << w << ": " << show(cluster);
      }
    }
}

// The backward's block rows: among configurations of equal capacity two vectors a lane come
// first (two 512-thread blocks an SM at 64 registers, where four vectors leave one), so the
// rows of 4096 and 8192 16-bit columns (and 2048 / 4096 f32) take 256 x 2 and 512 x 2; 16384
// columns have only 512 x 4.
TEST(Plan, BackwardBlockRowsPreferTwoVectors) {
  struct Want {
    DType t;
    std::int64_t cols;
    int lanes, items;
  };
  for (const Want& w : {Want{DType::bf16, 4096, 256, 2}, Want{DType::f16, 8192, 512, 2}, Want{DType::f32, 2048, 256, 2},
                        Want{DType::bf16, 16384, 512, 4}, Want{DType::bf16, 2048, 128, 2}}) {
    detail::BackwardProblem p;
    p.x = p.dy = reinterpret_cast<const void*>(kX);
    p.dx = reinterpret_cast<void*>(kY);
    p.x_dtype = p.dx_dtype = w.t;
    p.rows = 8;
    p.cols = w.cols;
    p.x_row_stride = p.dy_row_stride = p.dx_row_stride = w.cols;
    p.x_batch_stride = p.dy_batch_stride = p.dx_batch_stride = 8 * w.cols;
    const Plan plan = detail::plan_backward(p, Strategy::automatic, 9);
    EXPECT_EQ(plan.strategy, Strategy::block_row) << where(w.t, w.cols) << ": " << show(plan);
    EXPECT_EQ(plan.threads_per_row, w.lanes) << where(w.t, w.cols) << ": " << show(plan);
    EXPECT_EQ(plan.items_per_thread, w.items) << where(w.t, w.cols) << ": " << show(plan);
  }
}

// cluster_row (sm_90; plans for CPU views are for sm_90) holds a long row in the registers
// of a cluster of blocks, at any alignment, and only as many as 16 blocks hold.
TEST(Plan, ClusterRowLimits) {
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t);
    for (std::int64_t cols : {4096 * vw + vw, 8192 * vw}) {
      const Views v = views(t, 3, cols);
      expect_serves(Strategy::cluster_row, v, where(t, cols));
      try {
        EXPECT_GE(plan(v, Strategy::cluster_row).cluster_size, 2) << where(t, cols);
      } catch (const Error&) {
      }
    }
    // A row that one block holds, forced into a cluster: two blocks (st.async, whose stores
    // make the cluster's row sums, cannot serve a cluster of one).
    for (std::int64_t cols : {std::int64_t{1}, 64 * vw, 4096 * vw}) {
      const Plan p = plan(views(t, 3, cols), Strategy::cluster_row);
      EXPECT_EQ(p.cluster_size, 2) << where(t, cols);
      EXPECT_EQ(p.threads_per_row, 2 * p.threads_per_block) << where(t, cols);
    }
    expect_serves(Strategy::cluster_row, views(t, 3, 8192 * vw, -1, 1, 1), where(t, 8192 * vw, 1) + " (misaligned)");
    expect_serves(Strategy::cluster_row, views(t, 3, 8192 * vw + 1), where(t, 8192 * vw + 1) + " (odd cols)");
    expect_unsupported(Strategy::cluster_row, views(t, 3, std::int64_t{1} << 24), where(t, std::int64_t{1} << 24));
  }
}

// Rows beyond the registers of kMaxClusterSize blocks (262144 16-bit columns, 131072 f32)
// stay cluster rows of kMaxClusterSize blocks, in pieces of a block's register capacity (the
// first in registers, the others in shared memory), up to kMaxClusterPieces: the plain store
// and the residual add, with the ranks' sum or not (the same plan as the add's, so the same
// bits). The quantised store streams them (its forced cluster rows hold one piece), and so
// does every row beyond the pieces, and the backward's beyond its cluster's registers.
TEST(Plan, ClusterRowPiecesBeyondTheRegisters) {
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t), per_piece = std::int64_t{detail::kMaxClusterSize} * 4096 * vw;
    for (std::int64_t k = 1; k <= detail::kMaxClusterPieces + 1; ++k)
      for (std::int64_t cols : {k * per_piece, k * per_piece + vw, k * per_piece + 1}) {
        if (cols > detail::kMaxClusterPieces * per_piece) cols = detail::kMaxClusterPieces * per_piece + 1;
        const std::int64_t pieces = (cols + per_piece - 1) / per_piece;
        detail::ForwardProblem p = plain_problem(t, cols);
        const Plan plain = detail::plan_problem(p, Strategy::automatic, 9);
        p.residual = reinterpret_cast<const void*>(kY + (std::uintptr_t{1} << 36));
        p.residual_out = const_cast<void*>(p.residual);
        p.r_dtype = t;
        p.r_row_stride = p.r_out_row_stride = cols;
        p.r_batch_stride = p.r_out_batch_stride = 8 * cols;
        const Plan add = detail::plan_problem(p, Strategy::automatic, 9);
        p.ranks = 2;
        p.rank_x[0] = p.x;
        p.rank_x[1] = reinterpret_cast<const void*>(kX + (std::uintptr_t{1} << 36));
        const Plan ranks = detail::plan_problem(p, Strategy::automatic, 9);
        p.ranks = 1;
        p.residual = nullptr;
        p.residual_out = nullptr;
        p.quantize = true;
        p.y_dtype = DType::f8e4m3;
        const Plan quant = detail::plan_problem(p, Strategy::automatic, 9);
        const std::string w = where(t, cols);
        for (const Plan& plan : {plain, add, ranks}) {
          if (pieces > detail::kMaxClusterPieces) {
            EXPECT_EQ(plan.strategy, Strategy::long_row) << w << ": " << show(plan);
            continue;
          }
          EXPECT_EQ(plan.strategy, Strategy::cluster_row) << w << ": " << show(plan);
          EXPECT_EQ(plan.cluster_size, detail::kMaxClusterSize) << w << ": " << show(plan);
          EXPECT_EQ(plan.pieces, pieces) << w << ": " << show(plan);
        }
        EXPECT_TRUE(same(add, ranks)) << w << ": the add " << show(add) << ", with the ranks' sum " << show(ranks);
        if (pieces > 1) {
          EXPECT_EQ(quant.strategy, Strategy::long_row) << w << ": " << show(quant);
          EXPECT_THROW(detail::plan_problem(p, Strategy::cluster_row, 9), Error) << w;
        }
        if (pieces > detail::kMaxClusterPieces) {
          EXPECT_THROW(plan(views(t, 3, cols), Strategy::cluster_row), Error) << w;
        }
      }
  }
  // The backward's cluster rows hold two pieces (2048 x 8 chunks each): a row one chunk
  // longer than 8 blocks' registers takes 8 blocks of two pieces, any view of it (aligned or
  // not, dw or not, rstd saved or not); one chunk past two pieces, long_row (without dw).
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t), regs = std::int64_t{detail::kMaxClusterSize} * 2048;
    for (std::int64_t cols : {regs * vw + vw, regs * vw + 1, 2 * regs * vw, 2 * regs * vw + 1})
      for (std::int64_t lead : {0, 1}) {
        detail::BackwardProblem b;
        b.x = b.dy = reinterpret_cast<const void*>(kX + lead * 2);
        b.dx = reinterpret_cast<void*>(kY);
        b.x_dtype = b.dx_dtype = t;
        b.rows = 8;
        b.cols = cols;
        b.x_row_stride = b.dy_row_stride = b.dx_row_stride = b.cols;
        b.x_batch_stride = b.dy_batch_stride = b.dx_batch_stride = 8 * b.cols;
        const std::string w = where(t, cols, lead);
        const Plan bw = detail::plan_backward(b, Strategy::automatic, 9);
        if (cols > 2 * regs * vw) {
          EXPECT_EQ(bw.strategy, Strategy::long_row) << w << ": " << show(bw);
          EXPECT_THROW(detail::plan_backward(b, Strategy::cluster_row, 9), Error) << w;
          continue;
        }
        EXPECT_EQ(bw.strategy, Strategy::cluster_row) << w << ": " << show(bw);
        EXPECT_EQ(bw.cluster_size, detail::kMaxClusterSize) << w << ": " << show(bw);
        EXPECT_EQ(bw.pieces, 2) << w << ": " << show(bw);
        EXPECT_EQ(bw.load_width, lead == 0 && cols % vw == 0 ? vw : 1) << w << ": " << show(bw);
      }
  }
}

// The backward beyond its cluster rows (8 blocks of two pieces of 2048 chunks), with dw
// wanted and rstd saved: the plan of one of the equal column shards the CUDA launcher runs, a
// cluster row holding ceil(chunks / shards) chunks. Without dw or a saved rstd, with dy of
// another dtype than x (the dots' kernel reads both as one), forced long_row, or below
// sm_90: long_row. The sharded rows' apply step gives the dots, so any dy dtype shards.
TEST(Plan, BackwardColumnShardsBeyondTheClusterRows) {
  const std::int64_t most = std::int64_t{detail::kMaxClusterSize} * 2048 * 2;  // chunks a cluster row holds
  const std::uintptr_t kR = std::uintptr_t{1} << 46, kW = std::uintptr_t{1} << 47;
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t);
    for (std::int64_t cols : {most * vw + 1, most * vw + vw, 2 * most * vw, 2 * most * vw + 3, 5 * most * vw}) {
      detail::BackwardProblem b;
      b.x = b.dy = reinterpret_cast<const void*>(kX);
      b.dx = reinterpret_cast<void*>(kY);
      b.x_dtype = b.dx_dtype = b.w_dtype = b.dw_dtype = t;
      b.rows = 8;
      b.cols = cols;
      b.x_row_stride = b.dy_row_stride = b.dx_row_stride = cols;
      b.x_batch_stride = b.dy_batch_stride = b.dx_batch_stride = 8 * cols;
      b.rstd = reinterpret_cast<const void*>(kR);
      b.weight = reinterpret_cast<const void*>(kW);
      b.dw = reinterpret_cast<void*>(kW + (std::uintptr_t{1} << 40));
      const std::string w = where(t, cols);
      const std::int64_t vectors = (cols + vw - 1) / vw, shards = (vectors + most - 1) / most;
      const std::int64_t per_shard = (vectors + shards - 1) / shards;
      const Plan plan = detail::plan_backward(b, Strategy::automatic, 9);
      EXPECT_EQ(plan.strategy, Strategy::cluster_row) << w << ": " << show(plan);
      const std::int64_t regs = most / 2;  // 8 blocks' registers: beyond them, two pieces
      EXPECT_EQ(plan.cluster_size, per_shard <= regs ? (per_shard + 2047) / 2048 : detail::kMaxClusterSize)
          << w << ": " << show(plan);
      EXPECT_EQ(plan.pieces, per_shard <= regs ? 1 : 2) << w << ": " << show(plan);
      const std::int64_t held = std::int64_t{plan.threads_per_row} * plan.items_per_thread * plan.pieces;
      EXPECT_GE(held, per_shard) << w << ": " << show(plan);
      EXPECT_LT(held, vectors) << w << ": a shard's plan, not the row's: " << show(plan);
      EXPECT_EQ((vectors + held - 1) / held, shards) << w << ": the launcher's shards, " << show(plan);
      // The launcher cuts the row by the plan's capacity (backward_in_column_shards): the
      // same width as the shard the plan was made for.
      EXPECT_EQ(detail::column_shard_cols(cols, plan.vector_width, held), detail::column_shard_cols(cols, vw, most))
          << w << ": the launcher's shard width, " << show(plan);
      EXPECT_EQ(detail::column_shard_cols(cols, vw, most), per_shard * vw) << w;
      const auto expect_long = [&](detail::BackwardProblem q, Strategy s, int cc, const char* why) {
        const Plan other = detail::plan_backward(q, s, cc);
        EXPECT_EQ(other.strategy, Strategy::long_row) << w << ", " << why << ": " << show(other);
      };
      detail::BackwardProblem q = b;
      q.dw = nullptr;
      expect_long(q, Strategy::automatic, 9, "no dw");
      q = b;
      q.rstd = nullptr;
      expect_long(q, Strategy::automatic, 9, "no saved rstd");
      expect_long(b, Strategy::long_row, 9, "long_row forced");
      expect_long(b, Strategy::automatic, 8, "sm_80");
      EXPECT_THROW(detail::plan_backward(b, Strategy::cluster_row, 9), Error) << w;
      if (t == DType::f32) {
        q = b;
        q.dx_dtype = DType::bf16;  // a residual add's backward with an f32 r_out
        expect_long(q, Strategy::automatic, 9, "dy of bf16, x of f32");
        const float dots[1] = {};
        q.row_dots = dots;
        q.full_cols = cols;
        EXPECT_TRUE(same(detail::plan_backward(q, Strategy::automatic, 9), plan)) << w << ": the dots given";
      }
    }
  }
}

// Clusters past the portable 8 blocks, as a forced plan may ask (bench --max-cluster 16):
// the blocks that hold the row up to 16, then 16 blocks of pieces; the default stays 8.
TEST(Plan, ClusterShapeUpToSixteenBlocks) {
  const int capacity = 2048;  // 256 x 8
  using detail::cluster_shape;
  const auto expect = [](detail::ClusterShape s, std::int64_t blocks, std::int64_t pieces, const char* what) {
    EXPECT_EQ(s.blocks, blocks) << what;
    EXPECT_EQ(s.pieces, pieces) << what;
  };
  expect(cluster_shape(16 * capacity, capacity, 4, 16), 16, 1, "16 blocks' registers");
  expect(cluster_shape(12 * capacity + 1, capacity, 4, 16), 13, 1, "13 blocks");
  expect(cluster_shape(16 * capacity + 1, capacity, 4, 16), 16, 2, "past 16 blocks: pieces");
  expect(cluster_shape(16 * capacity, capacity, 4), 8, 2, "the portable default: 8 blocks of 2 pieces");
  expect(cluster_shape(16 * capacity + 1, capacity, 1, 16), 17, 1, "one piece: no cluster holds it");
  EXPECT_TRUE(cluster_shape(16 * capacity, capacity, 4, 16).fits(4, 16));
  EXPECT_FALSE(cluster_shape(16 * capacity, capacity, 4, 16).fits(4)) << "16 blocks are not portable";
  EXPECT_FALSE(cluster_shape(16 * capacity + 1, capacity, 1, 16).fits(1, 16));
  EXPECT_LE(detail::kMaxNonPortableClusterSize, 16) << "sm_90's largest cluster";
}

TEST(Plan, LongRowServesAnything) {
  for (DType t : kDtypes)
    for (std::int64_t cols : {std::int64_t{1}, std::int64_t{7}, std::int64_t{4097}, std::int64_t{32776},
                              std::int64_t{262144}, std::int64_t{1} << 24, (std::int64_t{1} << 24) + 1})
      for (std::int64_t lead : {0, 1})
        expect_serves(Strategy::long_row, views(t, 3, cols, -1, lead, lead), where(t, cols, lead));
}

// plan_forward describes every call forward accepts, including a 16-bit x with an f32 y
// (which forward accepts with an f32 weight).
TEST(Plan, CoversMixedOutputDtypes) {
  for (DType t : {DType::f16, DType::bf16}) {
    const TensorView x = TensorView::matrix(reinterpret_cast<void*>(kX), t, Device::cpu(), 17, 4096);
    const TensorView y = TensorView::matrix(reinterpret_cast<void*>(kY), DType::f32, Device::cpu(), 17, 4096);
    const TensorView w = TensorView::vector(reinterpret_cast<void*>(kY + (1 << 20)), DType::f32, Device::cpu(), 4096);
    try {
      const Plan p = plan_forward(x, w, y);
      EXPECT_EQ(p.vector_width, full_width(t)) << dtype_name(t) << " x, f32 weight, f32 y: " << show(p);
    } catch (const Error& e) {
      ADD_FAILURE() << dtype_name(t) << " x, f32 weight, f32 y: plan_forward threw " << code_name(e.code()) << ": "
                    << e.what();
    }
    // Without an f32 weight the f32 output is not a valid call, for plan_forward as for forward.
    try {
      plan_forward(x, y);
      ADD_FAILURE() << dtype_name(t) << " x, no weight, f32 y: accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Code::unsupported) << e.what();
    }
    // A misaligned weight limits the load width, and nothing else.
    const TensorView w_odd =
        TensorView::vector(reinterpret_cast<void*>(kY + (1 << 20) + 4), DType::f32, Device::cpu(), 4096);
    const Plan odd = plan_forward(x, w_odd, y);
    EXPECT_EQ(odd.load_width, 1) << dtype_name(t) << ": weight misaligned by 4 bytes";
    EXPECT_TRUE(same(odd, plan_forward(x, w, y))) << dtype_name(t) << ": weight misaligned by 4 bytes: " << show(odd);
  }
}

// Rows too long for one block go to a cluster or are streamed; rows too long for any
// cluster are streamed.
TEST(Plan, AutomaticLongRows) {
  for (DType t : kDtypes) {
    const std::int64_t vw = full_width(t);
    for (std::int64_t cols : {4096 * vw + vw, std::int64_t{262144}}) {
      const Plan p = plan(views(t, 1, cols));
      EXPECT_TRUE(p.strategy == Strategy::cluster_row || p.strategy == Strategy::long_row)
          << where(t, cols) << ": " << show(p);
    }
    const Plan huge = plan(views(t, 1, std::int64_t{1} << 24));
    EXPECT_EQ(huge.strategy, Strategy::long_row) << where(t, std::int64_t{1} << 24) << ": " << show(huge);
  }
}

}  // namespace
}  // namespace rmsnorm
