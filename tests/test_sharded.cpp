// Rows split across ranks (rmsnorm.h, "Rows split across ranks"), on the CPU backend and,
// when a device is there, on CUDA: each row of x is cut into k column shards, the steps run
// shard by shard with the per-row sums added in f32 between them (what an all-reduce does),
// and the joined outputs are compared with the unsharded fp64 oracle under the forward's and
// backward's tolerances for the whole row length N. On the CPU a single shard must give
// forward's and backward's bytes exactly; on either backend a row's partial sums must have
// the same bits alone, in a batch and in any view. Then the arguments' errors, and CUDA views.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend_test.h"
#include "forward_case.h"
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

// Where the steps run: on the host tensors themselves (CPU), or on device mirrors of them
// with the same layout and alignment (CUDA), made on first use; download() brings a
// mirror's bytes back into its host tensor. Tensors must stay where they are while placed.
class Place {
 public:
  explicit Place(Backend b) : backend_(b) {}
  Backend backend() const { return backend_; }
  TensorView operator()(HostTensor& t) {
    if (backend_ == Backend::cpu) return t.view;
    std::unique_ptr<DeviceMirror>& m = mirrors_[&t];
    if (!m) m = std::make_unique<DeviceMirror>(t);
    return m->view;
  }
  std::optional<TensorView> operator()(std::optional<HostTensor>& t) {
    return t ? std::optional<TensorView>((*this)(*t)) : std::nullopt;
  }
  // A copy of a short-lived tensor (the reduced sums), never looked up again: the mirrors
  // above are found by the tensor's address, which a later local may reuse (the backward's
  // reduced dots once found the forward's sums of squares there).
  TensorView copy(const HostTensor& t) {
    if (backend_ == Backend::cpu) return t.view;
    return copies_.emplace_back(std::make_unique<DeviceMirror>(t))->view;
  }
  void download(HostTensor& t) {
    if (backend_ == Backend::cpu) return;
    device_synchronize();
    mirrors_.at(&t)->download_into(t);
  }
  // `bytes` of workspace on the backend, kept as long as this Place.
  void* workspace(std::size_t bytes) {
    if (backend_ == Backend::cpu) return host_.emplace_back(bytes + 1).data();
    return device_.emplace_back(std::make_unique<DeviceBuffer>(bytes + 1))->data();
  }

 private:
  Backend backend_;
  std::map<const HostTensor*, std::unique_ptr<DeviceMirror>> mirrors_;
  std::deque<std::vector<unsigned char>> host_;
  std::deque<std::unique_ptr<DeviceBuffer>> device_;
  std::deque<std::unique_ptr<DeviceMirror>> copies_;
};

std::optional<TensorView> shard_of(const std::optional<TensorView>& v, std::int64_t begin, std::int64_t end) {
  return v ? std::optional<TensorView>(column_shard(*v, begin, end)) : std::nullopt;
}

// The all-reduce: the shards' per-row sums added in rank order, in the accumulator dtype.
HostTensor reduce(const std::deque<HostTensor>& parts, DType acc, std::int64_t rows) {
  HostTensor out = make_vector(acc, rows);
  for (std::int64_t r = 0; r < rows; ++r) {
    double s = 0;  // rounded to acc after every addition, as an f32 all-reduce adds
    for (const HostTensor& p : parts) s = reference::round_to(acc, s + load_as_double(p.view.data, acc, r));
    store_from_double(out.view.data, acc, r, s);
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
  std::int64_t lead = 0;  // elements before x's, dy's, y's and dx's first (1: misaligned)
  Cast cast = Cast::fp32;
  double offset = 0.0, eps = 1e-6;
  Strategy strategy = Strategy::automatic;
  std::string describe() const {
    return std::string("x=") + dtype_name(x) + " w=" + (w ? dtype_name(*w) : "none") + " y=" + dtype_name(y) +
           " dw=" + dtype_name(dw) + " " + std::to_string(batch) + "x" + std::to_string(rows) + "x" +
           std::to_string(cols) + " in " + std::to_string(shards) + " shards" + (cast == Cast::llama ? " llama" : "") +
           " offset=" + std::to_string(offset) + (lead ? " lead=" + std::to_string(lead) : "") +
           (strategy != Strategy::automatic ? std::string(" strategy=") + strategy_name(strategy) : "");
  }
  Params params() const {
    Params p;
    p.cast = cast;
    p.weight_offset = offset;
    p.eps = eps;
    p.strategy = strategy;
    return p;
  }
};

// The inputs of a case: x, dy and the weight filled, the outputs poisoned.
struct Tensors {
  HostTensor x, dy, y, dx;
  std::optional<HostTensor> w, dw;
  HostTensor rstd;
  Tensors(const ShardCase& c, std::uint64_t seed)
      : x(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 3)),
        dy(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 3)),
        y(make_tensor(c.y, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 3)),
        dx(make_tensor(c.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.lead, 3)),
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

// k per-row vectors of the accumulator dtype (sums, dots, rstd), with guards after them.
std::deque<HostTensor> row_vectors(DType acc, std::int64_t rows, std::int64_t k) {
  std::deque<HostTensor> v;
  for (std::int64_t i = 0; i < k; ++i) v.push_back(make_vector(acc, rows, 0, 2));
  return v;
}

// Forward over k shards: partial sums, the reduction, the apply step. Every shard writes
// its own copy of rstd; all must be equal (they come from the same reduced sums).
void sharded_forward(const ShardCase& c, Tensors& t, Place& place) {
  const Params params = c.params();
  const DType acc = acc_of(c.x);
  const std::int64_t m = c.batch * c.rows;
  const std::vector<std::int64_t> b = shard_bounds(c.cols, c.shards);
  const TensorView x = place(t.x), y = place(t.y);
  const std::optional<TensorView> w = place(t.w);
  std::deque<HostTensor> sums = row_vectors(acc, m, c.shards);
  for (std::int64_t i = 0; i < c.shards; ++i)
    partial_sum_squares(column_shard(x, b[i], b[i + 1]), place(sums[i]), params);
  for (HostTensor& s : sums) {
    place.download(s);
    EXPECT_EQ(reference::count_stray_writes(s.bytes, s.view), 0) << c.describe() << ": sums";
  }
  const HostTensor total = reduce(sums, acc, m);
  const TensorView total_view = place.copy(total);
  std::deque<HostTensor> rstd = row_vectors(acc, m, c.shards);
  for (std::int64_t i = 0; i < c.shards; ++i)
    forward_from_sums(column_shard(x, b[i], b[i + 1]), shard_of(w, b[i], b[i + 1]), column_shard(y, b[i], b[i + 1]),
                      total_view, c.cols, params, place(rstd[i]));
  place.download(t.y);
  for (std::int64_t i = 0; i < c.shards; ++i) {
    place.download(rstd[i]);
    EXPECT_EQ(rstd[i].bytes, rstd[0].bytes) << c.describe() << ": shard " << i << " wrote another rstd";
  }
  t.rstd.bytes = rstd[0].bytes;
  t.rstd.view.data = t.rstd.bytes.data();
}

// Backward over k shards, from the rstd the sharded forward saved.
void sharded_backward(const ShardCase& c, Tensors& t, Place& place) {
  const Params params = c.params();
  const DType acc = acc_of(c.x);
  const std::int64_t m = c.batch * c.rows;
  const std::vector<std::int64_t> b = shard_bounds(c.cols, c.shards);
  const TensorView x = place(t.x), dy = place(t.dy), dx = place(t.dx), rstd = place(t.rstd);
  const std::optional<TensorView> w = place(t.w), dw = place(t.dw);
  std::deque<HostTensor> dots = row_vectors(acc, m, c.shards);
  for (std::int64_t i = 0; i < c.shards; ++i)
    partial_grad_dot(column_shard(dy, b[i], b[i + 1]), column_shard(x, b[i], b[i + 1]), shard_of(w, b[i], b[i + 1]),
                     place(dots[i]), params);
  for (HostTensor& d : dots) {
    place.download(d);
    EXPECT_EQ(reference::count_stray_writes(d.bytes, d.view), 0) << c.describe() << ": dots";
  }
  const HostTensor total = reduce(dots, acc, m);
  const TensorView total_view = place.copy(total);
  for (std::int64_t i = 0; i < c.shards; ++i) {
    const TensorView xs = column_shard(x, b[i], b[i + 1]);
    const std::optional<TensorView> dws = shard_of(dw, b[i], b[i + 1]);
    const std::size_t bytes = backward_workspace_size(xs, dws, params);
    backward_from_sums(column_shard(dy, b[i], b[i + 1]), xs, shard_of(w, b[i], b[i + 1]), rstd, total_view, c.cols,
                       column_shard(dx, b[i], b[i + 1]), dws, params, place.workspace(bytes), bytes);
  }
  place.download(t.dx);
  if (t.dw) place.download(*t.dw);
}

void check_against_oracle(Backend backend, const ShardCase& c, std::uint64_t seed) {
  Tensors t(c, seed);
  const Params params = c.params();
  const reference::ForwardResult f = reference::forward(t.x.view, opt(t.w), c.y, params);
  const reference::BackwardResult g = reference::backward(t.dy.view, t.x.view, opt(t.w), params);
  Place place(backend);
  sharded_forward(c, t, place);
  sharded_backward(c, t, place);

  // The shards' sums joined in another order are still one sum of N terms in a fixed order:
  // the table's bounds for a row of N elements (error growing like sqrt(N)) hold as they are.
  const std::string what = std::string(backend_name(backend)) + " " + c.describe();
  const Comparison y = reference::compare(t.y.view, f.y, reference::forward_tolerance(c.x, c.y, c.cast, c.cols));
  EXPECT_TRUE(y.passed()) << what << ": y " << y.describe();
  EXPECT_EQ(reference::count_stray_writes(t.y.bytes, t.y.view), 0) << what;
  const Comparison r =
      reference::compare_vector(t.rstd.view.data, acc_of(c.x), f.rstd, reference::rstd_tolerance(c.x, c.cols));
  EXPECT_TRUE(r.passed()) << what << ": rstd " << r.describe();
  const Comparison dx = reference::compare_scaled(t.dx.view, g.dx, g.dx_scale, reference::dx_tolerance(c.x, c.cols));
  EXPECT_TRUE(dx.passed()) << what << ": dx " << dx.describe();
  EXPECT_EQ(reference::count_stray_writes(t.dx.bytes, t.dx.view), 0) << what;
  if (t.dw) {
    const Comparison dw = reference::compare_vector_scaled(
        t.dw->view.data, c.dw, g.dw, g.dw_scale, reference::dw_tolerance(c.x, c.dw, c.batch * c.rows, c.cols));
    EXPECT_TRUE(dw.passed()) << what << ": dw " << dw.describe();
    EXPECT_EQ(reference::count_stray_writes(t.dw->bytes, t.dw->view), 0) << what;
  }
}

using Sharded = testing::BackendTest;

TEST_P(Sharded, EveryDtypeCombinationAgainstTheOracle) {
  int k = 0;
  for (const Combo& combo : allowed_combos(GetParam()))
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
        check_against_oracle(GetParam(), c, seed_of({k++}));
      }
}

// Row lengths of one element, odd, prime, off the 16-byte chunk, a chunk multiple, and long
// rows (70000: the cluster and streaming kernels on CUDA; a warp or a block a row for the
// partial sums), in f32, f16 and bf16 alternately, with and without a weight.
TEST_P(Sharded, AwkwardRowLengthsAndShardCounts) {
  int k = 0;
  for (std::int64_t cols : {1, 2, 3, 7, 64, 127, 1031, 4096, 8209, 12288, 70000, 70001})
    for (std::int64_t shards : {1, 2, 3, 4, 8})
      if (shards <= cols) {
        ShardCase c;
        c.x = k % 3 == 0 ? DType::f32 : k % 3 == 1 ? DType::bf16 : DType::f16;
        c.w = c.x;
        if (k % 4 == 3) c.w = std::nullopt;
        c.y = c.x;
        c.dw = DType::f32;
        c.cols = cols;
        c.rows = cols > 1000 ? 3 : 17;
        c.shards = shards;
        check_against_oracle(GetParam(), c, seed_of({cols, shards}));
        ++k;
      }
}

TEST_P(Sharded, BatchedStridedMisalignedAndEps) {
  for (DType t : dtypes()) {
    ShardCase c;
    c.x = t;
    c.w = t;
    c.y = t;
    c.dw = t == DType::f64 ? DType::f64 : DType::f32;
    c.batch = 3;
    c.rows = 4;
    c.cols = 96;
    c.row_stride = 104;
    c.batch_stride = 4 * 104 + 8;
    c.shards = 3;
    check_against_oracle(GetParam(), c, 11);
    c.eps = 0.5;  // eps dominating the mean
    c.cast = Cast::llama;
    check_against_oracle(GetParam(), c, 12);
    // Every row start misaligned, the shards of whole 16-byte chunks or not.
    c.eps = 1e-6;
    c.cast = Cast::fp32;
    c.batch = 1;
    c.row_stride = c.batch_stride = -1;
    c.lead = 1;
    c.cols = 2048;
    c.shards = 2;
    check_against_oracle(GetParam(), c, 13);
    c.shards = 5;
    check_against_oracle(GetParam(), c, 14);
  }
}

TEST_P(Sharded, ManyRowsDw) {
  ShardCase c;
  c.x = DType::bf16;
  c.w = DType::bf16;
  c.y = DType::bf16;
  c.dw = DType::f32;
  c.rows = 5000;
  c.cols = 128;
  c.shards = 4;
  check_against_oracle(GetParam(), c, 21);
}

// The apply steps in every strategy of the forward and backward kernels (CUDA), on shards
// that each of them serves: whole 16-byte chunks (aligned loads) and not (element loads).
TEST_P(Sharded, ForcedStrategies) {
  if (GetParam() == Backend::cpu) GTEST_SKIP() << "the CPU backend has one strategy";
  // cluster_row needs sm_90: a forced plan says so on older devices.
  bool clusters = true;
  {
    DeviceBuffer probe(4096);
    const TensorView v = TensorView::matrix(probe.data(), DType::f32, Device::cuda(0), 1, 1024);
    try {
      plan_forward(v, v, Strategy::cluster_row);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Code::unsupported) << e.what();
      clusters = false;
    }
  }
  int k = 0;
  for (Strategy s : {Strategy::warp_rows, Strategy::block_row, Strategy::long_row, Strategy::cluster_row}) {
    if (s == Strategy::cluster_row && !clusters) continue;
    for (DType t : {DType::f32, DType::f16, DType::bf16})
      for (std::int64_t shards : {1, 2, 3}) {
        ShardCase c;
        c.x = t;
        c.w = t;
        c.y = t;
        c.dw = DType::f32;
        c.strategy = s;
        // At most 128 chunks a shard (warp_rows' capacity, forward and backward): whole chunks
        // in one and two shards, not in three.
        const std::int64_t full = t == DType::f32 ? 512 : 1024;
        c.cols = shards == 3 ? full - 3 : full;
        c.rows = 9;
        c.shards = shards;
        c.cast = k % 2 ? Cast::llama : Cast::fp32;
        check_against_oracle(GetParam(), c, seed_of({static_cast<int>(s), k++}));
      }
  }
}

// A row's partial sums (both steps) have the same bits alone, in a batch, in strided,
// batched and misaligned views, and beside a misaligned weight: their order depends only on
// (cols, dtype). Lengths cover the warp and the block summing a row, whole chunks and not.
TEST_P(Sharded, RowSumsAreLayoutInvariant) {
  constexpr std::int64_t kRows = 6;
  struct Layout {
    const char* name;
    std::int64_t batch, rows, batch_stride, row_stride, lead, w_lead;
  };
  for (DType xt : {DType::f32, DType::f16, DType::bf16})
    for (std::int64_t cols : {1, 7, 127, 1000, 1024, 4099, 9000, 70000}) {
      const std::vector<Layout> layouts = {
          {"contiguous", 1, kRows, -1, -1, 0, 0},
          {"odd offset", 1, kRows, -1, -1, 1, 0},
          {"row stride cols+3", 1, kRows, -1, cols + 3, 0, 0},
          {"batched, strides cols+1", 2, kRows / 2, (kRows / 2) * (cols + 1) + 5, cols + 1, 0, 0},
          {"misaligned weight", 1, kRows, -1, -1, 0, 1},
      };
      HostTensor xs = make_tensor(xt, 1, kRows, cols), dys = make_tensor(xt, 1, kRows, cols);
      reference::fill_normal(xs.view, seed_of({cols, 1}));
      reference::fill_normal(dys.view, seed_of({cols, 2}));
      std::vector<std::optional<DType>> weights = {std::nullopt, xt};
      if (xt != DType::f32) weights.push_back(DType::f32);
      for (const std::optional<DType>& wt : weights) {
        std::optional<HostTensor> w_data;
        if (wt) {
          w_data = make_vector(*wt, cols);
          reference::fill_normal(w_data->view, seed_of({cols, 3}), 0.0, 0.5);
        }
        const std::size_t row_bytes = static_cast<std::size_t>(cols) * dtype_size(xt);
        // The sums of squares and the dots of the rows in layout l, or of each row alone.
        const auto sums_in = [&](const Layout* l) {
          std::vector<std::vector<unsigned char>> out;  // per row: sums then dots
          const std::int64_t calls = l ? 1 : kRows;
          for (std::int64_t call = 0; call < calls; ++call) {
            const std::int64_t batch = l ? l->batch : 1, rows = l ? l->rows : 1;
            const std::int64_t bs = l ? l->batch_stride : -1, rs = l ? l->row_stride : -1, lead = l ? l->lead : 0;
            HostTensor x = make_tensor(xt, batch, rows, cols, bs, rs, lead);
            HostTensor dy = make_tensor(xt, batch, rows, cols, bs, rs, lead);
            for (std::int64_t r = 0; r < batch * rows; ++r) {
              const std::int64_t at = (r / rows) * x.view.batch_stride + (r % rows) * x.view.row_stride;
              const std::int64_t src = (l ? r : call) * cols * static_cast<std::int64_t>(dtype_size(xt));
              const std::int64_t dst = at * static_cast<std::int64_t>(dtype_size(xt));
              std::memcpy(static_cast<unsigned char*>(x.view.data) + dst,
                          static_cast<unsigned char*>(xs.view.data) + src, row_bytes);
              std::memcpy(static_cast<unsigned char*>(dy.view.data) + dst,
                          static_cast<unsigned char*>(dys.view.data) + src, row_bytes);
            }
            std::optional<HostTensor> w;
            if (wt) {
              w = make_vector(*wt, cols, l ? l->w_lead : 0);
              std::memcpy(w->view.data, w_data->view.data, static_cast<std::size_t>(cols) * dtype_size(*wt));
            }
            HostTensor sums = make_vector(DType::f32, batch * rows), dots = make_vector(DType::f32, batch * rows);
            Place place(GetParam());
            Params params;
            params.weight_offset = wt ? 1.0 : 0.0;
            partial_sum_squares(place(x), place(sums), params);
            partial_grad_dot(place(dy), place(x), place(w), place(dots), params);
            place.download(sums);
            place.download(dots);
            for (std::int64_t r = 0; r < batch * rows; ++r) {
              std::vector<unsigned char> bits(8);
              std::memcpy(bits.data(), static_cast<unsigned char*>(sums.view.data) + 4 * r, 4);
              std::memcpy(bits.data() + 4, static_cast<unsigned char*>(dots.view.data) + 4 * r, 4);
              out.push_back(bits);
            }
          }
          return out;
        };
        const auto alone = sums_in(nullptr);
        for (const Layout& l : layouts) {
          const auto got = sums_in(&l);
          for (std::int64_t r = 0; r < kRows; ++r)
            EXPECT_EQ(got[r], alone[r]) << dtype_name(xt) << " w=" << (wt ? dtype_name(*wt) : "none") << " cols "
                                        << cols << ", " << l.name << ": row " << r
                                        << "'s sums differ from the row's alone";
        }
      }
    }
}

// One shard holding the whole rows: the steps compute what forward and backward compute,
// in the same order, so the bytes are the same. (CUDA sums a shard with a kernel of its own,
// whose order is not the forward plan's: its results are within the oracle's tolerances.)
TEST(ShardedCpu, OneShardIsForwardAndBackwardBitForBit) {
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
        Place place(Backend::cpu);
        sharded_forward(c, t, place);
        sharded_backward(c, t, place);

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

TEST_P(Sharded, InPlaceApplySteps) {
  // y may be x, and dx may be dy, as in forward and backward.
  const std::int64_t rows = 6, cols = 300;
  Place place(GetParam());
  HostTensor x = make_tensor(DType::bf16, 1, rows, cols);
  reference::fill_normal(x.view, 5);
  HostTensor w = make_vector(DType::bf16, cols);
  reference::fill_normal(w.view, 6, 1.0, 0.1);
  HostTensor sums = make_vector(DType::f32, rows), rstd = make_vector(DType::f32, rows);
  partial_sum_squares(place(x), place(sums));
  HostTensor y = make_tensor(DType::bf16, 1, rows, cols);
  forward_from_sums(place(x), place(w), place(y), place(sums), cols, {}, place(rstd));
  forward_from_sums(place(x), place(w), place(x), place(sums), cols, {}, place(rstd));
  place.download(x);
  place.download(y);
  EXPECT_EQ(x.bytes, y.bytes);

  HostTensor dy = make_tensor(DType::bf16, 1, rows, cols);
  reference::fill_normal(dy.view, 7);
  HostTensor dots = make_vector(DType::f32, rows);
  partial_grad_dot(place(dy), place(x), place(w), place(dots));
  HostTensor dx = make_tensor(DType::bf16, 1, rows, cols);
  backward_from_sums(place(dy), place(x), place(w), place(rstd), place(dots), cols, place(dx), std::nullopt, {},
                     nullptr, 0);
  backward_from_sums(place(dy), place(x), place(w), place(rstd), place(dots), cols, place(dy), std::nullopt, {},
                     nullptr, 0);
  place.download(dy);
  place.download(dx);
  EXPECT_EQ(dy.bytes, dx.bytes);
}

TEST_P(Sharded, ZeroRowsAndTheirDw) {
  Place place(GetParam());
  const Device d = GetParam() == Backend::cpu ? Device::cpu() : Device::cuda(0);
  const TensorView x = TensorView::matrix(nullptr, DType::f32, d, 0, 8);
  const TensorView none = TensorView::vector(nullptr, DType::f32, d, 0);
  partial_sum_squares(x, none);
  forward_from_sums(x, std::nullopt, x, none, 16, {});
  partial_grad_dot(x, x, std::nullopt, none);
  HostTensor w = make_vector(DType::f32, 8);
  reference::fill_normal(w.view, 1);
  HostTensor dw = make_vector(DType::f32, 8);
  HostTensor dx = make_tensor(DType::f32, 1, 0, 8);
  backward_from_sums(x, x, place(w), none, none, 16, place(dx), place(dw), {}, nullptr, 0);
  place.download(dw);
  for (std::int64_t j = 0; j < 8; ++j) EXPECT_EQ(load_as_double(dw.view.data, DType::f32, j), 0.0);
}

INSTANTIATE_TEST_SUITE_P(, Sharded, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& i) { return backend_name(i.param); });

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

// A CPU-only build refuses CUDA views as forward does. A CUDA build runs the four steps on
// them (the Sharded suite checks their values against the oracle), with the partial sums
// close to the CPU's, and refuses f64 x as forward does, after validating the arguments.
TEST(ShardedValidation, CudaViews) {
  const std::int64_t rows = 3, cols = 40;
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

  HostTensor x = make_tensor(DType::f32, 1, rows, cols), dy = make_tensor(DType::f32, 1, rows, cols);
  reference::fill_normal(x.view, 31);
  reference::fill_normal(dy.view, 32);
  // The partial sums of both backends: sums of squares (positive terms) and dots agree to
  // within the rounding of a sum of `cols` f32 terms, relative to the sum of their sizes.
  HostTensor sums[2] = {make_vector(DType::f32, rows), make_vector(DType::f32, rows)};
  HostTensor dots[2] = {make_vector(DType::f32, rows), make_vector(DType::f32, rows)};
  for (int b = 0; b < 2; ++b) {
    Place place(b == 0 ? Backend::cpu : Backend::cuda);
    const Status s1 = partial_sum_squares_status(place(x), place(sums[b]));
    const Status s2 = partial_grad_dot_status(place(dy), place(x), std::nullopt, place(dots[b]));
    EXPECT_TRUE(s1.ok() && s2.ok()) << s1.message << " " << s2.message;
    place.download(sums[b]);
    place.download(dots[b]);
  }
  for (std::int64_t r = 0; r < rows; ++r) {
    double size = 0;
    for (std::int64_t j = 0; j < cols; ++j)
      size += std::abs(load_as_double(x.view.data, DType::f32, r * cols + j) *
                       load_as_double(dy.view.data, DType::f32, r * cols + j));
    const double cpu_s = load_as_double(sums[0].view.data, DType::f32, r);
    EXPECT_NEAR(load_as_double(sums[1].view.data, DType::f32, r), cpu_s, 1e-5 * cpu_s) << "sums[" << r << "]";
    EXPECT_NEAR(load_as_double(dots[1].view.data, DType::f32, r), load_as_double(dots[0].view.data, DType::f32, r),
                1e-5 * size)
        << "dots[" << r << "]";
  }

  Place place(Backend::cuda);
  HostTensor y = make_tensor(DType::f32, 1, rows, cols), dx = make_tensor(DType::f32, 1, rows, cols);
  HostTensor rstd = make_vector(DType::f32, rows);
  const Status f =
      forward_from_sums_status(place(x), std::nullopt, place(y), place(sums[1]), 2 * cols, {}, place(rstd));
  EXPECT_TRUE(f.ok()) << f.message;
  const Status g = backward_from_sums_status(place(dy), place(x), std::nullopt, place(rstd), place(dots[1]), 2 * cols,
                                             place(dx), std::nullopt, {}, nullptr, 0);
  EXPECT_TRUE(g.ok()) << g.message;
  place.download(y);
  place.download(dx);
  place.download(rstd);
  EXPECT_EQ(reference::count_stray_writes(y.bytes, y.view), 0);
  EXPECT_EQ(reference::count_stray_writes(dx.bytes, dx.view), 0);
  // rstd from the sums of 2 * cols elements (the rest of the row on other ranks: zeros here).
  for (std::int64_t r = 0; r < rows; ++r) {
    const double want = 1.0 / std::sqrt(load_as_double(sums[1].view.data, DType::f32, r) / (2.0 * cols) + 1e-6);
    EXPECT_NEAR(load_as_double(rstd.view.data, DType::f32, r), want, 1e-6 * want) << "rstd[" << r << "]";
  }

  // f64 is a CPU-only dtype: refused before anything runs, naming x.
  DeviceBuffer x64(rows * cols * 8), s64(rows * 8);
  const TensorView xv = TensorView::matrix(x64.data(), DType::f64, Device::cuda(0), rows, cols);
  const TensorView sv = TensorView::vector(s64.data(), DType::f64, Device::cuda(0), rows);
  const Status st = partial_sum_squares_status(xv, sv);
  EXPECT_EQ(st.code, Code::unsupported) << st.message;
  EXPECT_TRUE(names_word(st.message, "x")) << st.message;
}

}  // namespace
}  // namespace rmsnorm::testing
