// The sharded-row groups of `rmsnorm check` (rows whose columns are split across ranks;
// rmsnorm.h, "Rows split across ranks"): every row of x is cut into k column shards, the
// steps run on the run device shard by shard, and the per-row sums are added between them
// in rank order in f32 (f64 for f64 x), as an all-reduce adds them. The joined y and rstd
// (forward), dx and dw (backward, from the rstd a forward would have saved) are judged
// against the unsharded fp64 oracle with the tolerances of a whole row of N elements: the
// shards' sums joined in another order are still one sum of N terms.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "check_cases.h"
#include "check_run.h"
#include "harness.h"
#include "oracle.h"
#include "shards.h"
#include "tolerances.h"

namespace rmsnorm::cli {
namespace {

namespace ref = rmsnorm::reference;

DType acc_of(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// One per-row vector of sums for each shard, on the run device.
struct RowSums {
  std::vector<DeviceBuffer> parts;
  DeviceBuffer total;
  TensorView view(const DeviceBuffer& b, const RunDevice& dev, DType acc, std::int64_t rows) const {
    return TensorView::vector(b.data(), acc, dev.device, rows);
  }
};

// The all-reduce: downloads each shard's sums and adds them in rank order, rounding to the
// accumulator's dtype after every addition; uploads the total.
void all_reduce(RowSums& s, DType acc, std::int64_t rows, const RunDevice& dev) {
  const std::size_t bytes = static_cast<std::size_t>(rows) * dtype_size(acc);
  std::vector<unsigned char> part(bytes), total(bytes);
  std::vector<double> sum(static_cast<std::size_t>(rows), 0.0);
  for (const DeviceBuffer& b : s.parts) {
    b.download(part.data(), bytes);
    for (std::int64_t r = 0; r < rows; ++r)
      sum[static_cast<std::size_t>(r)] =
          ref::round_to(acc, sum[static_cast<std::size_t>(r)] + load_as_double(part.data(), acc, r));
  }
  for (std::int64_t r = 0; r < rows; ++r) store_from_double(total.data(), acc, r, sum[static_cast<std::size_t>(r)]);
  s.total = DeviceBuffer(dev.device, bytes);
  s.total.upload(total.data(), bytes);
}

std::optional<TensorView> shard_of(const std::optional<Mirror>& m, std::int64_t begin, std::int64_t end) {
  return m ? std::optional<TensorView>(ref::column_shard(m->view, begin, end)) : std::nullopt;
}

CaseResult failure(const std::string& why) {
  CaseResult r;
  r.failed = true;
  r.cmp.worst_ratio = INFINITY;  // nothing to compare: as bad as it gets
  r.problem = why;
  return r;
}

CaseResult run_forward(const ShardedCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  const DType acc = acc_of(c.x);
  const std::int64_t m = c.batch * c.rows;
  HostBuffer x = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  ref::fill_normal(x.view, seed, 0.0, c.x_scale);
  std::optional<HostBuffer> w;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 1, c.w_mean, 0.1);
  }
  HostBuffer y = make_buffer(c.y, c.batch, c.rows, c.cols, c.x_at);
  const ref::ForwardResult expected =
      ref::forward(x.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.y, c.params);
  const std::vector<unsigned char> x_before = x.bytes;

  Mirror xd = mirror(x, dev), yd = mirror(y, dev);
  std::optional<Mirror> wd;
  if (w) wd = mirror(*w, dev);
  const std::vector<std::int64_t> b = ref::shard_bounds(c.cols, c.shards);
  std::vector<HostBuffer> rstd;  // every shard writes the rows' rstd
  std::vector<Mirror> rstd_d;
  RowSums sums;
  try {
    for (std::int64_t i = 0; i < c.shards; ++i) {
      sums.parts.emplace_back(dev.device, static_cast<std::size_t>(m) * dtype_size(acc));
      partial_sum_squares(ref::column_shard(xd.view, b[i], b[i + 1]), sums.view(sums.parts.back(), dev, acc, m),
                          c.params);
    }
    synchronize(dev.device, "rmsnorm::partial_sum_squares");
    all_reduce(sums, acc, m, dev);
    for (std::int64_t i = 0; i < c.shards; ++i) {
      rstd.push_back(make_vector(acc, m));
      rstd_d.push_back(mirror(rstd.back(), dev));
      forward_from_sums(ref::column_shard(xd.view, b[i], b[i + 1]), shard_of(wd, b[i], b[i + 1]),
                        ref::column_shard(yd.view, b[i], b[i + 1]), sums.view(sums.total, dev, acc, m), c.cols,
                        c.params, rstd_d.back().view);
    }
    synchronize(dev.device, "rmsnorm::forward_from_sums");
  } catch (const Error& e) {
    return failure(std::string("threw ") + code_name(e.code()) + ": " + e.what());
  }
  download(xd, x);
  download(yd, y);
  for (std::size_t i = 0; i < rstd.size(); ++i) download(rstd_d[i], rstd[i]);

  CaseResult r;
  r.cmp = ref::compare(y.view, expected.y, ref::forward_tolerance(c.x, c.y, c.params.cast, c.cols));
  std::string what = r.cmp.passed() ? "" : "y " + r.cmp.describe();
  std::int64_t stray = ref::count_stray_writes(y.bytes, y.view);
  for (const HostBuffer& rs : rstd) {
    const ref::Comparison rc = ref::compare_vector(rs.view.data, acc, expected.rstd, ref::rstd_tolerance(c.x, c.cols));
    if (!rc.passed() && what.empty()) what = "rstd " + rc.describe();
    ref::merge(r.cmp, rc);
    stray += ref::count_stray_writes(rs.bytes, rs.view);
  }
  r.failed = !what.empty() || stray != 0 || x.bytes != x_before;
  if (!what.empty())
    r.problem = what;
  else if (stray)
    r.problem = std::to_string(stray) + " bytes written outside y's and rstd's views";
  else if (x.bytes != x_before)
    r.problem = "x was modified";
  return r;
}

CaseResult run_backward(const ShardedCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  const DType acc = acc_of(c.x);
  const std::int64_t m = c.batch * c.rows;
  HostBuffer x = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  HostBuffer dy = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  ref::fill_normal(x.view, seed, 0.0, c.x_scale);
  ref::fill_normal(dy.view, seed + 1);
  std::optional<HostBuffer> w, dw;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 2, c.w_mean, 0.1);
    if (c.dw) dw = make_vector(*c.dw, c.cols);
  }
  HostBuffer dx = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  const ref::BackwardResult expected =
      ref::backward(dy.view, x.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.params);
  // What the forward saved: the exact rstd rounded once to the accumulator's dtype.
  HostBuffer rstd = make_vector(acc, m);
  for (std::int64_t i = 0; i < m; ++i)
    store_from_double(rstd.view.data, acc, i, expected.rstd[static_cast<std::size_t>(i)]);

  Mirror xd = mirror(x, dev), dyd = mirror(dy, dev), dxd = mirror(dx, dev), rd = mirror(rstd, dev);
  std::optional<Mirror> wd, dwd;
  if (w) wd = mirror(*w, dev);
  if (dw) dwd = mirror(*dw, dev);
  const std::vector<std::int64_t> b = ref::shard_bounds(c.cols, c.shards);
  RowSums dots;
  try {
    for (std::int64_t i = 0; i < c.shards; ++i) {
      dots.parts.emplace_back(dev.device, static_cast<std::size_t>(m) * dtype_size(acc));
      partial_grad_dot(ref::column_shard(dyd.view, b[i], b[i + 1]), ref::column_shard(xd.view, b[i], b[i + 1]),
                       shard_of(wd, b[i], b[i + 1]), dots.view(dots.parts.back(), dev, acc, m), c.params);
    }
    synchronize(dev.device, "rmsnorm::partial_grad_dot");
    all_reduce(dots, acc, m, dev);
    for (std::int64_t i = 0; i < c.shards; ++i) {
      const TensorView xs = ref::column_shard(xd.view, b[i], b[i + 1]);
      const std::optional<TensorView> dws = shard_of(dwd, b[i], b[i + 1]);
      const std::size_t bytes = backward_workspace_size(xs, dws, c.params);
      DeviceBuffer ws(dev.device, bytes);
      const std::vector<unsigned char> stale(bytes, 0xFF);
      ws.upload(stale.data(), bytes);
      backward_from_sums(ref::column_shard(dyd.view, b[i], b[i + 1]), xs, shard_of(wd, b[i], b[i + 1]), rd.view,
                         dots.view(dots.total, dev, acc, m), c.cols, ref::column_shard(dxd.view, b[i], b[i + 1]), dws,
                         c.params, ws.data(), bytes);
      synchronize(dev.device, "rmsnorm::backward_from_sums");
    }
  } catch (const Error& e) {
    return failure(std::string("threw ") + code_name(e.code()) + ": " + e.what());
  }
  download(dxd, dx);
  if (dw) download(*dwd, *dw);

  CaseResult r;
  std::string what;
  if (m > 0) {
    r.cmp = ref::compare_scaled(dx.view, expected.dx, expected.dx_scale, ref::dx_tolerance(c.x, c.cols));
    if (!r.cmp.passed()) what = "dx " + r.cmp.describe();
  }
  std::int64_t stray = ref::count_stray_writes(dx.bytes, dx.view);
  if (dw) {
    const ref::Comparison dwc = ref::compare_vector_scaled(dw->view.data, *c.dw, expected.dw, expected.dw_scale,
                                                           ref::dw_tolerance(c.x, *c.dw, m, c.cols));
    if (!dwc.passed() && what.empty()) what = "dw " + dwc.describe();
    ref::merge(r.cmp, dwc);
    stray += ref::count_stray_writes(dw->bytes, dw->view);
  }
  r.failed = !what.empty() || stray != 0;
  r.problem =
      !what.empty() ? what : (stray ? std::to_string(stray) + " bytes written outside dx's and dw's views" : "");
  return r;
}

struct Combo {
  DType x;
  std::optional<DType> w;
  DType y;
};

ShardedCheckCase make(bool backward, const Combo& t, std::int64_t rows, std::int64_t cols, std::int64_t shards) {
  ShardedCheckCase c;
  c.backward = backward;
  c.x = t.x;
  c.weight = t.w;
  c.y = t.y;
  c.dw = t.w;
  c.rows = rows;
  c.cols = cols;
  c.shards = shards;
  return c;
}

}  // namespace

CaseResult run_sharded_case(const ShardedCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  return c.backward ? run_backward(c, dev, seed) : run_forward(c, dev, seed);
}

std::vector<CheckGroup> build_sharded_check_groups(bool quick, bool on_cuda, const std::string& op) {
  const Sizes sz = case_sizes(quick);
  // Every (x, weight, y) the forward accepts; f64 is a CPU-only dtype.
  std::vector<Combo> combos;
  for (DType x : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
    if (x == DType::f64 && on_cuda) continue;
    combos.push_back({x, x, x});
    if (x == DType::f16 || x == DType::bf16) {
      combos.push_back({x, DType::f32, x});
      combos.push_back({x, DType::f32, DType::f32});
    }
    combos.push_back({x, std::nullopt, x});
  }
  // Row lengths of one element, odd, prime, off and on the 16-byte chunk, and long rows (on
  // CUDA the cluster kernels, or the streaming ones beyond a cluster, for the apply steps).
  using Cols = std::vector<std::int64_t>;
  const Cols cols = quick ? Cols{7, 1000, 4096, 70000} : Cols{1, 7, 127, 1000, 4096, 12288, 70000, 140001};
  const std::vector<std::int64_t> shard_counts = {2, 3, 4, 8};

  std::vector<CheckGroup> groups;
  for (bool backward : {false, true}) {
    if (op == (backward ? "forward" : "backward")) continue;
    CheckGroup g{backward ? "backward sharded rows" : "sharded rows", {}, {}};
    std::size_t k = 0;
    for (const Combo& t : combos)
      for (std::int64_t n : cols) {
        if (backward && t.y != t.x) continue;  // the backward has no y
        const std::int64_t shards = std::min<std::int64_t>(n, shard_counts[k % shard_counts.size()]);
        ShardedCheckCase c = make(backward, t, rows_for(sz, n, k), n, shards);
        c.params.cast = k % 2 ? Cast::llama : Cast::fp32;
        if (t.w && k % 3 == 0) {  // Gemma's offset, weights near 0
          c.params.weight_offset = 1.0;
          c.w_mean = 0.0;
        }
        if (backward && t.w && t.x != DType::f32 && t.x != DType::f64 && k % 2) c.dw = DType::f32;
        if (backward && t.w && k % 5 == 4) c.dw = std::nullopt;  // dw not asked for
        ++k;
        g.sharded_cases.push_back(c);
      }
    // Batched, strided rows, a row stride that breaks alignment; eps and scales where eps
    // dominates and where squares get large.
    for (DType t : {DType::f32, DType::f16, DType::bf16}) {
      ShardedCheckCase c = make(backward, {t, t, t}, 5, quick ? 100 : 1000, 3);
      c.batch = 3;
      c.x_at = {5 * (c.cols + 24) + 16, c.cols + 24, 0, -1};
      g.sharded_cases.push_back(c);
      c = make(backward, {t, t, t}, 9, 257, 4);
      c.x_at.row_stride = 257 + 3;
      c.x_scale = 1e-3;
      c.params.eps = 0.0;
      g.sharded_cases.push_back(c);
      c.x_scale = 30.0;
      c.params.eps = 1e-5;
      g.sharded_cases.push_back(c);
    }
    groups.push_back(g);
  }
  return groups;
}

std::string describe(const ShardedCheckCase& c) {
  std::string s = std::string(c.backward ? "backward " : "") + "x=" + dtype_name(c.x) +
                  " w=" + (c.weight ? dtype_name(*c.weight) : "none");
  if (c.backward)
    s += std::string(" dw=") + (c.dw && c.weight ? dtype_name(*c.dw) : "none");
  else
    s += std::string(" y=") + dtype_name(c.y);
  s += " ";
  if (c.batch != 1) s += std::to_string(c.batch) + "x";
  s += std::to_string(c.rows) + "x" + std::to_string(c.cols) + " in " + std::to_string(c.shards) + " shards";
  if (c.x_at.row_stride >= 0) s += " row_stride=" + std::to_string(c.x_at.row_stride);
  if (c.x_at.batch_stride >= 0) s += " batch_stride=" + std::to_string(c.x_at.batch_stride);
  if (!c.backward) s += c.params.cast == Cast::llama ? " cast=llama" : " cast=fp32";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", c.params.eps);
  s += std::string(" eps=") + buf;
  if (c.params.weight_offset != 0) s += " offset=" + std::to_string(static_cast<int>(c.params.weight_offset));
  if (c.x_scale != 1.0) {
    std::snprintf(buf, sizeof buf, "%g", c.x_scale);
    s += std::string(" x_scale=") + buf;
  }
  return s;
}

}  // namespace rmsnorm::cli
