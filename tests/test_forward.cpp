// Values of forward against the fp64 oracle, on the CPU backend always and on the CUDA
// backend when a device is there (the "cuda" instances skip otherwise, saying why).
// Outputs are poisoned before each call, so an unwritten element fails, and the bytes
// around every output must still be poison afterwards. See forward_case.h.
#include <gtest/gtest.h>

#include <tuple>
#include <vector>

#include "backend_test.h"
#include "forward_case.h"
#include "support.h"

namespace rmsnorm {
namespace {

using testing::allowed_combos;
using testing::Backend;
using testing::Case;
using testing::Combo;
using testing::Sweep;

// The awkward column counts: 1..8, primes and near-powers of two, every strategy boundary
// of the CUDA backend (1024/512 for warp rows, 32768 for block rows), model widths (4096,
// 5120, 8192, 12288, 16384), and lengths only a streamed row can take.
const std::vector<std::int64_t> kAllCols = {1,    2,    3,     7,     8,     17,    64,    100,  127,
                                            128,  257,  512,   1000,  1024,  1031,  2048,  4096, 5120,
                                            8191, 8192, 12288, 16384, 32768, 65536, 262144};
const std::vector<std::int64_t> kAllRows = {1, 3, 17, 256};
// Above this many elements per case, fewer rows: the oracle is a slow, naive loop and the
// CPU suite must stay within minutes on two cores.
constexpr std::int64_t kMaxElements = std::int64_t{1} << 21;

// ---------------------------------------------------------------------------------------
// Sweeps over every allowed dtype combination
// ---------------------------------------------------------------------------------------

class ForwardCombo : public ::testing::TestWithParam<std::tuple<Backend, Combo>> {
 protected:
  void SetUp() override { testing::skip_without_backend(backend()); }
  Backend backend() const { return std::get<0>(GetParam()); }
  const Combo& combo() const { return std::get<1>(GetParam()); }
};

// Both casts, offsets 0 and 1 (with a weight), with and without rstd, on small and
// medium rows.
TEST_P(ForwardCombo, CastsOffsetsAndRstd) {
  Sweep sweep(backend());
  for (Cast cast : {Cast::fp32, Cast::llama})
    for (double offset : {0.0, 1.0}) {
      if (offset != 0.0 && !combo().w) continue;
      for (bool rstd : {true, false})
        for (std::int64_t cols : {1, 3, 8, 17, 100, 128, 1031, 4096})
          for (std::int64_t rows : {1, 17}) {
            Case c;
            c.combo = combo();
            c.cast = cast;
            c.offset = offset;
            c.rstd = rstd;
            c.rows = rows;
            c.cols = cols;
            if (!sweep.run(c)) return;
          }
    }
}

// Every column count, with up to 256 rows (fewer for the longest rows). The cast
// alternates along the list so both see short and long rows.
TEST_P(ForwardCombo, AllColumnCounts) {
  Sweep sweep(backend());
  for (std::size_t i = 0; i < kAllCols.size(); ++i)
    for (std::int64_t rows : kAllRows) {
      const std::int64_t cols = kAllCols[i];
      if (rows > 1 && rows * cols > kMaxElements) continue;
      Case c;
      c.combo = combo();
      c.cast = i % 2 ? Cast::llama : Cast::fp32;
      c.rows = rows;
      c.cols = cols;
      if (!sweep.run(c)) return;
    }
}

std::vector<std::tuple<Backend, Combo>> backend_combos() {
  std::vector<std::tuple<Backend, Combo>> out;
  for (Backend b : {Backend::cpu, Backend::cuda})
    for (const Combo& c : allowed_combos(b)) out.emplace_back(b, c);
  return out;
}

INSTANTIATE_TEST_SUITE_P(, ForwardCombo, ::testing::ValuesIn(backend_combos()),
                         [](const ::testing::TestParamInfo<std::tuple<Backend, Combo>>& info) {
                           return std::string(testing::backend_name(std::get<0>(info.param))) + "_" +
                                  std::get<1>(info.param).name();
                         });

// ---------------------------------------------------------------------------------------
// Layouts, aliasing, parameters (a few representative dtype combinations each)
// ---------------------------------------------------------------------------------------

class Forward : public testing::BackendTest {
 protected:
  // f32, f16, bf16 (same dtype), bf16 with an f32 weight and f32 output, bf16 without a
  // weight, and f64 on the CPU.
  std::vector<Combo> combos() const {
    std::vector<Combo> out = {{DType::f32, DType::f32, DType::f32},
                              {DType::f16, DType::f16, DType::f16},
                              {DType::bf16, DType::bf16, DType::bf16},
                              {DType::bf16, DType::f32, DType::f32},
                              {DType::bf16, std::nullopt, DType::bf16}};
    if (backend() == Backend::cpu) out.push_back({DType::f64, DType::f64, DType::f64});
    return out;
  }
};

// row_stride = cols + pad; odd pads break the 16-byte alignment of every other row.
TEST_P(Forward, StridedRows) {
  Sweep sweep(backend());
  for (const Combo& combo : combos())
    for (std::int64_t cols : {1, 8, 64, 100, 1024, 4096})
      for (std::int64_t pad : {1, 3, 8, 13}) {
        Case c;
        c.combo = combo;
        c.rows = 17;
        c.cols = cols;
        c.row_stride = cols + pad;
        c.cast = pad % 2 ? Cast::fp32 : Cast::llama;
        if (!sweep.run(c)) return;
      }
}

// (batch, rows, cols) with a gap between batches.
TEST_P(Forward, BatchedViews) {
  Sweep sweep(backend());
  for (const Combo& combo : combos())
    for (std::int64_t cols : {64, 128, 1031, 4096})
      for (std::int64_t pad : {0, 8})
        for (std::int64_t gap : {37, 64}) {
          Case c;
          c.combo = combo;
          c.batch = 3;
          c.rows = 5;
          c.cols = cols;
          c.row_stride = cols + pad;
          c.batch_stride = c.rows * c.row_stride + gap;
          if (!sweep.run(c)) return;
        }
}

// The Q (or K) part of a fused QKV buffer (tokens, 3 * heads, head_dim): x is the middle
// `heads` of each token, batch_stride is the token stride, and the other two thirds must
// stay untouched. Out of place and in place (the usual QK-norm).
TEST_P(Forward, QkvSlice) {
  Sweep sweep(backend());
  for (const Combo& combo : combos()) {
    if (combo.y != combo.x) continue;  // in place needs y's dtype == x's
    for (std::int64_t tokens : {1, 7, 33})
      for (std::int64_t heads : {2, 8})
        for (std::int64_t hd : {64, 128, 256})
          for (bool in_place : {false, true}) {
            Case c;
            c.combo = combo;
            c.batch = tokens;
            c.rows = heads;
            c.cols = hd;
            c.row_stride = hd;
            c.batch_stride = 3 * heads * hd;
            c.x_lead = c.y_lead = heads * hd;  // skip the Q part
            c.trail = heads * hd;              // the last token's V part
            c.in_place = in_place;
            if (!sweep.run(c)) return;
          }
  }
}

TEST_P(Forward, InPlace) {
  Sweep sweep(backend());
  for (const Combo& combo : combos()) {
    if (combo.y != combo.x) continue;
    for (std::int64_t cols : {1, 17, 128, 1031, 4096, 8192})
      for (std::int64_t rows : {1, 17})
        for (std::int64_t pad : {0, 5}) {
          Case c;
          c.combo = combo;
          c.rows = rows;
          c.cols = cols;
          c.row_stride = cols + pad;
          c.in_place = true;
          if (!sweep.run(c)) return;
        }
  }
}

// Base pointers one element past a 16-byte boundary: x, y, the weight, and mixes.
TEST_P(Forward, MisalignedPointers) {
  Sweep sweep(backend());
  struct Leads {
    std::int64_t x, y, w;
  };
  for (const Combo& combo : combos())
    for (Leads lead : {Leads{1, 1, 0}, Leads{1, 0, 0}, Leads{0, 1, 0}, Leads{0, 0, 1}, Leads{1, 1, 1}})
      for (std::int64_t cols : {8, 64, 128, 1000, 1024, 4096, 8192})
        for (std::int64_t rows : {1, 3, 17}) {
          Case c;
          c.combo = combo;
          c.rows = rows;
          c.cols = cols;
          c.x_lead = lead.x;
          c.y_lead = lead.y;
          c.w_lead = lead.w;
          if (!sweep.run(c)) return;
        }
}

// eps at both common values, inputs far below and above 1 (where eps matters, and where
// x^2 leaves f16's range: the sum must be fp32).
TEST_P(Forward, EpsAndScale) {
  Sweep sweep(backend());
  for (const Combo& combo : combos())
    for (double eps : {1e-6, 1e-5})
      for (double scale : {1e-3, 1.0, 1e3})
        for (std::int64_t cols : {64, 1031, 4096})
          for (Cast cast : {Cast::fp32, Cast::llama}) {
            Case c;
            c.combo = combo;
            c.rows = 17;
            c.cols = cols;
            c.eps = eps;
            c.scale = scale;
            c.cast = cast;
            if (!sweep.run(c)) return;
          }
}

// Each strategy forced. On CUDA a strategy that cannot serve the shape (plan_forward says
// unsupported) must make forward refuse with Code::unsupported and write nothing; every
// strategy must serve some of the shapes, and long_row all of them. On the CPU the
// strategy is ignored: every call runs.
TEST_P(Forward, ForcedStrategies) {
  Sweep sweep(backend());
  for (const Combo& combo : {Combo{DType::f32, DType::f32, DType::f32}, Combo{DType::f16, DType::f16, DType::f16},
                             Combo{DType::bf16, DType::bf16, DType::bf16}, Combo{DType::bf16, DType::f32, DType::f32}})
    for (Strategy s : {Strategy::warp_rows, Strategy::block_row, Strategy::long_row, Strategy::cluster_row}) {
      int served = 0, cases = 0;
      for (std::int64_t cols : {1,    7,    64,   127,   128,   512,   520,   1000,  1024,   1031,  1040,
                                2048, 4096, 8192, 16384, 16392, 32768, 32776, 65536, 131072, 262144})
        for (std::int64_t lead : {0, 1}) {
          Case c;
          c.combo = combo;
          c.rows = cols > 65536 ? 1 : cols > 8192 ? 3 : 17;
          c.cols = cols;
          c.x_lead = c.y_lead = lead;
          c.strategy = s;
          c.cast = lead ? Cast::llama : Cast::fp32;
          const testing::Outcome o = testing::run_case(backend(), c);
          ++cases;
          if (o.ran) ++served;
          if (!sweep.judge(c, o)) return;
        }
      if (backend() == Backend::cpu || s == Strategy::long_row) {
        EXPECT_EQ(served, cases) << strategy_name(s) << " on " << combo.name();
      } else {
        EXPECT_GT(served, 0) << strategy_name(s) << " served none of the shapes for " << combo.name();
      }
    }
}

// Cast::llama reproduces Hugging Face's roundings, which the oracle copies: the output
// must equal the oracle's rounded value exactly except where the fp32 sum of squares
// (hence x * rstd before its rounding to x's dtype) lands on the other side of a rounding
// boundary, which is rare. A backend that, say, skipped the intermediate rounding would
// be within tolerance but far below 99%.
TEST_P(Forward, LlamaCastMatchesOracleBits) {
  for (const Combo& combo : {Combo{DType::bf16, DType::bf16, DType::bf16}, Combo{DType::bf16, DType::f32, DType::f32},
                             Combo{DType::f16, DType::f16, DType::f16}, Combo{DType::f16, DType::f32, DType::f32}})
    for (std::int64_t cols : {17, 1000, 4096, 5120}) {
      Case c;
      c.combo = combo;
      c.cast = Cast::llama;
      c.rows = 64;
      c.cols = cols;
      const testing::Outcome o = testing::run_case(backend(), c);
      ASSERT_TRUE(o.ran) << c.describe() << ": " << o.message;
      EXPECT_TRUE(o.y_cmp.passed()) << c.describe() << ": " << o.y_cmp.describe();
      std::int64_t exact = 0, i = 0;
      const TensorView& y = o.y.view;
      for (std::int64_t r = 0; r < y.rows; ++r)
        for (std::int64_t j = 0; j < y.cols; ++j, ++i)
          exact += load_as_double(y.data, y.dtype, r * y.row_stride + j) == o.ref.y[static_cast<std::size_t>(i)];
      EXPECT_GE(static_cast<double>(exact), 0.99 * static_cast<double>(i))
          << c.describe() << ": only " << exact << " of " << i << " elements equal the oracle's bits";
    }
}

INSTANTIATE_TEST_SUITE_P(, Forward, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return std::string(testing::backend_name(info.param));
                         });

}  // namespace
}  // namespace rmsnorm
