// Rows split across ranks (rmsnorm.h, "Rows split across ranks"): each row of x is cut into
// k column shards, the steps run shard by shard with the per-row sums added in f32 between
// them (what an all-reduce does), and the joined outputs are compared with the unsharded
// fp64 oracle under the forward's and backward's tolerances for the whole row length N.
// A single shard must give forward's and backward's bytes exactly. Then the arguments'
// errors, and CUDA views.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "oracle.h"
#include "shards.h"
#include "support.h"
#include "tolerances.h"

namespace rmsnorm::testing {
namespace {

using reference::column_shard;
using reference::Comparison;
using reference::shard_bounds;

std::optional<TensorView> opt(const std::optional<HostTensor>& t) {
  return t ? std::optional<TensorView>(t->view) : std::nullopt;
}

DType acc_of(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// The all-reduce: the shards' per-row sums added in rank order, in the accumulator dtype.
std::vector<unsigned char> reduce(const std::vector<HostTensor>& parts, DType acc, std::int64_t rows) {
  std::vector<unsigned char> out(static_cast<std::size_t>(rows) * dtype_size(acc));
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0;  // rounded to acc after every addition, as an f32 all-reduce adds
    for (const HostTensor& p : parts) s = reference::round_to(acc, s + load_as_double(p.view.data, acc, r));
    store_from_double(out.data(), acc, r, s);
  }
  return out;
}

struct ShardCase {
  DType x = DType::f32;
  std::optional<DType> w = DType::f32;
  DType y = DType::f32;
  DType dw = DType::f32;
  std::int64_t batch = 1, rows = 5, cols = 64, shards = 2;
  std::int64_t batch_stride = -1, row_stride = -1;
  Cast cast = Cast::fp32;
  double offset = 0.0, eps = 1e-6;
  std::string describe() const {
    return std::string("x=") + dtype_name(x) + " w=" + (w ? dtype_name(*w) : "none") + " y=" + dtype_name(y) +
           " dw=" + dtype_name(dw) + " " + std::to_string(batch) + "x" + std::to_string(rows) + "x" +
           std::to_string(cols) + " in " + std::to_string(shards) + " shards" + (cast == Cast::llama ? " llama" : "") +
           " offset=" + std::to_string(offset);
  }
  Params params() const {
    Params p;
    p.cast = cast;
    p.weight_offset = offset;
    p.eps = eps;
    return p;
  }
};

// The inputs of a case: x, dy and the weight filled, the outputs poisoned.
struct Tensors {
  HostTensor x, dy, y, dx;
  std::optional<HostTensor> w, dw;
  HostTensor rstd;
  Tensors(const ShardCase& c, std::uint64_t seed)
      : x(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, 0, 3)),
        dy(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, 0, 3)),
        y(make_tensor(c.y, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, 0, 3)),
        dx(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, 0, 3)),
        rstd(make_vector(acc_of(c.x), c.batch * c.rows, 0, 2)) {
    reference::fill_normal(x.view, seed);
    reference::fill_normal(dy.view, seed + 1);
    if (c.w) {
      w = make_vector(*c.w, c.cols);
      reference::fill_normal(w->view, seed + 2, c.offset == 0.0 ? 1.0 : 0.0, 0.1);
      dw = make_vector(c.dw, c.cols, 0, 2);
    }
  }
};

// Forward over k shards: partial sums, the reduction, the apply step. Every shard writes
// its own copy of rstd; all must be equal (they come from the same reduced sums).
void sharded_forward(const ShardCase& c, Tensors& t) {
  const Params params = c.params();
  const std::int64_t m = c.batch * c.rows;
  const std::vector<std::int64_t> b = shard_bounds(c.cols, c.shards);
  std::vector<HostTensor> sums;
  for (std::int64_t i = 0; i < c.shards; ++i) {
    sums.push_back(make_vector(acc_of(c.x), m));
    partial_sum_squares(column_shard(t.x.view, b[i], b[i + 1]), sums.back().view, params);
  }
  std::vector<unsigned char> total = reduce(sums, acc_of(c.x), m);
  const TensorView total_view = TensorView::vector(total.data(), acc_of(c.x), Device::cpu(), m);
  for (std::int64_t i = 0; i < c.shards; ++i) {
    HostTensor rstd = make_vector(acc_of(c.x), m);
    const std::optional<TensorView> w =
        t.w ? std::optional<TensorView>(column_shard(t.w->view, b[i], b[i + 1])) : std::nullopt;
    forward_from_sums(column_shard(t.x.view, b[i], b[i + 1]), w, column_shard(t.y.view, b[i], b[i + 1]), total_view,
                      c.cols, params, rstd.view);
    if (i == 0)
      std::memcpy(t.rstd.view.data, rstd.view.data, static_cast<std::size_t>(m) * dtype_size(acc_of(c.x)));
    else
      EXPECT_EQ(0, std::memcmp(t.rstd.view.data, rstd.view.data, static_cast<std::size_t>(m) * dtype_size(acc_of(c.x))))
          << c.describe() << ": shard " << i << " wrote another rstd";
  }
}

// Backward over k shards, from the rstd the sharded forward saved.
void sharded_backward(const ShardCase& c, Tensors& t) {
  const Params params = c.params();
  const std::int64_t m = c.batch * c.rows;
  const std::vector<std::int64_t> b = shard_bounds(c.cols, c.shards);
  const auto w_of = [&](std::int64_t i) {
    return t.w ? std::optional<TensorView>(column_shard(t.w->view, b[i], b[i + 1])) : std::nullopt;
  };
  std::vector<HostTensor> dots;
  for (std::int64_t i = 0; i < c.shards; ++i) {
    dots.push_back(make_vector(acc_of(c.x), m));
    partial_grad_dot(column_shard(t.dy.view, b[i], b[i + 1]), column_shard(t.x.view, b[i], b[i + 1]), w_of(i),
                     dots.back().view, params);
  }
  std::vector<unsigned char> total = reduce(dots, acc_of(c.x), m);
  const TensorView total_view = TensorView::vector(total.data(), acc_of(c.x), Device::cpu(), m);
  for (std::int64_t i = 0; i < c.shards; ++i) {
    const TensorView xs = column_shard(t.x.view, b[i], b[i + 1]);
    const std::optional<TensorView> dws =
        t.dw ? std::optional<TensorView>(column_shard(t.dw->view, b[i], b[i + 1])) : std::nullopt;
    std::vector<unsigned char> ws(backward_workspace_size(xs, dws, params));
    backward_from_sums(column_shard(t.dy.view, b[i], b[i + 1]), xs, w_of(i), t.rstd.view, total_view, c.cols,
                       column_shard(t.dx.view, b[i], b[i + 1]), dws, params, ws.data(), ws.size());
  }
}

void expect_matches_oracle(const ShardCase& c, std::uint64_t seed) {
  Tensors t(c, seed);
  const Params params = c.params();
  const reference::ForwardResult f = reference::forward(t.x.view, opt(t.w), c.y, params);
  const reference::BackwardResult g = reference::backward(t.dy.view, t.x.view, opt(t.w), params);
  sharded_forward(c, t);
  sharded_backward(c, t);

  // The shards' sums joined in another order are still one sum of N terms in a fixed order:
  // the table's bounds for a row of N elements (error growing like sqrt(N)) hold as they are.
  const Comparison y = reference::compare(t.y.view, f.y, reference::forward_tolerance(c.x, c.y, c.cast, c.cols));
  EXPECT_TRUE(y.passed()) << c.describe() << ": y " << y.describe();
  EXPECT_EQ(reference::count_stray_writes(t.y.bytes, t.y.view), 0) << c.describe();
  const Comparison r =
      reference::compare_vector(t.rstd.view.data, acc_of(c.x), f.rstd, reference::rstd_tolerance(c.x, c.cols));
  EXPECT_TRUE(r.passed()) << c.describe() << ": rstd " << r.describe();
  const Comparison dx = reference::compare_scaled(t.dx.view, g.dx, g.dx_scale, reference::dx_tolerance(c.x, c.cols));
  EXPECT_TRUE(dx.passed()) << c.describe() << ": dx " << dx.describe();
  EXPECT_EQ(reference::count_stray_writes(t.dx.bytes, t.dx.view), 0) << c.describe();
  if (t.dw) {
    const Comparison dw = reference::compare_vector_scaled(
        t.dw->view.data, c.dw, g.dw, g.dw_scale, reference::dw_tolerance(c.x, c.dw, c.batch * c.rows, c.cols));
    EXPECT_TRUE(dw.passed()) << c.describe() << ": dw " << dw.describe();
  }
}

TEST(Sharded, EveryDtypeCombinationAgainstTheOracle) {
  struct Combo {
    DType x;
    std::optional<DType> w;
    DType y;
  };
  const std::vector<Combo> combos = {{DType::f32, DType::f32, DType::f32},    {DType::f64, DType::f64, DType::f64},
                                     {DType::f16, DType::f16, DType::f16},    {DType::bf16, DType::bf16, DType::bf16},
                                     {DType::f16, DType::f32, DType::f16},    {DType::bf16, DType::f32, DType::bf16},
                                     {DType::bf16, DType::f32, DType::f32},   {DType::f32, std::nullopt, DType::f32},
                                     {DType::bf16, std::nullopt, DType::bf16}};
  int k = 0;
  for (const Combo& combo : combos)
    for (Cast cast : {Cast::fp32, Cast::llama})
      for (std::int64_t shards : {2, 3, 4}) {
        ShardCase c;
        c.x = combo.x;
        c.w = combo.w;
        c.y = combo.y;
        c.dw = combo.w ? (k % 2 ? DType::f32 : *combo.w) : DType::f32;
        if (combo.w == DType::f64) c.dw = DType::f64;
        c.cast = cast;
        c.shards = shards;
        c.cols = 1000;
        c.rows = 7;
        c.offset = combo.w && k % 3 == 0 ? 1.0 : 0.0;
        expect_matches_oracle(c, seed_of({k++}));
      }
}

TEST(Sharded, AwkwardRowLengthsAndShardCounts) {
  int k = 0;
  for (std::int64_t cols : {1, 2, 3, 7, 64, 127, 1031, 4096, 12288})
    for (std::int64_t shards : {1, 2, 3, 4, 8})
      if (shards <= cols) {
        ShardCase c;
        c.x = k % 2 ? DType::bf16 : DType::f32;
        c.w = c.x;
        c.y = c.x;
        c.dw = DType::f32;
        c.cols = cols;
        c.rows = cols > 1000 ? 3 : 17;
        c.shards = shards;
        expect_matches_oracle(c, seed_of({cols, shards}));
        ++k;
      }
}

TEST(Sharded, BatchedStridedAndEps) {
  ShardCase c;
  c.x = DType::f16;
  c.w = DType::f16;
  c.y = DType::f16;
  c.dw = DType::f32;
  c.batch = 3;
  c.rows = 4;
  c.cols = 96;
  c.row_stride = 104;
  c.batch_stride = 4 * 104 + 8;
  c.shards = 3;
  expect_matches_oracle(c, 11);
  c.eps = 0.5;  // eps dominating the mean
  c.cast = Cast::llama;
  expect_matches_oracle(c, 12);
}

TEST(Sharded, ManyRowsDw) {
  ShardCase c;
  c.x = DType::bf16;
  c.w = DType::bf16;
  c.y = DType::bf16;
  c.dw = DType::f32;
  c.rows = 5000;
  c.cols = 128;
  c.shards = 4;
  expect_matches_oracle(c, 21);
}

// One shard holding the whole rows: the steps compute what forward and backward compute,
// in the same order, so the bytes are the same.
TEST(Sharded, OneShardIsForwardAndBackwardBitForBit) {
  for (DType x : {DType::f32, DType::f16, DType::bf16, DType::f64})
    for (Cast cast : {Cast::fp32, Cast::llama})
      for (std::int64_t cols : {7, 1000, 4099}) {
        ShardCase c;
        c.x = x;
        c.w = x;
        c.y = x;
        c.dw = x;
        c.cast = cast;
        c.offset = cast == Cast::fp32 ? 1.0 : 0.0;
        c.rows = 70;  // more than backward's 64 dw chunks
        c.cols = cols;
        c.shards = 1;
        Tensors t(c, seed_of({static_cast<int>(x), cols}));
        sharded_forward(c, t);
        sharded_backward(c, t);

        const Params params = c.params();
        HostTensor y = make_tensor(c.y, 1, c.rows, c.cols, -1, -1, 0, 3);
        HostTensor rstd = make_vector(acc_of(x), c.rows, 0, 2);
        forward(t.x.view, opt(t.w), y.view, params, rstd.view);
        EXPECT_EQ(y.bytes, t.y.bytes) << c.describe() << ": y";
        EXPECT_EQ(rstd.bytes, t.rstd.bytes) << c.describe() << ": rstd";

        HostTensor dx = make_tensor(c.x, 1, c.rows, c.cols, -1, -1, 0, 3);
        HostTensor dw = make_vector(c.dw, c.cols, 0, 2);
        std::vector<unsigned char> ws(backward_workspace_size(t.x.view, dw.view, params));
        backward(t.dy.view, t.x.view, opt(t.w), t.rstd.view, dx.view, dw.view, params, ws.data(), ws.size());
        EXPECT_EQ(dx.bytes, t.dx.bytes) << c.describe() << ": dx";
        EXPECT_EQ(dw.bytes, t.dw->bytes) << c.describe() << ": dw";
      }
}

TEST(Sharded, InPlaceApplySteps) {
  // y may be x, and dx may be dy, as in forward and backward.
  const std::int64_t rows = 6, cols = 300;
  HostTensor x = make_tensor(DType::bf16, 1, rows, cols);
  reference::fill_normal(x.view, 5);
  HostTensor w = make_vector(DType::bf16, cols);
  reference::fill_normal(w.view, 6, 1.0, 0.1);
  HostTensor sums = make_vector(DType::f32, rows), rstd = make_vector(DType::f32, rows);
  partial_sum_squares(x.view, sums.view);
  HostTensor y = make_tensor(DType::bf16, 1, rows, cols);
  forward_from_sums(x.view, w.view, y.view, sums.view, cols, {}, rstd.view);
  forward_from_sums(x.view, w.view, x.view, sums.view, cols, {}, rstd.view);
  EXPECT_EQ(x.bytes, y.bytes);

  HostTensor dy = make_tensor(DType::bf16, 1, rows, cols);
  reference::fill_normal(dy.view, 7);
  HostTensor dots = make_vector(DType::f32, rows);
  partial_grad_dot(dy.view, x.view, w.view, dots.view);
  HostTensor dx = make_tensor(DType::bf16, 1, rows, cols);
  backward_from_sums(dy.view, x.view, w.view, rstd.view, dots.view, cols, dx.view, std::nullopt, {}, nullptr, 0);
  backward_from_sums(dy.view, x.view, w.view, rstd.view, dots.view, cols, dy.view, std::nullopt, {}, nullptr, 0);
  EXPECT_EQ(dy.bytes, dx.bytes);
}

TEST(Sharded, ZeroRowsAndTheirDw) {
  const TensorView x = TensorView::matrix(nullptr, DType::f32, Device::cpu(), 0, 8);
  const TensorView none = TensorView::vector(nullptr, DType::f32, Device::cpu(), 0);
  partial_sum_squares(x, none);
  forward_from_sums(x, std::nullopt, x, none, 16, {});
  partial_grad_dot(x, x, std::nullopt, none);
  HostTensor w = make_vector(DType::f32, 8);
  reference::fill_normal(w.view, 1);
  HostTensor dw = make_vector(DType::f32, 8);
  HostTensor dx = make_tensor(DType::f32, 1, 0, 8);
  backward_from_sums(x, x, w.view, none, none, 16, dx.view, dw.view, {}, nullptr, 0);
  for (std::int64_t j = 0; j < 8; ++j) EXPECT_EQ(load_as_double(dw.view.data, DType::f32, j), 0.0);
}

// ---------------------------------------------------------------------------------------
// Errors: the code, a message naming the argument, nothing written
// ---------------------------------------------------------------------------------------

struct ErrorCall {
  static constexpr std::int64_t kRows = 4, kCols = 64, kFull = 256;
  HostTensor x = make_tensor(DType::f32, 1, kRows, kCols, -1, -1, 0, 2 * kCols);
  HostTensor dy = make_tensor(DType::f32, 1, kRows, kCols);
  HostTensor y = make_tensor(DType::f32, 1, kRows, kCols);
  HostTensor w = make_vector(DType::f32, kCols);
  HostTensor sums = make_vector(DType::f32, kRows, 0, 8);
  HostTensor rstd = make_vector(DType::f32, kRows, 0, 8);
  HostTensor dw = make_vector(DType::f32, kCols);
  ErrorCall() {
    reference::fill_normal(x.view, 1);
    reference::fill_normal(dy.view, 2);
    reference::fill_normal(w.view, 3, 1.0, 0.1);
    reference::fill_normal(sums.view, 4, 100.0, 1.0);
    reference::fill_normal(rstd.view, 5, 1.0, 0.1);
  }
};

void expect_refused(const Status& s, Code code, const std::string& name, bool outputs_poisoned) {
  EXPECT_EQ(s.code, code) << s.message;
  EXPECT_TRUE(names_word(s.message, name)) << "'" << s.message << "' does not name " << name;
  EXPECT_TRUE(outputs_poisoned) << "a refused call wrote: " << s.message;
}

TEST(ShardedValidation, PartialSums) {
  ErrorCall c;
  EXPECT_TRUE(partial_sum_squares_status(c.x.view, c.sums.view).ok());
  // Outputs point into y, whose bytes are all poison until something writes them.
  const TensorView out = TensorView::vector(c.y.view.data, DType::f32, Device::cpu(), ErrorCall::kRows);
  TensorView sums = out;
  sums.dtype = DType::f16;
  expect_refused(partial_sum_squares_status(c.x.view, sums), Code::invalid_argument, "sums", all_poisoned(c.y.bytes));
  sums = TensorView::vector(c.y.view.data, DType::f32, Device::cpu(), ErrorCall::kRows + 1);
  expect_refused(partial_sum_squares_status(c.x.view, sums), Code::invalid_argument, "sums", all_poisoned(c.y.bytes));
  sums = TensorView::vector(nullptr, DType::f32, Device::cpu(), ErrorCall::kRows);
  expect_refused(partial_sum_squares_status(c.x.view, sums), Code::invalid_argument, "sums", true);
  // sums inside x's padding-free rows: overlap
  sums = TensorView::vector(c.x.view.data, DType::f32, Device::cpu(), ErrorCall::kRows);
  expect_refused(partial_sum_squares_status(c.x.view, sums), Code::invalid_argument, "sums", true);
  // f64 sums for f64 x only
  expect_refused(partial_sum_squares_status(
                     c.x.view, TensorView::vector(c.y.view.data, DType::f64, Device::cpu(), ErrorCall::kRows)),
                 Code::invalid_argument, "sums", all_poisoned(c.y.bytes));

  EXPECT_TRUE(partial_grad_dot_status(c.dy.view, c.x.view, c.w.view, c.sums.view).ok());
  TensorView dy = c.dy.view;
  dy.rows = 3;
  expect_refused(partial_grad_dot_status(dy, c.x.view, c.w.view, out), Code::invalid_argument, "dy",
                 all_poisoned(c.y.bytes));
  dy = c.dy.view;
  dy.dtype = DType::f16;
  expect_refused(partial_grad_dot_status(dy, c.x.view, c.w.view, out), Code::unsupported, "dy",
                 all_poisoned(c.y.bytes));
  TensorView w = c.w.view;
  w.cols = ErrorCall::kCols - 1;
  expect_refused(partial_grad_dot_status(c.dy.view, c.x.view, w, out), Code::invalid_argument, "weight",
                 all_poisoned(c.y.bytes));
  Params offset;
  offset.weight_offset = 1.0;
  expect_refused(partial_grad_dot_status(c.dy.view, c.x.view, std::nullopt, out, offset), Code::invalid_argument,
                 "weight_offset", all_poisoned(c.y.bytes));
  expect_refused(partial_grad_dot_status(c.dy.view, c.x.view, c.w.view,
                                         TensorView::vector(c.dy.view.data, DType::f32, Device::cpu(), 4)),
                 Code::invalid_argument, "dots", true);
}

TEST(ShardedValidation, ApplySteps) {
  ErrorCall c;
  const std::int64_t full = ErrorCall::kFull;
  EXPECT_TRUE(forward_from_sums_status(c.x.view, c.w.view, c.y.view, c.sums.view, full, {}, c.rstd.view).ok());
  ErrorCall d;  // fresh poison
  expect_refused(forward_from_sums_status(d.x.view, d.w.view, d.y.view, d.sums.view, ErrorCall::kCols - 1),
                 Code::invalid_argument, "full_cols", all_poisoned(d.y.bytes));
  TensorView sums = d.sums.view;
  sums.cols = 3;
  expect_refused(forward_from_sums_status(d.x.view, d.w.view, d.y.view, sums, full), Code::invalid_argument, "sums",
                 all_poisoned(d.y.bytes));
  expect_refused(forward_from_sums_status(d.x.view, d.w.view, d.y.view,
                                          TensorView::vector(d.y.view.data, DType::f32, Device::cpu(), 4), full),
                 Code::invalid_argument, "sums", true);
  expect_refused(forward_from_sums_status(d.x.view, d.w.view, d.y.view, d.sums.view, full, {}, d.sums.view),
                 Code::invalid_argument, "sums", all_poisoned(d.y.bytes));
  Params bad_eps;
  bad_eps.eps = -1;
  expect_refused(forward_from_sums_status(d.x.view, d.w.view, d.y.view, d.sums.view, full, bad_eps),
                 Code::invalid_argument, "eps", all_poisoned(d.y.bytes));

  HostTensor dx = make_tensor(DType::f32, 1, ErrorCall::kRows, ErrorCall::kCols);
  const std::size_t bytes = backward_workspace_size(d.x.view, d.dw.view, {});
  std::vector<unsigned char> ws(bytes);
  const auto bwd = [&](const TensorView& dots, std::int64_t n, std::size_t ws_bytes, const TensorView& rstd) {
    return backward_from_sums_status(d.dy.view, d.x.view, d.w.view, rstd, dots, n, dx.view, d.dw.view, {}, ws.data(),
                                     ws_bytes);
  };
  const auto untouched = [&] { return all_poisoned(dx.bytes) && all_poisoned(d.dw.bytes); };
  expect_refused(bwd(d.sums.view, ErrorCall::kCols - 1, bytes, d.rstd.view), Code::invalid_argument, "full_cols",
                 untouched());
  expect_refused(bwd(TensorView::vector(d.sums.view.data, DType::f32, Device::cpu(), 5), full, bytes, d.rstd.view),
                 Code::invalid_argument, "dots", untouched());
  expect_refused(bwd(TensorView::vector(dx.view.data, DType::f32, Device::cpu(), 4), full, bytes, d.rstd.view),
                 Code::invalid_argument, "dots", untouched());
  expect_refused(bwd(d.sums.view, full, bytes, TensorView::vector(nullptr, DType::f32, Device::cpu(), 4)),
                 Code::invalid_argument, "rstd", untouched());
  if (bytes > 0)
    expect_refused(bwd(d.sums.view, full, bytes - 1, d.rstd.view), Code::invalid_argument, "workspace", untouched());
  EXPECT_TRUE(bwd(d.sums.view, full, bytes, d.rstd.view).ok());
}

// A CPU-only build refuses CUDA views as forward does; a CUDA build has no kernels for these
// steps yet and says so, after validating the arguments.
TEST(ShardedValidation, CudaViews) {
  const std::int64_t rows = 2, cols = 8;
  if (!built_with_cuda()) {
    HostTensor x = make_tensor(DType::f32, 1, rows, cols);
    HostTensor s = make_vector(DType::f32, rows);
    TensorView xv = x.view, sv = s.view;
    xv.device = sv.device = Device::cuda(0);
    const Status st = partial_sum_squares_status(xv, sv);
    EXPECT_EQ(st.code, Code::unsupported) << st.message;
    EXPECT_NE(st.message.find("no CUDA backend"), std::string::npos) << st.message;
    return;
  }
  const std::string why = cuda_unavailable_reason();
  if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  DeviceBuffer x(rows * cols * 4), y(rows * cols * 4), s(rows * 4), r(rows * 4);
  const Device d = Device::cuda(0);
  const TensorView xv = TensorView::matrix(x.data(), DType::f32, d, rows, cols);
  const TensorView yv = TensorView::matrix(y.data(), DType::f32, d, rows, cols);
  const TensorView sv = TensorView::vector(s.data(), DType::f32, d, rows);
  const TensorView rv = TensorView::vector(r.data(), DType::f32, d, rows);
  for (const auto& [st, name] :
       {std::pair<Status, const char*>{partial_sum_squares_status(xv, sv), "partial_sum_squares"},
        {forward_from_sums_status(xv, std::nullopt, yv, sv, cols), "forward_from_sums"},
        {partial_grad_dot_status(yv, xv, std::nullopt, sv), "partial_grad_dot"},
        {backward_from_sums_status(yv, xv, std::nullopt, rv, sv, cols, yv, std::nullopt, {}, nullptr, 0),
         "backward_from_sums"}}) {
    EXPECT_EQ(st.code, Code::unsupported) << st.message;
    EXPECT_NE(st.message.find(std::string(name) + ": not yet implemented on CUDA"), std::string::npos) << st.message;
  }
}

}  // namespace
}  // namespace rmsnorm::testing
