// The all-reduce group of `rmsnorm check` (fused_allreduce_add_forward; rmsnorm.h, "The end
// of a tensor-parallel layer"): `ranks` partials of x's dtype, each in a buffer of its own
// on the run device (as the peers' buffers are separate allocations), summed, the residual
// added and the row normalised in one call. Judged as check_fused.cpp judges the residual
// add, with r_out's expected bits built here from the API's definition of the sum:
//
//   r_out    bit for bit: the partials added in rank order in the accumulator (fp32; fp64
//            for f64), then the residual in the same accumulator, rounded once to r's dtype
//   y, rstd  the fp64 oracle's norm of exactly that r_out (reference::fused_add_forward of a
//            zero x of x's dtype, the Llama cast's, and that r_out as the residual: 0 + v is
//            v), under forward_tolerance and rstd_tolerance
//
// plus the stray-write count of y, r_out and rstd, and every partial (and an out-of-place
// residual) unchanged.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "check_cases.h"
#include "check_run.h"
#include "harness.h"
#include "options.h"
#include "oracle.h"
#include "problem.h"
#include "tolerances.h"

namespace rmsnorm::cli {
namespace {

namespace ref = rmsnorm::reference;

std::optional<TensorView> view_of(const std::optional<Mirror>& m) {
  return m ? std::optional<TensorView>(m->view) : std::nullopt;
}

std::int64_t element(const TensorView& v, std::int64_t b, std::int64_t i, std::int64_t j) {
  return b * v.batch_stride + i * v.row_stride + j;
}

// r_out as the API defines it, row-major over the view's rows. Not reference::fused_add_forward
// of the summed partials: that would round the sum to x's dtype before the residual is added,
// and the library never rounds it before the final store.
std::vector<double> expected_r_out(const std::vector<HostBuffer>& parts, const TensorView& res) {
  const TensorView& v0 = parts[0].view;
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(v0.total_rows() * v0.cols));
  for (std::int64_t b = 0; b < v0.batch; ++b)
    for (std::int64_t i = 0; i < v0.rows; ++i)
      for (std::int64_t j = 0; j < v0.cols; ++j) {
        const auto load = [&](const TensorView& v) { return load_as_double(v.data, v.dtype, element(v, b, i, j)); };
        if (res.dtype == DType::f64) {
          double s = load(parts[0].view);
          for (std::size_t k = 1; k < parts.size(); ++k) s += load(parts[k].view);
          out.push_back(s + load(res));
        } else {  // float arithmetic, so that every addition rounds to fp32 as the library's does
          float s = static_cast<float>(load(parts[0].view));
          for (std::size_t k = 1; k < parts.size(); ++k) s += static_cast<float>(load(parts[k].view));
          s += static_cast<float>(load(res));
          out.push_back(ref::round_to(res.dtype, s));
        }
      }
  return out;
}

}  // namespace

CaseResult run_allreduce_case(const AllReduceCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  CaseResult r;
  const std::int64_t m = c.batch * c.rows;
  // Seeds: partial k draws from seed + k, the weight and the residual from the two after
  // the last rank's there could be.
  std::vector<HostBuffer> parts;
  for (int k = 0; k < c.ranks; ++k) {
    Placement at = c.x_at;
    if (k == c.odd_rank) ++at.offset;
    parts.push_back(make_buffer(c.x, c.batch, c.rows, c.cols, at));
    ref::fill_normal(parts.back().view, seed + static_cast<std::uint64_t>(k));
  }
  std::optional<HostBuffer> w, r_out, rstd;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + kMaxAllReduceRanks, c.w_mean, 0.1);
  }
  HostBuffer res = make_buffer(c.residual, c.batch, c.rows, c.cols, c.r_at);
  ref::fill_normal(res.view, seed + kMaxAllReduceRanks + 1);
  if (!c.in_place) r_out = make_buffer(c.residual, c.batch, c.rows, c.cols, c.r_out_at);
  HostBuffer y = make_buffer(c.y, c.batch, c.rows, c.cols, c.y_at);
  const DType rstd_type = c.x == DType::f64 ? DType::f64 : DType::f32;
  if (c.rstd) rstd = make_vector(rstd_type, m);

  const std::vector<double> want_r = expected_r_out(parts, res.view);
  ref::FusedAddResult expected;
  {
    HostBuffer zero = make_buffer(c.x, c.batch, c.rows, c.cols, {});
    HostBuffer exact = make_buffer(c.residual, c.batch, c.rows, c.cols, {});
    for (std::int64_t i = 0; i < m * c.cols; ++i) {
      store_from_double(zero.view.data, c.x, i, 0.0);
      store_from_double(exact.view.data, c.residual, i, want_r[static_cast<std::size_t>(i)]);
    }
    expected =
        ref::fused_add_forward(zero.view, exact.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.params);
  }
  std::vector<std::vector<unsigned char>> parts_before;
  for (const HostBuffer& p : parts) parts_before.push_back(p.bytes);
  const std::vector<unsigned char> res_before = res.bytes;

  std::vector<Mirror> dparts;  // one allocation each
  std::vector<TensorView> pviews;
  for (const HostBuffer& p : parts) {
    dparts.push_back(mirror(p, dev));
    pviews.push_back(dparts.back().view);
  }
  const auto up = [&](const std::optional<HostBuffer>& h) {
    return h ? std::optional<Mirror>(mirror(*h, dev)) : std::nullopt;
  };
  Mirror dres = mirror(res, dev), dy = mirror(y, dev);
  std::optional<Mirror> dw = up(w), drout = up(r_out), drstd = up(rstd);
  try {
    fused_allreduce_add_forward(pviews.data(), pviews.size(), dres.view, view_of(dw), dy.view,
                                drout ? drout->view : dres.view, c.params, view_of(drstd));
    synchronize(dev.device, "rmsnorm::fused_allreduce_add_forward");
  } catch (const Error& e) {
    if (e.code() == Code::unsupported && c.skip_if_unsupported) {
      r.skipped = true;
      return r;
    }
    r.cmp.worst_ratio = INFINITY;  // nothing to compare: as bad as it gets
    fail_with(r, std::string("threw ") + code_name(e.code()) + ": " + e.what());
    return r;
  }
  for (std::size_t k = 0; k < parts.size(); ++k) download(dparts[k], parts[k]);
  download(dres, res);
  download(dy, y);
  if (r_out) download(*drout, *r_out);
  if (rstd) download(*drstd, *rstd);

  const HostBuffer& got_r = r_out ? *r_out : res;
  r.cmp = ref::compare(got_r.view, want_r, ref::Tolerance{0.0, 1e-300});
  if (!r.cmp.passed())
    fail_with(r, "r_out not bit-identical to the partials' sum plus the residual: " + r.cmp.describe());
  std::int64_t stray = ref::count_stray_writes(got_r.bytes, got_r.view);
  const ref::Comparison yc =
      ref::compare(y.view, expected.norm.y, ref::forward_tolerance(c.x, c.y, c.params.cast, c.cols));
  if (!yc.passed()) fail_with(r, "y " + yc.describe());
  ref::merge(r.cmp, yc);
  stray += ref::count_stray_writes(y.bytes, y.view);
  if (rstd) stray += check_rstd(r, *rstd, rstd_type, expected.norm.rstd, c.x, c.cols);
  if (stray) fail_with(r, std::to_string(stray) + " bytes written outside the outputs' views");
  for (std::size_t k = 0; k < parts.size(); ++k)
    if (parts[k].bytes != parts_before[k]) fail_with(r, "partial " + std::to_string(k) + " was modified");
  if (!c.in_place && res.bytes != res_before) fail_with(r, "the residual was modified");
  return r;
}

namespace {

bool half(DType t) { return t == DType::f16 || t == DType::bf16; }

// The row stride that puts every row of a 16-byte aligned buffer on the 16-byte grid.
std::int64_t aligned_stride(DType t, std::int64_t cols) {
  const std::int64_t per_chunk = 16 / static_cast<std::int64_t>(dtype_size(t));
  return (cols + per_chunk - 1) / per_chunk * per_chunk;
}

// The layouts of a case's rows: every array's rows on the 16-byte grid (whole chunks where
// the backend loads them); odd pads, each array's own; or on the grid but for one partial,
// whose base is an element off it (on CUDA every array then loads an element at a time).
enum class Layout { aligned, odd_pads, odd_partial };

void lay_out(AllReduceCheckCase& c, Layout l, std::size_t k) {
  if (l == Layout::odd_pads) {
    c.x_at.row_stride = c.cols + 3;
    c.r_at.row_stride = c.cols + 1;
    c.r_out_at.row_stride = c.cols + 5;
    c.y_at.row_stride = c.cols + 2;
    return;
  }
  c.x_at.row_stride = aligned_stride(c.x, c.cols);
  c.r_at.row_stride = c.r_out_at.row_stride = aligned_stride(c.residual, c.cols);
  c.y_at.row_stride = aligned_stride(c.y, c.cols);
  if (l == Layout::odd_partial) c.odd_rank = k % 2 ? c.ranks - 1 : c.ranks / 2;
}

AllReduceCheckCase make(DType x, DType r, std::optional<DType> w, DType y, int ranks, std::int64_t rows,
                        std::int64_t cols) {
  AllReduceCheckCase c;
  c.x = x;
  c.residual = r;
  c.weight = w;
  c.y = y;
  c.ranks = ranks;
  c.rows = rows;
  c.cols = cols;
  return c;
}

// Rows within the element budget counting every partial's elements, at least one.
std::int64_t rows_within(const Sizes& sz, std::int64_t cols, int ranks, std::size_t k) {
  const std::int64_t cap = std::max<std::int64_t>(1, 4 * sz.budget / (cols * (ranks + 2)));
  return std::min(rows_for(sz, cols, k), cap);
}

}  // namespace

std::vector<CheckGroup> build_allreduce_check_groups(bool quick, bool on_cuda) {
  const Sizes sz = case_sizes(quick);
  CheckGroup g{"add all-reduce", {}, {}};
  if (on_cuda && !detail::kCudaRanksSum) {
    g.skipped_why = "the CUDA backend does not serve this fusion yet";
    return {g};
  }
  struct Pair {
    DType x, r;
  };
  std::vector<Pair> pairs = {{DType::f32, DType::f32},
                             {DType::f16, DType::f16},
                             {DType::f16, DType::f32},
                             {DType::bf16, DType::bf16},
                             {DType::bf16, DType::f32}};
  if (!on_cuda) pairs.push_back({DType::f64, DType::f64});
  // Rows of a warp, of a block, of a cluster (sm_90) and streamed, on CUDA; rank counts
  // cycling past the columns so that every (ranks, cols) pair comes up.
  using Cols = std::vector<std::int64_t>;
  const Cols cols = quick ? Cols{1, 100, 4096, 70000} : Cols{1, 7, 100, 4096, 20000, 70000};
  const int ranks_cycle[] = {2, 3, 8, 16, 1};
  std::size_t k = 0;
  for (std::size_t p = 0; p < pairs.size(); ++p) {
    const DType x = pairs[p].x, r = pairs[p].r;
    // Every (weight, y) the API pairs with x: x's weight; an f32 one (16-bit x) with y of
    // x's dtype or f32; none.
    struct WeightY {
      std::optional<DType> w;
      DType y;
    };
    std::vector<WeightY> wys = {{x, x}};
    if (half(x)) {
      wys.push_back({DType::f32, x});
      wys.push_back({DType::f32, DType::f32});
    }
    wys.push_back({std::nullopt, x});
    for (std::int64_t n : cols) {
      const WeightY& wy = wys[k % wys.size()];
      const int ranks = ranks_cycle[k % 5];
      AllReduceCheckCase c = make(x, r, wy.w, wy.y, ranks, rows_within(sz, n, ranks, k + p), n);
      c.params.cast = (k / 2) % 2 ? Cast::llama : Cast::fp32;
      if (wy.w && k % 7 == 3) {  // Gemma's (1 + w): weights near 0
        c.params.weight_offset = 1.0;
        c.w_mean = 0.0;
      }
      c.in_place = k % 3 == 1;
      c.rstd = k % 2 == 0;
      lay_out(c, static_cast<Layout>((k / 3) % 3), k);
      ++k;
      g.allreduce_cases.push_back(c);
    }
  }

  // Batched views with gaps; every base off the 16-byte grid (each partial's, the
  // residual's, r_out's, y's); r_out over a strided residual with 16 ranks.
  for (DType t : {DType::f16, DType::bf16, DType::f32})
    for (std::int64_t n : quick ? Cols{1000} : Cols{100, 4096}) {
      const DType r = half(t) && k++ % 2 ? DType::f32 : t;
      AllReduceCheckCase c = make(t, r, t, t, 3, 4, n);
      c.batch = 3;
      c.x_at = {4 * (n + 8) + 16, n + 8, 0, -1};
      c.r_at = {4 * n + 40, n, 0, -1};
      c.r_out_at = {5 * n, n, 0, -1};
      c.y_at = {4 * (n + 1) + 3, n + 1, 0, -1};
      c.rstd = true;
      g.allreduce_cases.push_back(c);
      c = make(t, r, t, t, 8, 5, n);
      c.x_at.offset = 1;
      c.r_at.offset = 3;
      c.r_out_at.offset = 1;
      c.y_at.offset = 2;
      c.params.cast = Cast::llama;
      g.allreduce_cases.push_back(c);
      c = make(t, r, t, t, 16, rows_within(sz, n, 16, 1), n);  // 3 rows where the budget allows
      c.in_place = true;
      c.r_at.row_stride = n + 8;
      c.x_at.row_stride = n + 16;
      c.y_at.row_stride = n + 3;
      c.odd_rank = 0;
      c.params.weight_offset = 1.0;
      c.w_mean = 0.0;
      c.rstd = true;
      g.allreduce_cases.push_back(c);
    }

  // Each strategy forced (CUDA only: the CPU backend has one), aligned partials and one off
  // the grid; a shape the strategy cannot serve is skipped.
  if (on_cuda)
    for (Strategy s : forced_strategies())
      for (std::int64_t n : {1000, 4096}) {
        AllReduceCheckCase c = make(DType::bf16, DType::f32, DType::bf16, DType::bf16, 8, 5, n);
        c.params.strategy = s;
        c.params.cast = n == 4096 ? Cast::llama : Cast::fp32;
        c.skip_if_unsupported = true;
        c.rstd = true;
        lay_out(c, n == 1000 ? Layout::aligned : Layout::odd_partial, 1);
        g.allreduce_cases.push_back(c);
      }
  return {g};
}

std::string describe(const AllReduceCheckCase& c) {
  std::string s = std::string("x=") + dtype_name(c.x) + " r=" + dtype_name(c.residual) +
                  " w=" + (c.weight ? dtype_name(*c.weight) : "none") + " y=" + dtype_name(c.y) + " " +
                  std::to_string(c.ranks) + (c.ranks == 1 ? " rank " : " ranks ");
  if (c.batch != 1) s += std::to_string(c.batch) + "x";
  s += std::to_string(c.rows) + "x" + std::to_string(c.cols);
  const auto place = [&](const char* name, const Placement& p) {
    if (p.row_stride >= 0 && p.row_stride != c.cols)
      s += std::string(" ") + name + "_row_stride=" + std::to_string(p.row_stride);
    if (p.batch_stride >= 0) s += std::string(" ") + name + "_batch_stride=" + std::to_string(p.batch_stride);
    if (p.offset) s += std::string(" ") + name + "_offset=" + std::to_string(p.offset);
  };
  place("x", c.x_at);
  if (c.odd_rank >= 0) s += " partial " + std::to_string(c.odd_rank) + " one element further";
  place("r", c.r_at);
  if (c.in_place)
    s += " r-in-place";
  else
    place("r_out", c.r_out_at);
  place("y", c.y_at);
  s += describe_params(c.params);
  if (c.rstd) s += " rstd";
  if (c.params.strategy != Strategy::automatic) s += std::string(" strategy=") + strategy_name(c.params.strategy);
  return s;
}

}  // namespace rmsnorm::cli
