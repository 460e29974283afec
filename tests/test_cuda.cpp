// Properties of the CUDA backend that values alone do not show: batch invariance (a row
// gives the same bits alone or anywhere in a batch), run-to-run determinism, 64-bit
// indexing past 2^31 elements, and stream ordering. Built only with the CUDA backend;
// every test skips when there is no device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "oracle.h"
#include "problem.h"
#include "rmsnorm/rmsnorm.h"
#include "support.h"

namespace rmsnorm {
namespace {

using reference::HostTensor;
using testing::DeviceBuffer;

#define CUDA_OK(call)                                                          \
  do {                                                                         \
    const cudaError_t err_ = (call);                                           \
    ASSERT_EQ(err_, cudaSuccess) << #call << ": " << cudaGetErrorString(err_); \
  } while (0)

class Cuda : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = testing::cuda_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  }
};

const std::vector<DType> kDtypes = {DType::bf16, DType::f16, DType::f32};
const std::vector<Strategy> kStrategies = {Strategy::automatic, Strategy::warp_rows, Strategy::block_row,
                                           Strategy::long_row, Strategy::cluster_row};

// `rows` rows of `cols` on the device, every row a copy of one of `pool`'s rows (row i is
// pool row i % pool_rows): big inputs without generating gigabytes of random numbers on
// the host. Filled by doubling device-to-device copies.
void fill_from_pool(DeviceBuffer& dst, const HostTensor& pool, std::int64_t rows) {
  const std::size_t row_bytes = static_cast<std::size_t>(pool.view.cols) * dtype_size(pool.view.dtype);
  const std::size_t total = static_cast<std::size_t>(rows) * row_bytes;
  std::size_t have = std::min(total, pool.bytes.size());
  dst.upload(pool.bytes.data(), have);
  while (have < total) {
    const std::size_t n = std::min(have, total - have);
    dst.copy_within(have, 0, n);
    have += n;
  }
}

// Sizes of views over whole buffers.
TensorView device_matrix(const DeviceBuffer& b, DType t, std::int64_t rows, std::int64_t cols,
                         std::size_t byte_offset = 0) {
  return TensorView::matrix(b.data() + byte_offset, t, Device::cuda(0), rows, cols);
}

std::optional<Plan> servable(const TensorView& x, const TensorView& y, Strategy s) {
  try {
    return plan_forward(x, y, s);
  } catch (const Error& e) {
    if (e.code() != Code::unsupported) throw;
    return std::nullopt;
  }
}

// ---------------------------------------------------------------------------------------
// Batch invariance
// ---------------------------------------------------------------------------------------

// One row normalised alone, then placed first, in the middle and last of batches of
// several sizes (the other rows are other data): y and rstd of that row must be the same
// bytes every time, under every strategy that serves the shape.
TEST_F(Cuda, BatchInvariance) {
  constexpr std::int64_t kFiller = 7;  // distinct filler rows
  const std::vector<std::int64_t> batches = {2, 3, 64, 1000, 4097};
  const std::int64_t max_rows = 4097;
  for (DType t : kDtypes)
    for (std::int64_t cols : {64, 128, 2048, 4096, 8192, 16384, 65536}) {
      const std::size_t es = dtype_size(t), row_bytes = static_cast<std::size_t>(cols) * es;
      HostTensor row = testing::make_tensor(t, 1, 1, cols);
      HostTensor filler = testing::make_tensor(t, 1, kFiller, cols);
      HostTensor w = testing::make_vector(t, cols);
      const std::uint64_t seed = testing::seed_of({static_cast<int>(t), cols});
      reference::fill_normal(row.view, seed);
      reference::fill_normal(filler.view, seed + 1, 0.0, 3.0);
      reference::fill_normal(w.view, seed + 2, 1.0, 0.5);

      DeviceBuffer dx(row_bytes * max_rows), dy(row_bytes * max_rows), dr(4 * max_rows);
      testing::DeviceMirror dw(w);

      for (Strategy s : kStrategies) {
        const std::string where = std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + " " + strategy_name(s);
        Params p;
        p.strategy = s;
        // Alone.
        dx.upload(row.bytes.data(), row_bytes);
        dy.fill(0xFF);
        dr.fill(0xFF);
        const TensorView x1 = device_matrix(dx, t, 1, cols), y1 = device_matrix(dy, t, 1, cols);
        if (!servable(x1, y1, s)) continue;
        forward(x1, dw.view, y1, p, TensorView::vector(dr.data(), DType::f32, Device::cuda(0), 1));
        testing::device_synchronize();
        std::vector<unsigned char> alone(row_bytes);
        float alone_rstd;
        dy.download(alone.data(), row_bytes);
        dr.download(&alone_rstd, 4);
        {  // and it is right
          const auto ref = reference::forward(row.view, w.view, t, p);
          const TensorView got = TensorView::matrix(alone.data(), t, Device::cpu(), 1, cols);
          const auto cmp = reference::compare(got, ref.y, reference::forward_tolerance(t, t, Cast::fp32, cols));
          ASSERT_TRUE(cmp.passed()) << where << ": alone: " << cmp.describe();
        }
        for (std::int64_t batch : batches)
          for (std::int64_t pos : {std::int64_t{0}, batch / 2, batch - 1}) {
            fill_from_pool(dx, filler, batch);
            dx.upload(row.bytes.data(), row_bytes, static_cast<std::size_t>(pos) * row_bytes);
            dy.fill(0xFF);
            dr.fill(0xFF);
            const TensorView xb = device_matrix(dx, t, batch, cols), yb = device_matrix(dy, t, batch, cols);
            if (!servable(xb, yb, s)) {
              ADD_FAILURE() << where << ": serves 1 row but not " << batch;
              continue;
            }
            forward(xb, dw.view, yb, p, TensorView::vector(dr.data(), DType::f32, Device::cuda(0), batch));
            testing::device_synchronize();
            std::vector<unsigned char> inside(row_bytes);
            float inside_rstd;
            dy.download(inside.data(), row_bytes, static_cast<std::size_t>(pos) * row_bytes);
            dr.download(&inside_rstd, 4, static_cast<std::size_t>(pos) * 4);
            EXPECT_EQ(std::memcmp(alone.data(), inside.data(), row_bytes), 0)
                << where << ": y of the row differs at position " << pos << " of " << batch;
            EXPECT_EQ(std::memcmp(&alone_rstd, &inside_rstd, 4), 0)
                << where << ": rstd of the row differs at position " << pos << " of " << batch << " (" << alone_rstd
                << " alone, " << inside_rstd << " inside)";
          }
      }
    }
}

// The same call twice gives the same bytes (no atomics in the reduction order).
TEST_F(Cuda, Deterministic) {
  for (DType t : kDtypes)
    for (std::int64_t cols : {64, 1031, 4096, 65536}) {
      const std::int64_t rows = cols >= 65536 ? 257 : 1000;
      HostTensor x = testing::make_tensor(t, 1, rows, cols);
      HostTensor w = testing::make_vector(DType::f32, cols);
      reference::fill_normal(x.view, testing::seed_of({static_cast<int>(t), cols, 7}));
      reference::fill_normal(w.view, 8, 1.0, 0.5);
      testing::DeviceMirror dx(x), dw(w);
      // An f32 weight and an f32 y: the mixed-dtype path (allowed for every x dtype).
      HostTensor y = testing::make_tensor(DType::f32, 1, rows, cols);
      HostTensor r = testing::make_vector(DType::f32, rows);
      testing::DeviceMirror dy(y), dr(r);
      for (Strategy s : kStrategies) {
        if (!servable(dx.view, dy.view, s)) continue;
        Params p;
        p.strategy = s;
        std::vector<unsigned char> first_y, first_r;
        for (int run = 0; run < 2; ++run) {
          dy.buffer.fill(0xFF);
          dr.buffer.fill(0xFF);
          forward(dx.view, dw.view, dy.view, p, dr.view);
          testing::device_synchronize();
          dy.download_into(y);
          dr.download_into(r);
          if (run == 0) {
            first_y = y.bytes;
            first_r = r.bytes;
            EXPECT_FALSE(testing::all_poisoned(y.bytes));
          } else {
            EXPECT_TRUE(first_y == y.bytes)
                << dtype_name(t) << " cols=" << cols << " " << strategy_name(s) << ": y differs between two runs";
            EXPECT_TRUE(first_r == r.bytes)
                << dtype_name(t) << " cols=" << cols << " " << strategy_name(s) << ": rstd differs between two runs";
          }
        }
      }
    }
}

// Random rows of x (normal) and a weight of dtype t (normal around 1), seeded by (t, cols,
// tag) and (t, cols, tag + 1), with their device mirrors: the inputs of the cluster rows'
// tests.
HostTensor seeded(HostTensor h, std::uint64_t seed, double mean = 0.0, double stddev = 1.0) {
  reference::fill_normal(h.view, seed, mean, stddev);
  return h;
}
struct RandomRows {
  RandomRows(DType t, std::int64_t rows, std::int64_t cols, int tag)
      : x(seeded(testing::make_tensor(t, 1, rows, cols), testing::seed_of({static_cast<int>(t), cols, tag}))),
        w(seeded(testing::make_vector(t, cols), testing::seed_of({static_cast<int>(t), cols, tag + 1}), 1.0, 0.5)),
        dx(x),
        dw(w) {}
  HostTensor x, w;
  testing::DeviceMirror dx, dw;
};

// A batch of fewer rows than the SMs runs its block rows split over clusters of blocks
// (Params::split_few_rows, sm_90; split_launch_blocks): the same bytes as the block rows
// launched whole (SplitFewRows::off) under `on` and the default `automatic`, y, rstd and
// r_out, for the plain store and the residual add (a residual of x's dtype, and an f32 one
// of 16-bit x), with and without a weight, on row counts on both sides of where the split
// stops, and y right. On GPUs before sm_90 every call runs the block rows.
TEST_F(Cuda, SplitRowsGiveTheBlockRowsBits) {
  const SplitFewRows modes[] = {SplitFewRows::off, SplitFewRows::on, SplitFewRows::automatic};
  for (DType t : kDtypes)
    for (std::int64_t cols : {2048, 4096, 8192, 16384})
      for (std::int64_t rows : {1, 3, 16, 33, 200})
        for (int op = 0; op < 3; ++op) {  // 0 plain, 1 add (r of x's dtype), 2 add (f32 r)
          if (op == 2 && t == DType::f32) continue;
          const DType rt = op == 2 ? DType::f32 : t;
          RandomRows in(t, rows, cols, 31 + op);
          HostTensor r = testing::make_tensor(rt, 1, rows, cols);
          reference::fill_normal(r.view, testing::seed_of({static_cast<int>(t), cols, 77}));
          testing::DeviceMirror dr(r);
          for (bool weighted : {true, false}) {
            const std::string where = std::string(dtype_name(t)) + " cols=" + std::to_string(cols) +
                                      " rows=" + std::to_string(rows) + " op " + std::to_string(op) +
                                      (weighted ? "" : " no weight");
            std::vector<unsigned char> out[3][3];  // [mode][y, rstd, r_out]
            for (int m = 0; m < 3; ++m) {
              HostTensor y = testing::make_tensor(t, 1, rows, cols), r_out = testing::make_tensor(rt, 1, rows, cols);
              HostTensor rstd = testing::make_vector(DType::f32, rows);
              testing::DeviceMirror dy(y), dro(r_out), drs(rstd);
              dy.buffer.fill(0xFF);
              dro.buffer.fill(0xFF);
              drs.buffer.fill(0xFF);
              Params p;
              p.split_few_rows = modes[m];
              const std::optional<TensorView> w = weighted ? std::optional<TensorView>(in.dw.view) : std::nullopt;
              if (op == 0)
                forward(in.dx.view, w, dy.view, p, drs.view);
              else
                fused_add_forward(in.dx.view, dr.view, w, dy.view, dro.view, p, drs.view);
              testing::device_synchronize();
              dy.download_into(y);
              dro.download_into(r_out);
              drs.download_into(rstd);
              out[m][0] = y.bytes;
              out[m][1] = rstd.bytes;
              out[m][2] = r_out.bytes;
              if (modes[m] == SplitFewRows::on && op == 0) {
                const auto ref =
                    reference::forward(in.x.view, weighted ? std::optional<TensorView>(in.w.view) : std::nullopt, t, p);
                const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
                EXPECT_TRUE(cmp.passed()) << where << ": " << cmp.describe();
              }
            }
            for (int m = 1; m < 3; ++m) {
              const std::string how = where + " split " + split_few_rows_name(modes[m]);
              EXPECT_EQ(out[m][0], out[0][0]) << how << ": y differs split and whole";
              EXPECT_EQ(out[m][1], out[0][1]) << how << ": rstd differs split and whole";
              if (op > 0) EXPECT_EQ(out[m][2], out[0][2]) << how << ": r_out differs split and whole";
            }
          }
        }
}

// cluster_row forced over more rows than its grid has clusters: every cluster loops over
// rows. Every row is checked against the oracle, out of place and in place (y is x: each
// row is read, then written, by its own cluster only), at cluster sizes 2 (a row one block
// holds, split in two), 3 (5 for f32), 4 (7 for f32: aligned rows of these clusters stage
// each next row in shared memory) and at an odd column count (the unaligned
// instantiation).
TEST_F(Cuda, ClusterRowsLoopingOverManyRowsMatchTheReference) {
  for (DType t : kDtypes)
    for (std::int64_t cols :
         {std::int64_t{8192}, std::int64_t{65536} + 64, std::int64_t{98304} + 64, std::int64_t{40000} + 1})
      for (bool in_place : {false, true}) {
        const std::int64_t rows = cols > 8192 ? 300 : 1500;
        RandomRows in(t, rows, cols, 11);
        const HostTensor& x = in.x;
        const HostTensor& w = in.w;
        testing::DeviceMirror &dx = in.dx, &dw = in.dw;
        HostTensor y = testing::make_tensor(t, 1, rows, cols);
        testing::DeviceMirror dy(y);
        const TensorView& out = in_place ? dx.view : dy.view;
        const std::string where =
            std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + (in_place ? " in place" : " out of place");
        Params p;
        p.strategy = Strategy::cluster_row;
        if (!servable(dx.view, out, p.strategy)) continue;  // cluster_row needs sm_90
        const auto ref = reference::forward(x.view, w.view, t, p);
        if (!in_place) dy.buffer.fill(0xFF);
        forward(dx.view, dw.view, out, p);
        testing::device_synchronize();
        (in_place ? dx : dy).download_into(y);
        const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
        EXPECT_TRUE(cmp.passed()) << where << ": " << cmp.describe();
      }
}

// Rows beyond the registers of the largest cluster (Plan::pieces: a block's slice in pieces,
// the first in registers, the others in shared memory), chosen by the planner: 2, 3 and 4
// pieces a block, aligned (the pieces copied to shared memory by cp.async) and not (through
// registers), the last block's slice shorter than the others', over more rows than the grid
// has clusters, out of place and in place, with rstd. The same rows come out with the same
// bits aligned or not, and as one row or among many.
TEST_F(Cuda, ClusterRowPiecesMatchTheReference) {
  for (DType t : kDtypes) {
    const std::int64_t vw = static_cast<std::int64_t>(16 / dtype_size(t));
    // The registers of the largest cluster: 8 blocks of 4096 chunks (kernel_configs.h).
    const std::int64_t piece = 8 * 4096 * vw;
    for (std::int64_t cols : {piece + 13 * vw, 2 * piece + 1, 3 * piece + 100 * vw})
      for (bool in_place : {false, true}) {
        const std::int64_t rows = 70;
        RandomRows in(t, rows, cols, 13);
        const HostTensor& x = in.x;
        const HostTensor& w = in.w;
        testing::DeviceMirror &dx = in.dx, &dw = in.dw;
        HostTensor y = testing::make_tensor(t, 1, rows, cols);
        HostTensor r = testing::make_vector(DType::f32, rows);
        testing::DeviceMirror dy(y), dr(r);
        const TensorView& out = in_place ? dx.view : dy.view;
        const std::string where =
            std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + (in_place ? " in place" : " out of place");
        if (!servable(dx.view, out, Strategy::cluster_row)) continue;  // cluster_row needs sm_90
        const Plan plan = plan_forward(dx.view, dw.view, out);
        ASSERT_EQ(plan.strategy, Strategy::cluster_row) << where;
        ASSERT_EQ(plan.pieces, (cols + piece - 1) / piece) << where;
        const Params p;
        const auto ref = reference::forward(x.view, w.view, t, p);
        if (!in_place) dy.buffer.fill(0xFF);
        dr.buffer.fill(0xFF);
        forward(dx.view, dw.view, out, p, dr.view);
        testing::device_synchronize();
        (in_place ? dx : dy).download_into(y);
        dr.download_into(r);
        const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
        EXPECT_TRUE(cmp.passed()) << where << ": " << cmp.describe();
        const auto cmp_r = reference::compare(r.view, ref.rstd, reference::rstd_tolerance(t, cols));
        EXPECT_TRUE(cmp_r.passed()) << where << " rstd: " << cmp_r.describe();
        if (in_place) continue;
        // Row 37 alone, from a copy of it one element past a 16-byte boundary where the row
        // is a whole number of chunks (the unaligned instantiation): the same bits.
        const std::int64_t lead = cols % vw == 0 ? 1 : 0;
        DeviceBuffer one_x((cols + lead) * dtype_size(t)), one_y((cols + lead) * dtype_size(t));
        CUDA_OK(cudaMemcpy(one_x.data() + lead * dtype_size(t), x.bytes.data() + 37 * cols * dtype_size(t),
                           cols * dtype_size(t), cudaMemcpyHostToDevice));
        one_y.fill(0xFF);
        const TensorView vx = TensorView::matrix(one_x.data() + lead * dtype_size(t), t, dx.view.device, 1, cols);
        const TensorView vy = TensorView::matrix(one_y.data() + lead * dtype_size(t), t, dx.view.device, 1, cols);
        forward(vx, dw.view, vy, p);
        std::vector<unsigned char> got(cols * dtype_size(t));
        CUDA_OK(cudaMemcpy(got.data(), one_y.data() + lead * dtype_size(t), got.size(), cudaMemcpyDeviceToHost));
        EXPECT_TRUE(std::equal(got.begin(), got.end(), y.bytes.begin() + 37 * cols * dtype_size(t)))
            << where << ": row 37 alone and unaligned differs from row 37 among " << rows;
      }
  }
}

// The cluster rows on every grid a benchmark may ask for (Plan::cluster_grid): the resident
// clusters once, three times, and a cluster a row, against the launcher's own (twice the
// resident ones). Each cluster reduces its rows in the same order whichever rows it takes,
// so every grid gives the launcher's bits: clusters of 2 blocks, of 4 (aligned rows: slices
// in shared memory), an odd length (the unaligned instantiation) and rows in 2 pieces a block.
TEST_F(Cuda, ClusterRowGridsGiveTheSameBits) {
  for (DType t : {DType::bf16, DType::f32}) {
    const std::int64_t vw = static_cast<std::int64_t>(16 / dtype_size(t));
    for (std::int64_t cols : {std::int64_t{4096} * vw + 8 * vw, std::int64_t{12288} * vw + 8 * vw,
                              std::int64_t{6000} * vw + 1, std::int64_t{8 * 4096} * vw + 64 * vw}) {
      const std::int64_t rows = 150;
      RandomRows in(t, rows, cols, 17);
      HostTensor y = testing::make_tensor(t, 1, rows, cols);
      testing::DeviceMirror dy(y);
      const std::string where = std::string(dtype_name(t)) + " cols=" + std::to_string(cols);
      if (!servable(in.dx.view, dy.view, Strategy::cluster_row)) continue;  // cluster_row needs sm_90
      Params p;
      p.strategy = Strategy::cluster_row;
      const detail::ForwardProblem problem = detail::validate_forward(in.dx.view, in.dw.view, dy.view, p, std::nullopt);
      Plan plan = plan_forward(in.dx.view, in.dw.view, dy.view, p.strategy);
      ASSERT_EQ(plan.cluster_grid, 0) << where;
      dy.buffer.fill(0xFF);
      detail::cuda_forward(problem, plan, in.dx.view.device.index, nullptr);
      testing::device_synchronize();
      dy.download_into(y);
      const auto ref = reference::forward(in.x.view, in.w.view, t, p);
      const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
      ASSERT_TRUE(cmp.passed()) << where << ", the launcher's grid: " << cmp.describe();
      const std::vector<unsigned char> expected = y.bytes;
      for (int grid : {1, 3, kClusterPerRow}) {
        plan.cluster_grid = grid;
        dy.buffer.fill(0xFF);
        detail::cuda_forward(problem, plan, in.dx.view.device.index, nullptr);
        testing::device_synchronize();
        dy.download_into(y);
        EXPECT_TRUE(y.bytes == expected) << where << ", cluster_grid " << grid
                                         << ": y differs from the launcher's grid";
      }
    }
  }
}

// Slices in shared memory (Plan::shared_slices: the plain store of aligned rows, as the
// planner takes it on clusters of kSharedSliceBlocks blocks or more) give the bits of the
// same blocks holding their slices in registers: y and rstd, with and without a weight, each
// dtype, rows over 2, 3, 4 and 8 blocks (the last slice short but for 8), in 512 x 8 and
// 256 x 8 blocks, a cluster a row and the resident clusters looping over the rows.
TEST_F(Cuda, ClusterRowSlicesInSharedMemoryGiveTheRegistersBits) {
  for (DType t : kDtypes) {
    const std::int64_t vw = static_cast<std::int64_t>(16 / dtype_size(t));
    for (int threads : {512, 256})
      for (std::int64_t blocks : {2, 3, 4, 8}) {
        const std::int64_t capacity = std::int64_t{threads} * 8;
        const std::int64_t cols = ((blocks - 1) * capacity + (blocks == 8 ? capacity : capacity / 2 + 24)) * vw;
        const std::int64_t rows = 70;
        RandomRows in(t, rows, cols, 23);
        HostTensor y = testing::make_tensor(t, 1, rows, cols), rstd = testing::make_vector(DType::f32, rows);
        testing::DeviceMirror dy(y), drstd(rstd);
        for (bool weighted : {true, false}) {
          const std::string where = std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + " " +
                                    std::to_string(threads) + "x8" + (weighted ? "" : " no weight");
          const std::optional<TensorView> w = weighted ? std::optional<TensorView>(in.dw.view) : std::nullopt;
          if (!servable(in.dx.view, dy.view, Strategy::cluster_row)) return;  // cluster_row needs sm_90
          Params p;
          const detail::ForwardProblem problem = detail::validate_forward(in.dx.view, w, dy.view, p, drstd.view);
          Plan plan = plan_forward(in.dx.view, w, dy.view, Strategy::cluster_row);
          ASSERT_EQ(plan.load_width, vw) << where;
          plan.threads_per_block = threads;
          plan.items_per_thread = 8;
          plan.cluster_size = static_cast<int>(blocks);
          plan.threads_per_row = threads * static_cast<int>(blocks);
          plan.pieces = 1;
          const auto run = [&](bool shared, int grid) {
            plan.shared_slices = shared;
            plan.cluster_grid = grid;
            dy.buffer.fill(0xFF);
            drstd.buffer.fill(0xFF);
            detail::cuda_forward(problem, plan, in.dx.view.device.index, nullptr);
            testing::device_synchronize();
            dy.download_into(y);
            drstd.download_into(rstd);
            return std::make_pair(y.bytes, rstd.bytes);
          };
          const auto expected = run(false, 0);
          const auto ref =
              reference::forward(in.x.view, weighted ? std::optional<TensorView>(in.w.view) : std::nullopt, t, p);
          const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
          ASSERT_TRUE(cmp.passed()) << where << ", slices in registers: " << cmp.describe();
          for (int grid : {0, 1}) {
            const auto got = run(true, grid);
            EXPECT_TRUE(got.first == expected.first) << where << ", cluster_grid " << grid << ": y differs";
            EXPECT_TRUE(got.second == expected.second) << where << ", cluster_grid " << grid << ": rstd differs";
          }
        }
      }
  }
}

// The planner's slices in shared memory (rows over 4, 7 and 8 blocks, the plain store of
// aligned rows) against the oracle; where the planner takes them is tested in test_plan.cpp.
TEST_F(Cuda, ClusterRowSlicesInSharedMemoryMatchTheReference) {
  for (DType t : kDtypes) {
    const std::int64_t vw = static_cast<std::int64_t>(16 / dtype_size(t));
    for (std::int64_t chunks : {std::int64_t{4096} * 4, std::int64_t{4096} * 7 + 40, std::int64_t{4096} * 8}) {
      const std::int64_t cols = chunks * vw, rows = 9;
      RandomRows in(t, rows, cols, 29);
      HostTensor y = testing::make_tensor(t, 1, rows, cols);
      testing::DeviceMirror dy(y);
      if (!servable(in.dx.view, dy.view, Strategy::cluster_row)) return;  // cluster_row needs sm_90
      const std::string where = std::string(dtype_name(t)) + " cols=" + std::to_string(cols);
      const Plan plan = plan_forward(in.dx.view, in.dw.view, dy.view);
      EXPECT_TRUE(plan.shared_slices) << where;
      dy.buffer.fill(0xFF);
      forward(in.dx.view, in.dw.view, dy.view, Params{});
      testing::device_synchronize();
      dy.download_into(y);
      const auto ref = reference::forward(in.x.view, in.w.view, t, Params{});
      const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, Params{}.cast, cols));
      EXPECT_TRUE(cmp.passed()) << where << ": " << cmp.describe();
    }
  }
}

// Clusters of more than the portable 8 blocks (a forced plan's, bench --max-cluster 16): the
// plain store's 256 x 8 blocks, 16 of them and 13 (a shorter last slice), aligned and not,
// on the launcher's grid and on the resident clusters once (each cluster looping over
// rows), against the oracle. A device without room for such a cluster refuses the plan
// (Code::unsupported), and the test says so and skips.
TEST_F(Cuda, NonPortableClusterRowsMatchTheReference) {
  const DType t = DType::bf16;
  const std::int64_t vw = 8, capacity = 256 * 8;
  for (int blocks : {16, 13})
    for (bool aligned : {true, false}) {
      const std::int64_t cols = (blocks - 1) * capacity * vw + (aligned ? 100 * vw : 100 * vw + 3);
      const std::int64_t rows = 60;
      RandomRows in(t, rows, cols, 19);
      HostTensor y = testing::make_tensor(t, 1, rows, cols);
      testing::DeviceMirror dy(y);
      const std::string where = "bf16 cols=" + std::to_string(cols) + ", " + std::to_string(blocks) + " blocks";
      if (!servable(in.dx.view, dy.view, Strategy::cluster_row)) continue;  // cluster_row needs sm_90
      Params p;
      const detail::ForwardProblem problem = detail::validate_forward(in.dx.view, in.dw.view, dy.view, p, std::nullopt);
      Plan plan = plan_forward(in.dx.view, in.dw.view, dy.view, Strategy::cluster_row);
      ASSERT_EQ(plan.load_width, aligned ? vw : 1) << where;
      plan.threads_per_block = 256;
      plan.items_per_thread = 8;
      plan.cluster_size = blocks;
      plan.threads_per_row = 256 * blocks;
      plan.pieces = 1;
      plan.shared_slices = false;  // the slices in registers (the planner's, aligned, are in shared memory)
      const auto ref = reference::forward(in.x.view, in.w.view, t, p);
      for (int grid : {0, 1}) {
        plan.cluster_grid = grid;
        dy.buffer.fill(0xFF);
        try {
          detail::cuda_forward(problem, plan, in.dx.view.device.index, nullptr);
        } catch (const Error& e) {
          if (e.code() != Code::unsupported) throw;
          GTEST_SKIP() << where << ": " << e.what();
        }
        testing::device_synchronize();
        dy.download_into(y);
        const auto cmp = reference::compare(y.view, ref.y, reference::forward_tolerance(t, t, p.cast, cols));
        EXPECT_TRUE(cmp.passed()) << where << ", cluster_grid " << grid << ": " << cmp.describe();
      }
    }
}

// ---------------------------------------------------------------------------------------
// Stream
// ---------------------------------------------------------------------------------------

// Everything on one non-blocking stream, from pinned memory, with a synchronisation of
// that stream only: if forward launched anywhere else, the kernel would race the upload
// before it or the download after it, and the values would be wrong.
TEST_F(Cuda, RunsOnTheGivenStream) {
  const DType t = DType::bf16;
  const std::int64_t rows = 4096, cols = 4096;
  HostTensor x = testing::make_tensor(t, 1, rows, cols);
  HostTensor w = testing::make_vector(t, cols);
  reference::fill_normal(x.view, 21);
  reference::fill_normal(w.view, 22, 1.0, 0.5);
  const auto ref = reference::forward(x.view, w.view, t, Params{});
  const std::size_t bytes = x.bytes.size();

  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  void* pinned_in = nullptr;
  void* pinned_out = nullptr;
  CUDA_OK(cudaMallocHost(&pinned_in, bytes));
  CUDA_OK(cudaMallocHost(&pinned_out, bytes));
  std::memcpy(pinned_in, x.bytes.data(), bytes);
  std::memset(pinned_out, 0xFF, bytes);
  {
    DeviceBuffer dx(bytes), dy(bytes);
    testing::DeviceMirror dw(w);
    dy.fill(0xFF);
    dx.fill(0xFF);
    testing::device_synchronize();
    CUDA_OK(cudaMemcpyAsync(dx.data(), pinned_in, bytes, cudaMemcpyHostToDevice, stream));
    forward(device_matrix(dx, t, rows, cols), dw.view, device_matrix(dy, t, rows, cols), Params{}, std::nullopt,
            static_cast<Stream>(stream));
    CUDA_OK(cudaMemcpyAsync(pinned_out, dy.data(), bytes, cudaMemcpyDeviceToHost, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    const TensorView got = TensorView::matrix(pinned_out, t, Device::cpu(), rows, cols);
    const auto cmp = reference::compare(got, ref.y, reference::forward_tolerance(t, t, Cast::fp32, cols));
    EXPECT_TRUE(cmp.passed()) << cmp.describe();
    testing::device_synchronize();
  }
  cudaFreeHost(pinned_in);
  cudaFreeHost(pinned_out);
  cudaStreamDestroy(stream);
}

// Programmatic dependent launch (Params::pdl): each kernel may be scheduled before the
// previous one in the stream has finished, and must wait for it before reading. In this
// chain every call reads what the call before it wrote: forward in place on a, then the
// backward with dy = x = a, its dx into b and its dw into v; b and v are the next step's x
// and weight (the dw partial sums, too, are read right after being written). Run back to
// back with pdl, it must give the same bytes as without pdl, synchronised after each call:
// a kernel that read before waiting would see stale data.
TEST_F(Cuda, DependentLaunchesReadWhatThePreviousCallWrote) {
  constexpr int kSteps = 6;
  const std::int64_t rows = 16;  // dw is about rows times the weight: stays finite
  for (DType t : {DType::bf16, DType::f32})
    for (std::int64_t cols : {64, 4096, 65536})
      for (Strategy s : kStrategies) {
        HostTensor x = testing::make_tensor(t, 1, rows, cols);
        HostTensor w = testing::make_vector(t, cols);
        reference::fill_normal(x.view, testing::seed_of({static_cast<int>(t), cols, 31}));
        reference::fill_normal(w.view, 32, 1.0, 0.5);
        std::vector<unsigned char> want_x, want_w;
        for (bool pdl : {false, true}) {
          testing::DeviceMirror a(x), b(x), u(w), v(w);
          Params p;
          p.strategy = s;
          p.pdl = pdl;
          const std::size_t ws_bytes = backward_workspace_size(a.view, u.view, p);
          DeviceBuffer ws(std::max<std::size_t>(ws_bytes, 1));
          const TensorView* in = &a.view;
          const TensorView* out = &b.view;
          const TensorView* weight = &u.view;
          const TensorView* grad = &v.view;
          try {
            for (int step = 0; step < kSteps; ++step) {
              forward(*in, *weight, *in, p);
              if (!pdl) testing::device_synchronize();
              backward(*in, *in, *weight, std::nullopt, *out, *grad, p, ws.data(), ws_bytes);
              if (!pdl) testing::device_synchronize();
              std::swap(in, out);
              std::swap(weight, grad);
            }
          } catch (const Error& e) {
            if (e.code() != Code::unsupported) throw;  // a strategy that cannot serve cols
            break;
          }
          testing::device_synchronize();
          HostTensor got_x = x, got_w = w;
          (in == &a.view ? a : b).download_into(got_x);
          (weight == &u.view ? u : v).download_into(got_w);
          if (!pdl) {
            want_x = got_x.bytes;
            want_w = got_w.bytes;
            EXPECT_FALSE(want_x == x.bytes) << "the chain left x unchanged";
            continue;
          }
          const std::string what =
              std::string(dtype_name(t)) + " cols=" + std::to_string(cols) + " " + strategy_name(s) + ": with pdl, ";
          EXPECT_TRUE(got_x.bytes == want_x) << what << "x differs from the synchronised chain";
          EXPECT_TRUE(got_w.bytes == want_w) << what << "the weight (dw) differs from the synchronised chain";
        }
      }
}

// ---------------------------------------------------------------------------------------
// Odds and ends on the device
// ---------------------------------------------------------------------------------------

TEST_F(Cuda, ZeroRowsWithNullData) {
  const TensorView x = TensorView::matrix(nullptr, DType::bf16, Device::cuda(0), 0, 4096);
  const TensorView y = TensorView::matrix(nullptr, DType::bf16, Device::cuda(0), 0, 4096);
  EXPECT_NO_THROW(forward(x, std::nullopt, y));
  testing::device_synchronize();
}

TEST_F(Cuda, PointerChecksCanBeTurnedOff) {
  HostTensor x = testing::make_tensor(DType::f16, 1, 9, 300);
  reference::fill_normal(x.view, 31);
  HostTensor y = testing::make_tensor(DType::f16, 1, 9, 300);
  testing::DeviceMirror dx(x), dy(y);
  Params p;
  p.check_pointers = false;
  forward(dx.view, std::nullopt, dy.view, p);
  testing::device_synchronize();
  dy.download_into(y);
  const auto ref = reference::forward(x.view, std::nullopt, DType::f16, p);
  const auto cmp =
      reference::compare(y.view, ref.y, reference::forward_tolerance(DType::f16, DType::f16, Cast::fp32, 300));
  EXPECT_TRUE(cmp.passed()) << cmp.describe();
}

TEST_F(Cuda, DescribesTheDevice) {
  EXPECT_TRUE(built_with_cuda());
  EXPECT_GE(cuda_device_count(), 1);
  const std::string d = describe_device(Device::cuda(0));
  EXPECT_FALSE(d.empty());
  std::printf("device: %s\n", d.c_str());
}

// ---------------------------------------------------------------------------------------
// 64-bit indexing
// ---------------------------------------------------------------------------------------

// bf16 tensors of just over 2^31 elements (4.3 GB each): offsets past 2^31 elements (and
// 2^32 bytes) must not wrap. Every row is written (no poison left anywhere in y), every
// rstd is right, and the rows around the 2^30 and 2^31 element boundaries and the last
// rows match the oracle. Run under every strategy that serves the shape.
void check_past_2_31(std::int64_t cols) {
  const DType t = DType::bf16;
  const std::int64_t rows = (std::int64_t{1} << 31) / cols + 8;
  const std::size_t bytes = static_cast<std::size_t>(rows * cols) * 2;
  std::size_t free_bytes = 0, total_bytes = 0;
  CUDA_OK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const std::size_t need = 2 * bytes + static_cast<std::size_t>(rows) * 4 + (std::size_t{512} << 20);
  if (free_bytes < need)
    GTEST_SKIP() << "needs " << (need >> 20) << " MiB of device memory, " << (free_bytes >> 20) << " MiB free";

  constexpr std::int64_t kPool = 64;
  HostTensor pool = testing::make_tensor(t, 1, kPool, cols);
  HostTensor w = testing::make_vector(t, cols);
  reference::fill_normal(pool.view, testing::seed_of({cols, 64}));
  reference::fill_normal(w.view, 41, 1.0, 0.5);
  const auto ref = reference::forward(pool.view, w.view, t, Params{});
  const auto tol = reference::forward_tolerance(t, t, Cast::fp32, cols);
  const auto rtol = reference::rstd_tolerance(t, cols);

  DeviceBuffer dx(bytes), dy(bytes), dr(static_cast<std::size_t>(rows) * 4);
  testing::DeviceMirror dw(w);
  fill_from_pool(dx, pool, rows);
  const TensorView xv = device_matrix(dx, t, rows, cols), yv = device_matrix(dy, t, rows, cols);
  const TensorView rv = TensorView::vector(dr.data(), DType::f32, Device::cuda(0), rows);

  const std::int64_t r30 = (std::int64_t{1} << 30) / cols, r31 = (std::int64_t{1} << 31) / cols;
  std::vector<std::int64_t> check_rows = {0, 1, r30 - 1, r30, r31 - 1, r31, r31 + 1};
  for (std::int64_t r = rows - 8; r < rows; ++r) check_rows.push_back(r);

  int strategies_run = 0;
  for (Strategy s : kStrategies) {
    if (!servable(xv, yv, s)) continue;
    ++strategies_run;
    const std::string where = "bf16 " + std::to_string(rows) + "x" + std::to_string(cols) + " " + strategy_name(s);
    dy.fill(0xFF);
    dr.fill(0xFF);
    Params p;
    p.strategy = s;
    forward(xv, dw.view, yv, p, rv);
    testing::device_synchronize();

    // No element left unwritten: scan y for the poison pattern in chunks.
    std::int64_t poisoned = 0, first_poisoned = -1;
    const std::size_t chunk = std::size_t{256} << 20;
    std::vector<std::uint16_t> buf(chunk / 2);
    for (std::size_t at = 0; at < bytes; at += chunk) {
      const std::size_t n = std::min(chunk, bytes - at);
      dy.download(buf.data(), n, at);
      for (std::size_t i = 0; i < n / 2; ++i)
        if (buf[i] == 0xFFFF) {
          if (first_poisoned < 0) first_poisoned = static_cast<std::int64_t>(at / 2 + i);
          ++poisoned;
        }
    }
    EXPECT_EQ(poisoned, 0) << where << ": unwritten elements, the first at " << first_poisoned << " (row "
                           << first_poisoned / cols << ")";

    std::vector<float> rstd(static_cast<std::size_t>(rows));
    dr.download(rstd.data(), rstd.size() * 4);
    std::vector<double> ref_rstd(rstd.size());
    for (std::int64_t r = 0; r < rows; ++r)
      ref_rstd[static_cast<std::size_t>(r)] = ref.rstd[static_cast<std::size_t>(r % kPool)];
    const auto rc = reference::compare_vector(rstd.data(), DType::f32, ref_rstd, rtol);
    EXPECT_TRUE(rc.passed()) << where << ": rstd " << rc.describe();

    for (std::int64_t r : check_rows) {
      std::vector<unsigned char> got(static_cast<std::size_t>(cols) * 2);
      dy.download(got.data(), got.size(), static_cast<std::size_t>(r * cols) * 2);
      const std::vector<double> want(ref.y.begin() + (r % kPool) * cols, ref.y.begin() + (r % kPool + 1) * cols);
      const auto c = reference::compare(TensorView::matrix(got.data(), t, Device::cpu(), 1, cols), want, tol);
      EXPECT_TRUE(c.passed()) << where << ": row " << r << ": " << c.describe();
    }
  }
  EXPECT_GE(strategies_run, 2);
}

TEST_F(Cuda, IndexesPast2To31Elements_4096Cols) { check_past_2_31(4096); }
TEST_F(Cuda, IndexesPast2To31Elements_1024Cols) { check_past_2_31(1024); }

}  // namespace
}  // namespace rmsnorm
