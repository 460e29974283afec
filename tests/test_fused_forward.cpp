// The fused forwards against the fp64 oracle (fused_case.h): the residual add
// (fused_add_forward), the quantised outputs (quant_forward) and both together
// (fused_add_quant_forward), on the CPU backend and, when a device is there, on CUDA (whose
// cases skip while its kernels for these are not written). Then the properties the oracle
// alone cannot show: r_out and y bit-identical to the plain op applied to r_out, results
// independent of the layout, q bit-identical to quantising the plain op's fp32 y.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "backend_test.h"
#include "fused_case.h"
#include "kernel_configs.h"
#include "support.h"

namespace rmsnorm {
namespace {

using testing::Backend;
using testing::FusedCase;
using testing::QuantCase;

// Runs cases, stopping after a few failures; skips the test when CUDA refused them all as
// not yet implemented.
class Runner {
 public:
  explicit Runner(Backend b) : b_(b) {}
  bool run(const FusedCase& c) {
    if (failed_ >= testing::kMaxFailingCases) return false;
    bool skipped = false;
    if (!testing::check_fused_case(b_, c, &skipped)) ++failed_;
    ++(skipped ? skipped_ : ran_);
    return failed_ < testing::kMaxFailingCases;
  }
  int ran() const { return ran_; }
  bool all_skipped() const { return ran_ == 0 && skipped_ > 0; }

 private:
  Backend b_;
  int ran_ = 0, skipped_ = 0, failed_ = 0;
};

#define SKIP_IF_CUDA_HAS_NO_KERNELS(runner) \
  if ((runner).all_skipped()) GTEST_SKIP() << "the CUDA backend does not serve this fusion yet"

using Fused = testing::BackendTest;

// ---------------------------------------------------------------------------------------
// Residual add
// ---------------------------------------------------------------------------------------

// Every (x, residual, weight, y) with both casts, offsets 0 and 1, rstd or not, short and
// mid rows.
TEST_P(Fused, ResidualAddEveryDtypeCombination) {
  Runner run(backend());
  std::size_t k = 0;
  for (FusedCase c : testing::residual_combos(backend()))
    for (Cast cast : {Cast::fp32, Cast::llama})
      for (double offset : {0.0, 1.0}) {
        if (offset != 0.0 && !c.w) continue;
        for (std::int64_t cols : {1, 3, 8, 17, 100, 128, 1031, 4096})
          for (std::int64_t rows : {1, 17}) {
            c.cast = cast;
            c.offset = offset;
            c.rows = rows;
            c.cols = cols;
            c.rstd = ++k % 2 == 0;
            if (!run.run(c)) return;
          }
      }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Awkward row lengths, from 1 element to rows of a million.
TEST_P(Fused, ResidualAddAwkwardShapes) {
  Runner run(backend());
  std::size_t k = 0;
  for (DType t : {DType::bf16, DType::f16, DType::f32})
    for (std::int64_t cols : {1, 2, 7, 31, 64, 127, 257, 1000, 4095, 5120, 8191, 65536, 262147, 1048576}) {
      FusedCase c;
      c.x = c.y = t;
      c.w = t;
      c.residual = k % 3 == 1 && t != DType::f32 ? DType::f32 : t;
      c.cols = cols;
      c.rows = cols >= 65536 ? 1 : cols >= 4096 ? 5 : 33;
      c.cast = k++ % 2 ? Cast::llama : Cast::fp32;
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Strided rows, each argument its own row pitch (odd pads misalign every other row),
// batched views with gaps, misaligned base pointers.
TEST_P(Fused, ResidualAddLayouts) {
  Runner run(backend());
  struct Layout {
    std::int64_t batch, gap, x_pad, r_pad, r_out_pad, y_pad, x_lead, r_lead, r_out_lead, y_lead;
  };
  const Layout layouts[] = {{1, 0, 8, 0, 0, 0, 0, 0, 0, 0},  {1, 0, 0, 8, 0, 0, 0, 0, 0, 0},
                            {1, 0, 0, 0, 8, 8, 0, 0, 0, 0},  {1, 0, 3, 5, 1, 7, 0, 0, 0, 0},
                            {1, 0, 0, 0, 0, 0, 1, 0, 0, 0},  {1, 0, 0, 0, 0, 0, 0, 1, 1, 0},
                            {1, 0, 0, 0, 0, 0, 1, 1, 1, 1},  {3, 37, 0, 0, 0, 0, 0, 0, 0, 0},
                            {3, 64, 8, 3, 0, 5, 1, 0, 1, 0}, {4, 0, 16, 16, 16, 16, 0, 0, 0, 0}};
  std::size_t k = 0;
  for (FusedCase c : testing::residual_combos(backend())) {
    if (c.x == DType::f64 && k % 2) continue;
    for (const Layout& l : layouts)
      for (std::int64_t cols : {8, 100, 1024, 4096}) {
        c.batch = l.batch;
        c.rows = l.batch > 1 ? 5 : 17;
        c.cols = cols;
        c.batch_gap = l.gap;
        c.x_pad = l.x_pad;
        c.r_pad = l.r_pad;
        c.r_out_pad = l.r_out_pad;
        c.y_pad = l.y_pad;
        c.x_lead = l.x_lead;
        c.r_lead = l.r_lead;
        c.r_out_lead = l.r_out_lead;
        c.y_lead = l.y_lead;
        c.cast = ++k % 3 == 0 ? Cast::llama : Cast::fp32;
        if (!run.run(c)) return;
      }
  }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// In place, vLLM's contract (y is x, residual_out is the residual), and each half of it.
TEST_P(Fused, ResidualAddInPlace) {
  Runner run(backend());
  std::size_t k = 0;
  for (FusedCase c : testing::residual_combos(backend())) {
    for (int mode = 0; mode < 3; ++mode) {
      const bool y_in = mode != 1, r_in = mode != 0;
      if (y_in && c.y != c.x) continue;  // y == x needs y's dtype == x's
      for (std::int64_t cols : {1, 17, 128, 1031, 4096})
        for (std::int64_t pad : {0, 5}) {
          c.rows = 9;
          c.cols = cols;
          c.x_pad = c.r_pad = pad;
          c.y_in_place = y_in;
          c.residual_in_place = r_in;
          c.cast = ++k % 2 ? Cast::llama : Cast::fp32;
          if (!run.run(c)) return;
        }
    }
  }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// The residual add's cluster rows forced over more rows than the grid has clusters, so that
// every cluster loops over rows and the row sums' two mailboxes (cluster.cuh) are each
// reused many times: x's dtype and an f32 residual, in place (vLLM's contract) and not, rows
// of 64K and 128K columns and an odd length (the unaligned instantiation), rstd written.
// Every row against the oracle.
TEST_P(Fused, ResidualAddClusterRowsLoopOverManyRows) {
  Runner run(backend());
  std::size_t k = 0;
  // 262144 + 8 and + 1 columns: two pieces a block with a bf16 residual, three with an f32
  // one (whose rows are f32, twice the chunks), aligned and not.
  for (std::int64_t cols :
       {std::int64_t{65536}, std::int64_t{131072}, std::int64_t{40001}, std::int64_t{262152}, std::int64_t{262145}})
    for (DType residual : {DType::bf16, DType::f32}) {
      FusedCase c;
      c.strategy = Strategy::cluster_row;
      c.x = c.y = DType::bf16;
      c.w = DType::bf16;
      c.residual = residual;
      c.cols = cols;
      c.rows = cols > 131072 ? 80 : cols > 65536 ? 150 : 300;
      c.rstd = true;
      c.y_in_place = c.residual_in_place = k % 2 == 1;
      c.cast = k++ % 3 == 2 ? Cast::llama : Cast::fp32;
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Where eps matters (tiny inputs), and large ones.
TEST_P(Fused, ResidualAddEpsAndScale) {
  Runner run(backend());
  for (FusedCase c : testing::residual_combos(backend()))
    for (double eps : {0.0, 1e-5})
      for (double scale : {1e-3, 30.0}) {
        c.rows = 7;
        c.cols = 1000;
        c.eps = eps;
        c.scale = scale;
        if (!run.run(c)) return;
      }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// ---------------------------------------------------------------------------------------
// Quantised outputs
// ---------------------------------------------------------------------------------------

std::vector<std::tuple<DType, std::optional<DType>>> quant_inputs() {
  return {{DType::bf16, DType::bf16}, {DType::f16, DType::f16},   {DType::f32, DType::f32},
          {DType::bf16, DType::f32},  {DType::f16, std::nullopt}, {DType::bf16, std::nullopt}};
}

// Every scale kind and 8-bit dtype over the input dtypes, both casts, with and without the
// residual add, row lengths that are and are not multiples of the group.
TEST_P(Fused, QuantEveryKindAndDtype) {
  Runner run(backend());
  std::size_t k = 0;
  for (const auto& [x, w] : quant_inputs())
    for (QuantScale kind : {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group})
      for (DType q : {DType::f8e4m3, DType::i8})
        for (Cast cast : {Cast::fp32, Cast::llama})
          for (std::int64_t cols : {1, 7, 128, 1000, 4096}) {
            FusedCase c;
            c.x = c.y = x;
            c.w = w;
            c.quant = testing::quant_case(kind, q);
            if (kind == QuantScale::per_group) {
              c.quant->group_size = cols % 128 == 0 ? 128 : cols;  // 1, 7, 1000: one group
              if (cols == 1000) c.quant->group_size = 8;
            }
            c.cast = cast;
            c.cols = cols;
            c.rows = cols >= 4096 ? 5 : 17;
            c.offset = w && k % 3 == 1 ? 1.0 : 0.0;
            c.rstd = k % 2 == 0;
            if (k % 3 == 2) c.quant->division = QuantDivision::reciprocal;
            if (k++ % 2 == 1) c.residual = x == DType::f32 || k % 4 == 1 ? x : DType::f32;
            if (!run.run(c)) return;
          }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Per-group scales: group sizes (the default 128, and others dividing N), row-major and
// column-major (with padded columns), rounded to powers of two or not, capped by scale_ub.
TEST_P(Fused, QuantGroupLayoutsAndOptions) {
  Runner run(backend());
  std::size_t k = 0;
  for (DType q : {DType::f8e4m3, DType::i8})
    for (std::int64_t group : {1, 16, 64, 128, 512})
      for (bool col : {false, true})
        for (bool pow2 : {false, true}) {
          FusedCase c;
          c.x = c.y = DType::bf16;
          c.w = DType::bf16;
          c.quant = testing::quant_case(QuantScale::per_group, q, group, col);
          c.quant->pow2 = pow2;
          c.quant->scale_pad = k % 3 == 2 ? 3 : 0;
          if (k % 4 == 3) c.quant->scale_ub = 1.5;
          c.batch = k % 2 ? 2 : 1;
          c.rows = 11;
          c.cols = group == 1 ? 64 : 4 * group + (group == 512 ? 0 : 512);
          c.x_pad = k % 5 == 1 ? 8 : 0;
          c.cast = k % 3 == 1 ? Cast::llama : Cast::fp32;
          if (k % 2) c.residual = DType::f32;
          ++k;
          if (!run.run(c)) return;
        }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Per-row scales with pow2 and scale_ub (low enough that rows are capped and saturate),
// static scales that saturate, all-zero rows (the minimum scale: zeros, not 0 / 0).
TEST_P(Fused, QuantScaleRules) {
  Runner run(backend());
  for (DType q : {DType::f8e4m3, DType::i8})
    for (bool pow2 : {false, true})
      for (double ub : {0.0, 1.0, 2.5}) {
        FusedCase c;
        c.x = c.y = DType::f16;
        c.w = DType::f16;
        c.quant = testing::quant_case(QuantScale::per_row, q);
        c.quant->pow2 = pow2;
        if (ub > 0) c.quant->scale_ub = ub;
        c.rows = 33;
        c.cols = 1000;
        c.zero_rows = {0, 5};
        if (!run.run(c)) return;
        c.quant->kind = QuantScale::per_group;
        c.quant->group_size = 100;
        if (!run.run(c)) return;
      }
  for (DType q : {DType::f8e4m3, DType::i8})
    for (double fraction : {0.25, 1.0, 4.0}) {
      FusedCase c;
      c.x = c.y = DType::bf16;
      c.w = DType::f32;
      c.quant = testing::quant_case(QuantScale::static_tensor, q);
      c.quant->static_fraction = fraction;
      c.rows = 17;
      c.cols = 777;
      c.zero_rows = {3};
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Strided, batched and misaligned views of x, the residual and q; awkward lengths.
TEST_P(Fused, QuantLayoutsAndShapes) {
  Runner run(backend());
  std::size_t k = 0;
  for (std::int64_t cols : {1, 2, 3, 17, 64, 127, 256, 1031, 4096, 65536})
    for (int layout = 0; layout < 4; ++layout) {
      FusedCase c;
      c.x = c.y = k % 2 ? DType::bf16 : DType::f16;
      c.w = c.x;
      c.quant = testing::quant_case(k % 3 == 0 ? QuantScale::static_tensor : QuantScale::per_row,
                                    k % 2 ? DType::f8e4m3 : DType::i8);
      if (cols % 64 == 0 && k % 3 == 2) {
        c.quant->kind = QuantScale::per_group;
        c.quant->group_size = 64;
      }
      c.cols = cols;
      c.rows = cols >= 65536 ? 2 : 13;
      if (layout == 1) {
        c.x_pad = 3;
        c.y_pad = 5;
      } else if (layout == 2) {
        c.batch = 3;
        c.rows = cols >= 65536 ? 1 : 4;
        c.batch_gap = 19;
        c.y_pad = 16;
      } else if (layout == 3) {
        c.x_lead = 1;
        c.y_lead = 3;
        c.residual = c.x;
        c.r_lead = 1;
        c.r_pad = 1;
        c.residual_in_place = true;
      }
      ++k;
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// The quantised store's block rows of six and eight vectors a lane (kQuantBlockRowConfigs):
// each configuration at a row that fills it and at one just past the previous capacity (its
// last lanes idle), 16-bit x, every scale kind and both 8-bit dtypes in turn, some after a
// residual add (an f32 one among them, whose rows take an f32 row's configuration).
TEST_P(Fused, QuantWideBlockRows) {
  Runner run(backend());
  std::size_t k = 0;
  std::int64_t previous = 0;
  for (const detail::RegisterConfig& config : detail::kQuantBlockRowConfigs) {
    const std::int64_t capacity = config.capacity();
    if (config.items >= 6)
      for (std::int64_t cols : {capacity * 8, previous * 8 + 3}) {
        FusedCase c;
        c.x = c.y = k % 2 ? DType::bf16 : DType::f16;
        c.w = c.x;
        const QuantScale kind = k % 3 == 0                      ? QuantScale::static_tensor
                                : k % 3 == 1 || cols % 128 != 0 ? QuantScale::per_row
                                                                : QuantScale::per_group;
        c.quant = testing::quant_case(kind, k % 4 < 2 ? DType::f8e4m3 : DType::i8);
        if (k % 5 == 3) c.residual = k % 2 ? DType::f32 : c.x;
        c.cast = k % 3 == 2 ? Cast::llama : Cast::fp32;
        c.cols = cols;
        c.rows = 5;
        ++k;
        if (!run.run(c)) return;
      }
    previous = capacity;
  }
  EXPECT_GE(k, 16u);
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Per-group scales whose groups are 1 to 32 chunks of 16 bytes (the register rows of whole
// warps take their maxima by shuffles across a group's lanes) and 24 or 64 chunks (a
// shared-memory table): rows of one warp (1024 16-bit columns), of several (block rows,
// their last lanes past the row's end) and streamed rows (long_row, beyond one block: its
// passes give a group's chunks to neighbouring lanes too, the last pass partly past the
// row's end), every 16-bit dtype and f32, some after a residual
// add, column-major scales, powers of two and an upper bound on some; some with x an
// element off the 16-byte grid (rows an element at a time: the table, on the same groups).
TEST_P(Fused, QuantGroupsWithinAWarp) {
  Runner run(backend());
  std::size_t k = 0;
  for (DType x : {DType::bf16, DType::f16, DType::f32}) {
    const std::int64_t vec = 16 / static_cast<std::int64_t>(dtype_size(x));
    for (std::int64_t chunks : {1, 2, 4, 8, 16, 32, 24, 64})
      for (std::int64_t target : {128 * vec, 325 * vec, 8200 * vec}) {
        const std::int64_t group = chunks * vec;
        FusedCase c;
        c.x = c.y = x;
        c.w = x;
        c.quant = testing::quant_case(QuantScale::per_group, k % 2 ? DType::i8 : DType::f8e4m3, group, k % 3 == 2);
        c.quant->pow2 = k % 4 == 1;
        if (k % 5 == 3) c.quant->scale_ub = 1.5;
        if (k % 3 == 1) c.residual = x;
        if (k % 7 == 4) c.x_lead = 1;
        c.cols = (target + group - 1) / group * group;
        c.rows = 6;
        ++k;
        if (!run.run(c)) return;
      }
  }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// The quantised store under each strategy forced, where automatic would not pick it: long
// rows in the cluster rows (which automatic leaves for long_row), short and mid rows
// streamed, and block rows; every scale, fp8 and int8, with and without the residual add
// (of x's dtype or f32), aligned and not. A strategy that cannot serve a case is refused by
// name with nothing written (the CPU, one strategy, runs them all).
TEST_P(Fused, QuantForcedStrategies) {
  Runner run(backend());
  const QuantScale kinds[] = {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group};
  std::size_t k = 0;
  for (Strategy s : {Strategy::cluster_row, Strategy::long_row, Strategy::block_row})
    for (std::int64_t cols : {1000, 4096, 32776, 65536, 131072}) {
      FusedCase c;
      c.strategy = s;
      c.x = c.y = k % 3 == 1 ? DType::f16 : DType::bf16;
      c.w = c.x;
      const std::int64_t group = k % 4 == 3 ? 256 : 128;
      const QuantScale kind =
          kinds[k % 3] == QuantScale::per_group && cols % group ? QuantScale::per_row : kinds[k % 3];
      c.quant = testing::quant_case(kind, k % 2 ? DType::i8 : DType::f8e4m3, group,
                                    kind == QuantScale::per_group && k % 5 == 2);
      if (k % 3 == 2) c.quant->division = QuantDivision::reciprocal;
      if (k % 4 == 1) c.residual = c.x;
      if (k % 4 == 2) c.residual = DType::f32;
      if (k % 5 == 4) c.x_lead = c.y_lead = 1;
      c.cast = k % 2 ? Cast::llama : Cast::fp32;
      c.cols = cols;
      c.rows = cols >= 65536 ? 3 : 9;
      ++k;
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

// Per-group scales on rows long enough that their group maxima fill 48 KB of shared memory
// (4096 groups of three fp32 entries): the default limit a block gets without asking, which
// the kernel's own shared memory then pushed over (CUDA refused the launch). Rows of
// 524288 bf16 and 1048576 f32 columns (long_row), 262144 bf16 in groups of 64 (long_row,
// and cluster_row forced: sm_90), with and without the residual add.
TEST_P(Fused, QuantGroupScalesOnLongRows) {
  Runner run(backend());
  struct Row {
    DType x;
    std::int64_t cols, group;
    Strategy strategy = Strategy::automatic;
  };
  std::size_t k = 0;
  for (const Row& row : {Row{DType::bf16, 524288, 128}, Row{DType::f32, 1048576, 256}, Row{DType::bf16, 262144, 64},
                         Row{DType::bf16, 262144, 64, Strategy::cluster_row}})
    for (bool add : {false, true}) {
      FusedCase c;
      c.strategy = row.strategy;
      c.x = c.y = row.x;
      c.w = row.x;
      c.quant = testing::quant_case(QuantScale::per_group, k % 2 ? DType::i8 : DType::f8e4m3, row.group, k % 3 == 1);
      if (add) c.residual = row.x;
      c.cols = row.cols;
      c.rows = 3;
      ++k;
      if (!run.run(c)) return;
    }
  SKIP_IF_CUDA_HAS_NO_KERNELS(run);
}

INSTANTIATE_TEST_SUITE_P(, Fused, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return std::string(testing::backend_name(info.param));
                         });

// ---------------------------------------------------------------------------------------
// Bit-level properties (CPU): the fusion changes where the row comes from and where it
// goes, never how it is normalised.
// ---------------------------------------------------------------------------------------

using reference::HostTensor;

HostTensor random_matrix(DType t, std::int64_t rows, std::int64_t cols, std::uint64_t seed, std::int64_t pad = 0,
                         std::int64_t lead = 0) {
  HostTensor h = testing::make_tensor(t, 1, rows, cols, -1, cols + pad, lead, 0);
  reference::fill_normal(h.view, seed);
  return h;
}

// The same elements in another layout (row pitch cols + pad, `lead` elements in).
HostTensor relayout(const HostTensor& from, std::int64_t pad, std::int64_t lead) {
  const TensorView& v = from.view;
  HostTensor h = testing::make_tensor(v.dtype, 1, v.rows, v.cols, -1, v.cols + pad, lead, 0);
  const std::size_t es = dtype_size(v.dtype);
  for (std::int64_t r = 0; r < v.rows; ++r)
    std::memcpy(static_cast<unsigned char*>(h.view.data) + static_cast<std::size_t>(r * h.view.row_stride) * es,
                static_cast<const unsigned char*>(v.data) + static_cast<std::size_t>(r * v.row_stride) * es,
                static_cast<std::size_t>(v.cols) * es);
  return h;
}

// The elements of a view, row by row, as bytes (no padding).
std::vector<unsigned char> elements(const TensorView& v) {
  const std::size_t es = dtype_size(v.dtype);
  std::vector<unsigned char> out;
  for (std::int64_t b = 0; b < v.batch; ++b)
    for (std::int64_t r = 0; r < v.rows; ++r) {
      const auto* row = static_cast<const unsigned char*>(v.data) +
                        static_cast<std::size_t>(b * v.batch_stride + r * v.row_stride) * es;
      out.insert(out.end(), row, row + static_cast<std::size_t>(v.cols) * es);
    }
  return out;
}

// y of the residual add is forward() of its r_out, bit for bit, whenever forward() takes
// r_out with the same dtypes (the residual of x's dtype); with an f32 residual and 16-bit
// x, Cast::fp32's fp32 y (forward of the f32 r_out with the weight widened to f32, y f32)
// rounds to the fused y.
TEST(FusedBits, ResidualAddIsTheNormOfRout) {
  for (DType x : {DType::f32, DType::f16, DType::bf16, DType::f64})
    for (bool f32_residual : {false, true})
      for (Cast cast : {Cast::fp32, Cast::llama})
        for (double offset : {0.0, 1.0})
          for (std::int64_t cols : {1, 17, 1000, 4096}) {
            if (f32_residual && (x == DType::f32 || x == DType::f64 || cast == Cast::llama)) continue;
            const DType rt = f32_residual ? DType::f32 : x;
            const std::int64_t rows = 9;
            const std::uint64_t seed = testing::seed_of({static_cast<int>(x), f32_residual, cols});
            HostTensor xs = random_matrix(x, rows, cols, seed), rs = random_matrix(rt, rows, cols, seed + 1);
            HostTensor w = testing::make_vector(x, cols);
            reference::fill_normal(w.view, seed + 2, offset == 0.0 ? 1.0 : 0.0, 0.3);
            HostTensor y = testing::make_tensor(x, 1, rows, cols), r_out = testing::make_tensor(rt, 1, rows, cols);
            HostTensor rstd = testing::make_vector(x == DType::f64 ? DType::f64 : DType::f32, rows);
            Params p;
            p.cast = cast;
            p.weight_offset = offset;
            fused_add_forward(xs.view, rs.view, w.view, y.view, r_out.view, p, rstd.view);

            // The plain op on r_out.
            HostTensor w_plain = w;
            w_plain.view.data = w_plain.bytes.data();
            if (f32_residual) {  // widen the weight (exactly) to f32; y is f32 then
              w_plain = testing::make_vector(DType::f32, cols);
              for (std::int64_t j = 0; j < cols; ++j)
                store_from_double(w_plain.view.data, DType::f32, j, load_as_double(w.view.data, x, j));
            }
            HostTensor y2 = testing::make_tensor(f32_residual ? DType::f32 : x, 1, rows, cols);
            HostTensor rstd2 = testing::make_vector(x == DType::f64 ? DType::f64 : DType::f32, rows);
            forward(r_out.view, w_plain.view, y2.view, p, rstd2.view);
            if (f32_residual)
              for (std::int64_t i = 0; i < rows * cols; ++i)
                store_from_double(y2.view.data, DType::f32, i,
                                  reference::round_to(x, load_as_double(y2.view.data, DType::f32, i)));
            const std::string what = std::string(dtype_name(x)) + (f32_residual ? " f32 residual" : "") +
                                     (cast == Cast::llama ? " llama" : " fp32") + " offset " + std::to_string(offset) +
                                     " cols " + std::to_string(cols);
            for (std::int64_t i = 0; i < rows * cols; ++i) {
              const double a = load_as_double(y.view.data, x, i);
              const double b = load_as_double(y2.view.data, f32_residual ? DType::f32 : x, i);
              ASSERT_EQ(a, b) << what << ": y[" << i << "] differs from forward(r_out)";
            }
            ASSERT_EQ(rstd.bytes, rstd2.bytes) << what << ": rstd differs from forward(r_out)'s";
          }
}

// Layout invariance: the same rows in other layouts (strided, misaligned, batched into
// pieces, one row at a time) give the same bytes, for the residual add and the quantised
// store (per-group scales included).
TEST(FusedBits, ResultsDependOnTheRowOnly) {
  const std::int64_t rows = 12, cols = 1024;
  for (DType t : {DType::bf16, DType::f16})
    for (int mode = 0; mode < 3; ++mode) {  // 0: residual add, 1: quant, 2: both
      const std::uint64_t seed = testing::seed_of({static_cast<int>(t), mode});
      const HostTensor x = random_matrix(t, rows, cols, seed), r = random_matrix(DType::f32, rows, cols, seed + 1);
      HostTensor w = testing::make_vector(t, cols);
      reference::fill_normal(w.view, seed + 2, 1.0, 0.3);
      struct Result {
        std::vector<unsigned char> y, r_out, scales;
      };
      const auto run = [&](const HostTensor& xin, const HostTensor& rin, std::int64_t pad, std::int64_t lead,
                           std::int64_t first, std::int64_t count) {
        // rows [first, first + count) of xin and rin, in a layout of pitch cols + pad
        HostTensor xv = relayout(xin, pad, lead), rv = relayout(rin, pad + 1, lead);
        xv.view.data = static_cast<unsigned char*>(xv.view.data) + first * xv.view.row_stride * dtype_size(t);
        rv.view.data = static_cast<unsigned char*>(rv.view.data) + first * rv.view.row_stride * 4;
        xv.view.rows = rv.view.rows = count;
        HostTensor y = testing::make_tensor(mode == 0 ? t : DType::f8e4m3, 1, count, cols, -1, cols + pad, lead, 0);
        HostTensor r_out = testing::make_tensor(DType::f32, 1, count, cols, -1, cols + 3, lead, 0);
        HostTensor scales = testing::make_tensor(DType::f32, 1, count, cols / 128);
        Quant q;
        q.kind = QuantScale::per_group;
        q.scales = scales.view;
        if (mode == 0) fused_add_forward(xv.view, rv.view, w.view, y.view, r_out.view);
        if (mode == 1) quant_forward(xv.view, w.view, y.view, q);
        if (mode == 2) fused_add_quant_forward(xv.view, rv.view, w.view, y.view, r_out.view, q);
        return Result{elements(y.view), mode == 1 ? std::vector<unsigned char>{} : elements(r_out.view),
                      mode == 0 ? std::vector<unsigned char>{} : elements(scales.view)};
      };
      const Result whole = run(x, r, 0, 0, 0, rows);
      Result pieces;
      for (std::int64_t first = 0; first < rows; first += 5) {  // 5, 5, 2 rows, strided and misaligned
        const Result part = run(x, r, 7, 1, first, std::min<std::int64_t>(5, rows - first));
        pieces.y.insert(pieces.y.end(), part.y.begin(), part.y.end());
        pieces.r_out.insert(pieces.r_out.end(), part.r_out.begin(), part.r_out.end());
        pieces.scales.insert(pieces.scales.end(), part.scales.begin(), part.scales.end());
      }
      EXPECT_EQ(whole.y, pieces.y) << dtype_name(t) << " mode " << mode << ": y / q depends on the layout";
      EXPECT_EQ(whole.r_out, pieces.r_out) << dtype_name(t) << " mode " << mode << ": r_out depends on the layout";
      EXPECT_EQ(whole.scales, pieces.scales) << dtype_name(t) << " mode " << mode << ": scales depend on the layout";
    }
}

// The quantised store divides the plain op's fp32 y (never rounded to 16 bits under
// Cast::fp32) by the scale: q equals the library's own conversions applied to forward()'s
// f32 y, bit for bit, with the scale computed from it by the documented rule.
TEST(FusedBits, QuantIsTheFp32YQuantised) {
  const std::int64_t rows = 16, cols = 512;
  for (DType x : {DType::f32, DType::bf16, DType::f16})
    for (DType q : {DType::f8e4m3, DType::i8})
      for (QuantScale kind : {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group})
        for (bool pow2 : {false, true})
          for (QuantDivision division : {QuantDivision::exact, QuantDivision::reciprocal}) {
            if (kind == QuantScale::static_tensor && pow2) continue;
            const std::uint64_t seed =
                testing::seed_of({static_cast<int>(x), static_cast<int>(q), static_cast<int>(kind)});
            const HostTensor xs = random_matrix(x, rows, cols, seed);
            // f32 weight: forward() may then give an f32 y for 16-bit x too.
            HostTensor w = testing::make_vector(DType::f32, cols);
            reference::fill_normal(w.view, seed + 1, 1.0, 0.3);
            HostTensor y = testing::make_tensor(DType::f32, 1, rows, cols);
            forward(xs.view, w.view, y.view);
            const std::int64_t group = kind == QuantScale::per_group ? 64 : cols;
            HostTensor scales = kind == QuantScale::static_tensor ? testing::make_vector(DType::f32, 1)
                                : kind == QuantScale::per_row     ? testing::make_vector(DType::f32, rows)
                                                              : testing::make_tensor(DType::f32, 1, rows, cols / group);
            const float static_scale = 0.0123f;
            if (kind == QuantScale::static_tensor) std::memcpy(scales.view.data, &static_scale, 4);
            HostTensor ub = testing::make_vector(DType::f32, 1);
            const float ub_value = 2.0f;
            std::memcpy(ub.view.data, &ub_value, 4);
            Quant quant;
            quant.kind = kind;
            quant.scales = scales.view;
            quant.group_size = group;
            quant.pow2_scales = pow2;
            quant.division = division;
            if (kind != QuantScale::static_tensor && pow2) quant.scale_ub = ub.view;  // sometimes capped
            HostTensor out = testing::make_tensor(q, 1, rows, cols);
            quant_forward(xs.view, w.view, out.view, quant);

            const float* yf = static_cast<const float*>(y.view.data);
            const float* sf = static_cast<const float*>(scales.view.data);
            const float qmax = quant_max(q);
            for (std::int64_t r = 0; r < rows; ++r)
              for (std::int64_t g = 0; g < cols / group; ++g) {
                float s = static_scale;
                if (kind != QuantScale::static_tensor) {
                  float amax = 0;
                  for (std::int64_t j = g * group; j < (g + 1) * group; ++j)
                    amax = std::max(amax, std::fabs(yf[r * cols + j]));
                  if (quant.scale_ub) amax = std::min(amax, ub_value);
                  s = std::max(amax / qmax, quant_min_scale(q));
                  if (pow2) s = std::exp2(std::ceil(std::log2(s)));
                  ASSERT_EQ(sf[r * (cols / group) + g], s) << "scale of row " << r << " group " << g;
                }
                for (std::int64_t j = g * group; j < (g + 1) * group; ++j) {
                  const float t =
                      division == QuantDivision::reciprocal ? yf[r * cols + j] * (1 / s) : yf[r * cols + j] / s;
                  const std::int64_t at = r * cols + j;
                  if (q == DType::f8e4m3) {
                    ASSERT_EQ(static_cast<const std::uint8_t*>(out.view.data)[at], float_to_f8e4m3_bits(t))
                        << dtype_name(x) << " " << quant_scale_name(kind) << " element " << at;
                  } else {
                    ASSERT_EQ(static_cast<const std::int8_t*>(out.view.data)[at], float_to_i8(t))
                        << dtype_name(x) << " " << quant_scale_name(kind) << " element " << at;
                  }
                }
              }
          }
}

// The static-scale quantised store of two rows of f32 x, +1s then -1s, with weight w and
// eps 0: rstd is 1, so y is +-(w + 0) exactly and the codes are those of (+-w) / s.
HostTensor quantise_weights_as_y(Backend b, DType q, const std::vector<float>& w, float s,
                                 QuantDivision division = QuantDivision::exact) {
  const std::int64_t cols = static_cast<std::int64_t>(w.size());
  HostTensor x = testing::make_tensor(DType::f32, 1, 2, cols), wt = testing::make_vector(DType::f32, cols);
  for (std::int64_t i = 0; i < 2 * cols; ++i) store_from_double(x.view.data, DType::f32, i, i < cols ? 1.0 : -1.0);
  std::memcpy(wt.view.data, w.data(), cols * 4);
  HostTensor scale = testing::make_vector(DType::f32, 1), out = testing::make_tensor(q, 1, 2, cols);
  std::memcpy(scale.view.data, &s, 4);
  Quant quant;
  quant.kind = QuantScale::static_tensor;
  quant.scales = scale.view;
  quant.division = division;
  Params p;
  p.eps = 0.0;
  if (b == Backend::cuda) {
    const testing::DeviceMirror dx(x), dw(wt), ds(scale), dq(out);
    quant.scales = ds.view;
    quant_forward(dx.view, dw.view, dq.view, quant, p);
    testing::device_synchronize();
    dq.download_into(out);
  } else {
    quant_forward(x.view, wt.view, out.view, quant, p);
  }
  return out;
}

// q = sat(y / s) with the correctly rounded division, not y * (1/s): rows of ones with eps 0
// normalise to exactly 1, so y_j is the weight w_j = s * t_j, chosen with t_j on a tie
// between two codes (or next to one) where y * fl(1/s) rounds to another float than t_j.
// Those elements must go to the code of t_j (ties to even); a reciprocal would miss them.
// The codes of values whose quotient by the scale sits at, or next to, a rounding boundary
// of the code: there y * (1/s) and the correctly rounded y / s give different codes, and
// the backend must give the quotient's (QuantDivision::exact) or the product's
// (QuantDivision::reciprocal, 1/s rounded once to fp32).
void quant_divides_by_the_scale(Backend b, QuantDivision division) {
  const bool reciprocal = division == QuantDivision::reciprocal;
  const std::int64_t cols = 256;
  int telling = 0;  // elements where the reciprocal would give another code
  for (DType q : {DType::f8e4m3, DType::i8})
    for (float s : {3.0f, 5.0f, 7.0f, 0.3f, 1.7f, 11.0f, 0.0123f}) {
      // Candidates: the midpoints between codes, and the floats next to them.
      std::vector<float> ts;
      if (q == DType::f8e4m3) {
        for (std::uint8_t c = 0; c < 0x7e; ++c) {
          const float mid = (f8e4m3_bits_to_float(c) + f8e4m3_bits_to_float(static_cast<std::uint8_t>(c + 1))) / 2;
          ts.insert(ts.end(), {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)});
        }
      } else {
        for (int k = -127; k < 127; ++k) ts.push_back(static_cast<float>(k) + 0.5f);
      }
      std::vector<float> w;
      for (float t : ts) {
        const float y = s * t;
        if (static_cast<double>(y) != static_cast<double>(s) * t) continue;  // y must be s * t exactly
        const bool differs = q == DType::f8e4m3 ? float_to_f8e4m3_bits(y / s) != float_to_f8e4m3_bits(y * (1 / s))
                                                : float_to_i8(y / s) != float_to_i8(y * (1 / s));
        if (differs) w.push_back(y);
      }
      if (w.empty()) continue;
      telling += static_cast<int>(w.size());
      while (static_cast<std::int64_t>(w.size()) < cols) w.push_back(w[w.size() % 7]);
      w.resize(cols);
      const HostTensor out = quantise_weights_as_y(b, q, w, s, division);
      for (std::int64_t i = 0; i < 2 * cols; ++i) {
        const float y = i < cols ? w[i] : -w[i - cols];
        const float t = reciprocal ? y * (1 / s) : y / s;
        const double want = q == DType::f8e4m3 ? f8e4m3_bits_to_float(float_to_f8e4m3_bits(t)) : float_to_i8(t);
        ASSERT_EQ(load_as_double(out.view.data, q, i), want)
            << testing::backend_name(b) << " " << dtype_name(q) << " " << quant_division_name(division) << " s=" << s
            << " y=" << y;
      }
    }
  EXPECT_GT(telling, 20) << "too few values tell a division from a multiplication by the reciprocal";
}

TEST(FusedBits, QuantDividesByTheScale) { quant_divides_by_the_scale(Backend::cpu, QuantDivision::exact); }
TEST(FusedBits, QuantMultipliesByTheReciprocal) { quant_divides_by_the_scale(Backend::cpu, QuantDivision::reciprocal); }

TEST(FusedBits, QuantDividesByTheScaleOnCuda) {
  testing::skip_without_backend(Backend::cuda);
  if (IsSkipped()) return;  // the skip above returns from its own function only
  quant_divides_by_the_scale(Backend::cuda, QuantDivision::exact);
  quant_divides_by_the_scale(Backend::cuda, QuantDivision::reciprocal);
}

// Static scales and values at the edges of the quotient's range: scales outside 2^-64..2^64
// (which the CUDA store divides rather than correcting a product by the reciprocal), zero,
// infinite, NaN and negative ones; values that are zeros of either sign, subnormal, huge,
// infinite or NaN. Every code is the one of the correctly rounded y / s, byte for byte; with
// QuantDivision::reciprocal, of y * (1/s) where 2^-64 <= |s| <= 2^64 and of y / s elsewhere.
void quant_edge_scales(Backend b, QuantDivision division) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> values = {0.0f,   -0.0f, 1e-40f, -3e-39f, 1e-30f, 0.37f, 1.0f, -3.3f,   448.0f,
                                     464.0f, 1e10f, -3e38f, 3.4e38f, inf,    -inf,  nan,  0.0625f, 2047.9f};
  const std::int64_t cols = static_cast<std::int64_t>(values.size());
  for (DType q : {DType::f8e4m3, DType::i8})
    for (float s : {0x1p-70f, 0x1p70f, 1e-38f, 3e38f, 0x1p-64f, 0x1p64f, -0.37f, 0.0f, -0.0f, inf, nan, 1e-45f}) {
      const HostTensor out = quantise_weights_as_y(b, q, values, s, division);
      const auto* got = static_cast<const std::uint8_t*>(out.view.data);
      const bool multiply =
          division == QuantDivision::reciprocal && std::fabs(s) >= 0x1p-64f && std::fabs(s) <= 0x1p64f;
      for (std::int64_t i = 0; i < 2 * cols; ++i) {
        // y = x * rstd * (w + offset), offset 0: a weight of -0 gives +0 in the first row.
        const float y = (i < cols ? 1.0f : -1.0f) * (values[i % cols] + 0.0f);
        const float t = multiply ? y * (1 / s) : y / s;
        const std::uint8_t want =
            q == DType::f8e4m3 ? float_to_f8e4m3_bits(t) : static_cast<std::uint8_t>(float_to_i8(t));
        // A NaN made here (0 / 0, inf / inf) has the sign the processor gives it (x86: negative,
        // CUDA: positive): any fp8 NaN code is that NaN.
        const bool nan_code = q == DType::f8e4m3 && t != t && (got[i] & 0x7f) == 0x7f;
        if (nan_code) continue;
        ASSERT_EQ(static_cast<int>(got[i]), static_cast<int>(want))
            << testing::backend_name(b) << " " << dtype_name(q) << " " << quant_division_name(division) << " s=" << s
            << " y=" << y;
      }
    }
}

TEST(FusedBits, QuantEdgeScales) {
  quant_edge_scales(Backend::cpu, QuantDivision::exact);
  quant_edge_scales(Backend::cpu, QuantDivision::reciprocal);
}

TEST(FusedBits, QuantEdgeScalesOnCuda) {
  testing::skip_without_backend(Backend::cuda);
  if (IsSkipped()) return;  // the skip above returns from its own function only
  quant_edge_scales(Backend::cuda, QuantDivision::exact);
  quant_edge_scales(Backend::cuda, QuantDivision::reciprocal);
}

// The quantised codes equal the oracle's exact ones except where the exact quotient lies
// within rounding error of a code boundary, which is rare: a backend that rounded y to 16
// bits first, or multiplied by 1/s, would pass compare_quantized's one-step allowance far
// more often than this.
TEST(FusedBits, QuantCodesAreRarelyOneStepOff) {
  for (DType q : {DType::f8e4m3, DType::i8})
    for (QuantScale kind : {QuantScale::per_row, QuantScale::per_group})
      for (QuantDivision division : {QuantDivision::exact, QuantDivision::reciprocal}) {
        FusedCase c;
        c.x = c.y = DType::bf16;
        c.w = DType::bf16;
        c.quant = testing::quant_case(kind, q);
        c.quant->division = division;
        c.rows = 64;
        c.cols = 4096;
        const testing::FusedOutcome o = testing::run_fused_case(Backend::cpu, c);
        ASSERT_TRUE(o.ran) << o.message;
        EXPECT_TRUE(o.y_cmp.passed()) << o.y_cmp.describe();
        EXPECT_LT(static_cast<double>(o.y_cmp.boundary), 1e-3 * static_cast<double>(o.y_cmp.checked))
            << c.describe() << ": " << o.y_cmp.boundary << " codes one step from the exact one";
      }
}

}  // namespace
}  // namespace rmsnorm
