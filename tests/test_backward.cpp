// Backward values against the fp64 oracle, on the CPU backend and (when a device is there)
// the CUDA backend: dx and dw over dtypes, shapes, strides, weight offsets, with and
// without a saved rstd, in place (dx == dy), every strategy; dw bit-identical over
// repeated runs; and the backward's argument errors.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "backend_test.h"
#include "forward_case.h"
#include "harness.h"
#include "oracle.h"
#include "support.h"
#include "tolerances.h"

namespace rmsnorm::testing {
namespace {

using reference::Comparison;

struct BackwardCase {
  DType x = DType::bf16;
  std::optional<DType> w = DType::bf16;  // none: no weight, no dw
  DType dw = DType::bf16;
  std::int64_t batch = 1, rows = 4, cols = 256;
  std::int64_t batch_stride = -1, row_stride = -1;
  std::int64_t lead = 0;  // misaligns x, dy, dx by this many elements
  bool saved_rstd = false;
  bool in_place = false;  // dx is dy
  double offset = 0.0;
  Strategy strategy = Strategy::automatic;
  std::size_t ws_offset = 0;  // CUDA: bytes the workspace starts past its allocation's start
  std::string describe() const {
    return std::string(dtype_name(x)) + " w=" + (w ? dtype_name(*w) : "none") + " dw=" + dtype_name(dw) + " (" +
           std::to_string(batch) + "x" + std::to_string(rows) + "x" + std::to_string(cols) +
           ") rs=" + std::to_string(row_stride) + " lead=" + std::to_string(lead) + (saved_rstd ? " rstd" : "") +
           (in_place ? " in-place" : "") + " offset=" + std::to_string(offset) + " " + strategy_name(strategy) +
           (ws_offset ? " workspace+" + std::to_string(ws_offset) : "");
  }
};

struct BackwardOutcome {
  bool unsupported = false;  // a forced strategy that cannot serve the shape
  Comparison dx, dw;
  std::int64_t dx_stray = 0;
  std::vector<unsigned char> dx_bytes, dw_bytes;
};

BackwardOutcome run_backward(Backend b, const BackwardCase& c, std::uint64_t seed) {
  HostTensor x = make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 2);
  HostTensor dy = make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 2);
  HostTensor dx = make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 2);
  reference::fill_normal(x.view, seed);
  reference::fill_normal(dy.view, seed + 1);
  std::optional<HostTensor> w, dw;
  if (c.w) {
    w = make_vector(*c.w, c.cols);
    reference::fill_normal(w->view, seed + 2, 1.0, 0.1);
    dw = make_vector(c.dw, c.cols, 0, 2);
  }
  Params params;
  params.weight_offset = c.offset;
  params.strategy = c.strategy;
  const std::optional<TensorView> wv = w ? std::optional<TensorView>(w->view) : std::nullopt;
  const reference::BackwardResult ref = reference::backward(dy.view, x.view, wv, params);
  std::optional<HostTensor> rstd;
  if (c.saved_rstd) {
    rstd = make_vector(c.x == DType::f64 ? DType::f64 : DType::f32, x.view.total_rows());
    for (std::size_t i = 0; i < ref.rstd.size(); ++i)
      store_from_double(rstd->view.data, rstd->view.dtype, static_cast<std::int64_t>(i), ref.rstd[i]);
  }

  BackwardOutcome out;
  const auto opt = [](const std::optional<HostTensor>& t) {
    return t ? std::optional<TensorView>(t->view) : std::nullopt;
  };
  if (b == Backend::cpu) {
    TensorView dxv = c.in_place ? dy.view : dx.view;
    std::vector<unsigned char> ws(backward_workspace_size(x.view, opt(dw), params) + 1);
    backward(dy.view, x.view, wv, opt(rstd), dxv, opt(dw), params, ws.data(), ws.size() - 1);
  } else {
    DeviceMirror dx_d(x), dy_d(dy), dxo_d(dx);
    std::optional<DeviceMirror> w_d, dw_d, r_d;
    if (w) w_d.emplace(*w);
    if (dw) dw_d.emplace(*dw);
    if (rstd) r_d.emplace(*rstd);
    const auto dopt = [](const std::optional<DeviceMirror>& m) {
      return m ? std::optional<TensorView>(m->view) : std::nullopt;
    };
    const std::size_t bytes = backward_workspace_size(dx_d.view, dopt(dw_d), params);
    DeviceBuffer ws(bytes + c.ws_offset + 1);
    ws.fill(0xFF);  // a stale workspace must not leak into dw
    try {
      backward(dy_d.view, dx_d.view, dopt(w_d), dopt(r_d), c.in_place ? dy_d.view : dxo_d.view, dopt(dw_d), params,
               ws.data() + c.ws_offset, bytes);
    } catch (const Error& e) {
      if (e.code() == Code::unsupported && c.strategy != Strategy::automatic) {
        out.unsupported = true;
        return out;
      }
      throw;
    }
    device_synchronize();
    if (c.in_place)
      dy_d.download_into(dy);
    else
      dxo_d.download_into(dx);
    if (dw) dw_d->download_into(*dw);
  }
  const HostTensor& got = c.in_place ? dy : dx;
  out.dx = reference::compare_scaled(got.view, ref.dx, ref.dx_scale, reference::dx_tolerance(c.x, c.cols));
  out.dx_stray = reference::count_stray_writes(got.bytes, got.view);
  out.dx_bytes = got.bytes;
  if (dw) {
    out.dw = reference::compare_vector_scaled(dw->view.data, c.dw, ref.dw, ref.dw_scale,
                                              reference::dw_tolerance(c.x, c.dw, x.view.total_rows(), c.cols));
    out.dw_bytes = dw->bytes;
  }
  return out;
}

void expect_good(Backend b, const BackwardCase& c, std::uint64_t seed) {
  const BackwardOutcome o = run_backward(b, c, seed);
  if (o.unsupported) return;
  EXPECT_TRUE(o.dx.passed()) << c.describe() << ": dx " << o.dx.describe();
  if (!c.in_place) {
    EXPECT_EQ(o.dx_stray, 0) << c.describe() << ": dx padding written";
  }
  if (c.w) {
    EXPECT_TRUE(o.dw.passed()) << c.describe() << ": dw " << o.dw.describe();
  }
}

using Backward = testing::BackendTest;

TEST_P(Backward, DtypesAndWeights) {
  for (DType x : dtypes())
    for (int wk = 0; wk < 3; ++wk) {
      BackwardCase c;
      c.x = x;
      if (wk == 0) c.w = std::nullopt;
      if (wk == 1) c.w = x;
      if (wk == 2) {
        if (x == DType::f32 || x == DType::f64) continue;
        c.w = DType::f32;
      }
      for (DType dwt : {c.w.value_or(x), DType::f32}) {
        if (c.w && dwt != *c.w && (x == DType::f64)) continue;
        c.dw = dwt;
        for (std::int64_t cols : {1, 7, 64, 128, 1000, 4096}) {
          c.cols = cols;
          c.rows = cols > 1000 ? 9 : 37;
          expect_good(GetParam(), c, seed_of({static_cast<int>(x), wk, cols}));
        }
      }
    }
}

TEST_P(Backward, ShapeSweep) {
  for (DType x : {DType::bf16, DType::f32})
    for (std::int64_t cols : {2, 3, 17, 127, 257, 512, 1031, 2048, 5120, 8192, 8200, 16384, 32768, 65536}) {
      BackwardCase c;
      c.x = x;
      c.w = x;
      c.dw = x;
      c.cols = cols;
      c.rows = cols >= 16384 ? (GetParam() == Backend::cpu ? 3 : 67) : 45;
      expect_good(GetParam(), c, seed_of({cols, static_cast<int>(x)}));
    }
}

TEST_P(Backward, ManyRowsDwToleranceGrowsWithRows) {
  BackwardCase c;
  c.x = DType::bf16;
  c.dw = DType::f32;
  c.cols = 128;
  c.rows = GetParam() == Backend::cpu ? 20000 : 100000;
  expect_good(GetParam(), c, 77);
}

// Block rows loop over the rows (one partial dw row a block) and, on sm_90, stage each
// step's rows in shared memory during the previous step (two buffers in turn): many steps a
// block, a last step with fewer rows than the block holds, rstd saved or recomputed.
TEST_P(Backward, BlockRowsLoopOverManyRows) {
  std::size_t k = 0;
  for (DType x : {DType::bf16, DType::f16, DType::f32})
    for (std::int64_t cols : {2048, 4096, 8192, 16384}) {
      if (x == DType::f32 && cols > 8192) continue;  // a cluster row
      BackwardCase c;
      c.x = x;
      c.w = x;
      c.dw = DType::f32;
      c.cols = cols;
      c.rows = GetParam() == Backend::cpu ? 13 : 1999;
      c.saved_rstd = k++ % 2 == 1;
      expect_good(GetParam(), c, seed_of({static_cast<int>(x), cols}));
    }
}

TEST_P(Backward, StridedBatchedMisalignedAndSavedRstd) {
  for (bool saved : {false, true})
    for (std::int64_t lead : {0, 1}) {
      BackwardCase c;
      c.x = DType::f16;
      c.w = DType::f16;
      c.dw = DType::f32;
      c.batch = 3;
      c.rows = 5;
      c.cols = 96;
      c.row_stride = 104;
      c.batch_stride = 5 * 104 + 24;
      c.lead = lead;
      c.saved_rstd = saved;
      expect_good(GetParam(), c, seed_of({saved, lead}));
    }
}

TEST_P(Backward, InPlaceAndGemmaOffset) {
  for (double offset : {0.0, 1.0})
    for (std::int64_t cols : {64, 4096, 20000}) {
      BackwardCase c;
      c.in_place = true;
      c.offset = offset;
      c.cols = cols;
      c.rows = 11;
      expect_good(GetParam(), c, seed_of({cols, static_cast<int>(offset)}));
    }
}

TEST_P(Backward, DwIsBitIdenticalAcrossRuns) {
  for (std::int64_t cols : {128, 4096, 65536}) {
    BackwardCase c;
    c.x = DType::bf16;
    c.dw = DType::f32;
    c.cols = cols;
    c.rows = cols == 65536 ? 40 : 3000;
    const BackwardOutcome a = run_backward(GetParam(), c, 5);
    const BackwardOutcome b = run_backward(GetParam(), c, 5);
    EXPECT_TRUE(a.dw.passed()) << c.describe() << ": " << a.dw.describe();
    EXPECT_EQ(a.dw_bytes, b.dw_bytes) << c.describe() << ": dw differs between two runs";
    EXPECT_EQ(a.dx_bytes, b.dx_bytes) << c.describe() << ": dx differs between two runs";
  }
}

// Rows past 8 blocks' registers (131072 16-bit columns, 65536 f32) up to twice that: on
// CUDA, cluster rows of 8 blocks whose slices come in two pieces (the second read from the
// stage's second buffer, or from global memory for unaligned rows; its dw sums in shared
// memory; an f32 weight of 16-bit rows read from global memory). A row one chunk past the
// registers, an unaligned length, and full pieces; a weight of x's dtype, f32, or none;
// rstd saved or recomputed; dx in place of dy; more rows than the resident clusters, so that
// each cluster's buffers are refilled row after row. dx and dw against the oracle, and the
// same bytes from a second run.
TEST_P(Backward, LongRowsInTwoPieces) {
  std::size_t k = 0;
  for (DType x : {DType::bf16, DType::f16, DType::f32}) {
    const std::int64_t regs = x == DType::f32 ? 65536 : 131072;
    for (std::int64_t cols : {regs + (x == DType::f32 ? 4 : 8), regs + regs / 2 + 3, 2 * regs})
      for (std::int64_t lead : {0, 1}) {
        BackwardCase c;
        c.x = x;
        c.w = k % 3 == 2 ? std::nullopt : std::optional<DType>(k % 3 == 1 && x != DType::f32 ? DType::f32 : x);
        c.dw = k % 2 == 0 ? DType::f32 : c.w.value_or(x);
        c.cols = cols;
        c.rows = cols == 2 * regs && lead == 0 ? 37 : 3;
        c.lead = lead;
        c.saved_rstd = k % 4 < 2;
        c.offset = k % 5 == 1 && c.w ? 1.0 : 0.0;
        c.in_place = k % 4 == 3;
        const std::uint64_t seed = seed_of({static_cast<int>(x), cols, lead, 2});
        expect_good(GetParam(), c, seed);
        if (cols == 2 * regs && lead == 0) {
          const BackwardOutcome a = run_backward(GetParam(), c, seed);
          const BackwardOutcome b = run_backward(GetParam(), c, seed);
          EXPECT_EQ(a.dx_bytes, b.dx_bytes) << c.describe() << ": dx differs between two runs";
          EXPECT_EQ(a.dw_bytes, b.dw_bytes) << c.describe() << ": dw differs between two runs";
        }
        ++k;
      }
  }
}

// Rows past the backward's cluster rows (262144 16-bit columns, 131072 f32), with dw wanted
// and the rstd saved, run in column shards on CUDA: the rows' dot products first, then
// each shard a cluster row reading them. dx and dw against the oracle over dtypes, an f32
// weight, Gemma's offset, lengths that are not a multiple of the chunk, misaligned views
// (every array loaded an element at a time), and dx in place of dy.
TEST_P(Backward, LongRowsInColumnShards) {
  std::size_t k = 0;
  for (DType x : {DType::bf16, DType::f16, DType::f32})
    for (std::int64_t cols : {x == DType::f32 ? 140000 : 262152, 300001})
      for (std::int64_t lead : {0, 1}) {
        BackwardCase c;
        c.x = x;
        c.w = k % 2 == 1 && x != DType::f32 ? DType::f32 : x;
        c.dw = k % 3 == 0 ? DType::f32 : *c.w;
        c.cols = cols;
        c.rows = 3;
        c.lead = lead;
        c.saved_rstd = true;
        c.offset = k % 2 == 1 ? 1.0 : 0.0;
        c.in_place = k % 4 == 3;
        expect_good(GetParam(), c, seed_of({static_cast<int>(x), cols, lead}));
        ++k;
      }
}

// dw's partial rows are written and read 16 bytes at a time where the workspace is 16-byte
// aligned, a float at a time where it is not: the same sums in the same order, so the same
// bits. Block rows of one row a block (8192, 16384 columns) and cluster rows (65536), with
// the finalisation's wide form from 16384 columns on 132 SMs.
TEST_P(Backward, DwBitsDoNotDependOnTheWorkspaceAlignment) {
  if (GetParam() == Backend::cpu) GTEST_SKIP() << "the partial rows' layout is the CUDA backend's";
  for (DType x : {DType::bf16, DType::f32})
    for (std::int64_t cols : {8192, 16384, 65536}) {
      BackwardCase c;
      c.x = x;
      c.w = x;
      c.dw = DType::f32;
      c.cols = cols;
      c.rows = cols == 65536 ? 67 : 700;
      const BackwardOutcome aligned = run_backward(GetParam(), c, seed_of({static_cast<int>(x), cols}));
      c.ws_offset = 4;
      const BackwardOutcome shifted = run_backward(GetParam(), c, seed_of({static_cast<int>(x), cols}));
      EXPECT_TRUE(aligned.dw.passed()) << c.describe() << ": " << aligned.dw.describe();
      EXPECT_TRUE(shifted.dw.passed()) << c.describe() << ": " << shifted.dw.describe();
      EXPECT_EQ(aligned.dw_bytes, shifted.dw_bytes) << c.describe() << ": dw depends on the workspace's alignment";
      EXPECT_EQ(aligned.dx_bytes, shifted.dx_bytes) << c.describe() << ": dx depends on the workspace's alignment";
    }
}

TEST_P(Backward, ForcedStrategies) {
  if (GetParam() == Backend::cpu) GTEST_SKIP() << "the CPU backend has one strategy";
  for (Strategy s : {Strategy::warp_rows, Strategy::block_row, Strategy::long_row, Strategy::cluster_row})
    for (std::int64_t cols : {64, 1024, 8192, 24576, 65536})
      for (bool saved : {false, true}) {
        BackwardCase c;
        c.strategy = s;
        c.cols = cols;
        c.rows = 33;
        c.saved_rstd = saved;
        c.dw = DType::f32;
        expect_good(GetParam(), c, seed_of({static_cast<int>(s), cols, saved}));
      }
}

TEST_P(Backward, ZeroRowsGiveZeroDw) {
  BackwardCase c;
  c.rows = 0;
  c.dw = DType::f32;
  const BackwardOutcome o = run_backward(GetParam(), c, 1);
  for (std::size_t i = 0; i < static_cast<std::size_t>(c.cols); ++i) {
    float v;
    std::memcpy(&v, o.dw_bytes.data() + i * 4, 4);
    ASSERT_EQ(v, 0.0f) << "dw[" << i << "] of an empty batch";
  }
}

INSTANTIATE_TEST_SUITE_P(, Backward, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& i) { return backend_name(i.param); });

// Argument errors: the message names the argument, nothing is written.
TEST(BackwardValidation, RefusesBadArguments) {
  const std::int64_t rows = 4, cols = 64;
  HostTensor x = make_tensor(DType::f32, 1, rows, cols), dy = make_tensor(DType::f32, 1, rows, cols);
  HostTensor dx = make_tensor(DType::f32, 1, rows, cols), w = make_vector(DType::f32, cols);
  HostTensor dw = make_vector(DType::f32, cols), dw16 = make_vector(DType::bf16, cols);
  reference::fill_normal(x.view, 1);
  reference::fill_normal(dy.view, 2);
  reference::fill_normal(w.view, 3);
  std::vector<unsigned char> ws(backward_workspace_size(x.view, dw.view));
  const auto expect_error = [&](Code code, const char* name, auto&& call) {
    try {
      call();
      ADD_FAILURE() << "accepted; expected an error naming " << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_TRUE(names_word(e.what(), name)) << "message does not name " << name << ": " << e.what();
    }
    EXPECT_TRUE(all_poisoned(dx.bytes)) << "dx written by a refused call naming " << name;
    EXPECT_TRUE(all_poisoned(dw.bytes)) << "dw written by a refused call naming " << name;
  };
  expect_error(Code::invalid_argument, "workspace", [&] {
    backward(dy.view, x.view, w.view, std::nullopt, dx.view, dw.view, {}, ws.data(), ws.size() - 1);
  });
  expect_error(Code::invalid_argument, "dw", [&] {
    backward(dy.view, x.view, std::nullopt, std::nullopt, dx.view, dw.view, {}, ws.data(), ws.size());
  });
  expect_error(Code::unsupported, "dw",
               [&] { backward(dy.view, x.view, w.view, std::nullopt, dx.view, dw16.view, {}, ws.data(), ws.size()); });
  TensorView shifted = dy.view;
  shifted.data = static_cast<float*>(dy.view.data) + 1;
  shifted.rows = rows - 1;
  TensorView dx_short = dx.view;
  dx_short.rows = rows - 1;
  TensorView x_short = x.view;
  x_short.rows = rows - 1;
  expect_error(Code::invalid_argument, "dx", [&] {
    TensorView dyv = dy.view;
    dyv.rows = rows - 1;
    backward(dyv, x_short, w.view, std::nullopt, shifted, dw.view, {}, ws.data(), ws.size());
  });
  expect_error(Code::invalid_argument, "dy",
               [&] { backward(dx_short, x.view, w.view, std::nullopt, dx.view, dw.view, {}, ws.data(), ws.size()); });
  Params bad;
  bad.eps = -1;
  expect_error(Code::invalid_argument, "eps",
               [&] { backward(dy.view, x.view, w.view, std::nullopt, dx.view, dw.view, bad, ws.data(), ws.size()); });
  const Status st = backward_status(dy.view, x.view, w.view, std::nullopt, dx.view, dw.view, {}, nullptr, 0);
  EXPECT_EQ(st.code, Code::invalid_argument);
  EXPECT_TRUE(names_word(st.message, "workspace")) << st.message;
}

}  // namespace
}  // namespace rmsnorm::testing
