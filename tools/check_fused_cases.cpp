// The fused groups of `rmsnorm check`: the residual add (every dtype pair, awkward rows,
// layouts, in place), the quantised outputs (each scale kind and 8-bit dtype, group sizes
// and layouts, pow2 scales, scale_ub, saturation, the reciprocal's division, after a
// residual add), and the residual add's backward. On CUDA a group is skipped, saying so,
// until the backend serves it (the kCuda* flags of src/problem.h).
#include <algorithm>

#include "check_cases.h"
#include "problem.h"

namespace rmsnorm::cli {
namespace {

using Cols = std::vector<std::int64_t>;

bool half(DType t) { return t == DType::f16 || t == DType::bf16; }

CheckCase make(DType x, std::optional<DType> w, DType y, std::int64_t rows, std::int64_t cols) {
  CheckCase c;
  c.x = x;
  c.weight = w;
  c.y = y;
  c.rows = rows;
  c.cols = cols;
  return c;
}

CheckCase with_residual(CheckCase c, DType r, bool in_place = false) {
  ResidualCheck res;
  res.dtype = r;
  res.in_place = in_place;
  c.residual = res;
  return c;
}

CheckCase with_quant(CheckCase c, QuantScale kind, DType q, std::int64_t group = 128) {
  QuantCheck qc;
  qc.kind = kind;
  qc.dtype = q;
  qc.group_size = group;
  c.quant = qc;
  return c;
}

// Every (weight, y) the API pairs with x: the weight of x's dtype, f32 (16-bit x; y then x's
// or f32) or none.
struct WeightY {
  std::optional<DType> w;
  DType y;
};
std::vector<WeightY> weight_y(DType x) {
  std::vector<WeightY> out = {{x, x}};
  if (half(x)) {
    out.push_back({DType::f32, x});
    out.push_back({DType::f32, DType::f32});
  }
  out.push_back({std::nullopt, x});
  return out;
}

std::vector<CheckGroup> add_groups(bool quick, bool on_cuda) {
  const Sizes sz = case_sizes(quick);
  std::vector<DType> xs = {DType::f32, DType::f16, DType::bf16};
  if (!on_cuda) xs.push_back(DType::f64);
  std::vector<CheckGroup> groups;

  // Every (x, residual) pair with every weight and y, both casts, offsets 0 and 1.
  const Cols combo_cols = quick ? Cols{7, 128, 1000, 4096} : Cols{1, 7, 64, 128, 1000, 4096, 8192};
  for (DType x : xs) {
    std::vector<DType> rs = {x};
    if (half(x)) rs.push_back(DType::f32);
    for (DType r : rs) {
      CheckGroup g{std::string("add dtypes x=") + dtype_name(x) + " r=" + dtype_name(r), {}, {}};
      std::size_t k = 0;
      for (const WeightY& wy : weight_y(x))
        for (std::int64_t n : combo_cols) {
          CheckCase c = with_residual(make(x, wy.w, wy.y, rows_for(sz, n, k), n), r);
          c.params.cast = k % 2 ? Cast::llama : Cast::fp32;
          if (wy.w && k % 3 == 1) {
            c.params.weight_offset = 1.0;  // Gemma: weights near 0
            c.w_mean = 0.0;
          }
          c.rstd = k++ % 2 == 0;
          g.cases.push_back(c);
        }
      groups.push_back(g);
    }
  }

  // Awkward row lengths (1, primes, 2^k +- 1, past what a block holds in registers).
  {
    const Cols cols = quick ? Cols{1, 3, 17, 127, 1000, 1031, 4095, 8191, 65537}
                            : Cols{1,    2,    3,     5,     7,     17,    31,    63,     65,    100,  127,
                                   129,  257,  513,   1000,  1023,  1025,  1031,  2047,   4095,  4097, 5120,
                                   8191, 8193, 12288, 16383, 16385, 32767, 65537, 131071, 262147};
    CheckGroup g{"add awkward cols", {}, {}};
    std::size_t k = 0;
    for (DType t : {DType::f32, DType::f16, DType::bf16})
      for (std::int64_t n : cols) {
        const DType r = half(t) && k % 2 ? DType::f32 : t;
        CheckCase c = with_residual(make(t, t, t, rows_for(sz, n, k), n), r);
        c.params.cast = k++ % 3 == 2 ? Cast::llama : Cast::fp32;
        g.cases.push_back(c);
      }
    groups.push_back(g);
  }

  // Layouts: each of x, the residual, r_out and y with its own row stride (aligned, odd),
  // misaligned base pointers, batched views with gaps; in place, vLLM's way (y is x and
  // r_out the residual) and each half of it.
  {
    const Cols cols = quick ? Cols{64, 1000} : Cols{64, 1000, 4096, 5120};
    CheckGroup g{"add layouts / in place", {}, {}};
    std::size_t k = 0;
    for (DType t : {DType::f16, DType::bf16, DType::f32})
      for (std::int64_t n : cols) {
        const std::int64_t rows = std::max<std::int64_t>(2, rows_for(sz, n + 64, k));
        const DType r = t != DType::f32 && k % 2 ? DType::f32 : t;
        ++k;
        CheckCase c = with_residual(make(t, t, t, rows, n), r);
        c.x_at.row_stride = n + 8;
        c.residual->at.row_stride = n + 3;
        c.residual->out_at.row_stride = n + 5;
        c.y_at.row_stride = n + 16;
        c.rstd = true;
        g.cases.push_back(c);
        c = with_residual(make(t, t, t, rows, n), r);
        c.x_at.offset = 1;
        c.residual->at.offset = 3;
        c.residual->out_at.offset = 1;
        c.params.cast = Cast::llama;
        g.cases.push_back(c);
        c = with_residual(make(t, t, t, 4, n), r);
        c.batch = 3;
        c.x_at = {4 * (n + 8) + 16, n + 8, 0, -1};
        c.residual->at = {4 * n + 40, n, 0, -1};
        c.residual->out_at = {5 * n, n, 0, -1};
        c.y_at = {4 * (n + 1) + 3, n + 1, 0, -1};
        g.cases.push_back(c);
        for (int mode = 0; mode < 3; ++mode) {  // y in place; r in place; both (vLLM)
          c = with_residual(make(t, t, t, rows, n), r, mode != 0);
          c.in_place = mode != 1;
          if (mode == 2) c.x_at.row_stride = c.residual->at.row_stride = n + 8;
          c.rstd = mode == 1;
          g.cases.push_back(c);
        }
      }
    groups.push_back(g);
  }
  return groups;
}

std::vector<CheckGroup> quant_groups(bool quick) {
  const Sizes sz = case_sizes(quick);
  std::vector<CheckGroup> groups;
  const std::vector<DType> xs = {DType::f32, DType::f16, DType::bf16};
  for (QuantScale kind : {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group})
    for (DType q : {DType::f8e4m3, DType::i8}) {
      CheckGroup g{std::string("quant ") + quant_scale_name(kind) + " " + dtype_name(q), {}, {}};
      std::size_t k = 0;
      // The full lists reach the block rows of six and eight vectors a lane (12288 to 32768
      // 16-bit columns: kQuantBlockRowConfigs).
      const Cols cols = kind == QuantScale::per_group
                            ? (quick ? Cols{128, 1024, 4096} : Cols{128, 640, 1024, 4096, 7168, 14336, 24576})
                            : (quick ? Cols{1, 7, 1000, 4096} : Cols{1, 7, 64, 1000, 4096, 8191, 12288, 16392, 32767});
      for (DType x : xs)
        for (const WeightY& wy : weight_y(x))
          for (std::int64_t n : cols) {
            CheckCase c = with_quant(make(x, wy.w, x, rows_for(sz, n, k), n), kind, q);
            c.params.cast = k % 2 ? Cast::llama : Cast::fp32;
            if (wy.w && k % 5 == 2) {
              c.params.weight_offset = 1.0;
              c.w_mean = 0.0;
            }
            if (kind == QuantScale::static_tensor)
              c.quant->static_fraction = k % 3 == 0 ? 0.5 : 1.25;  // saturating or not
            if (kind != QuantScale::static_tensor) {
              c.quant->pow2 = k % 4 == 1;
              if (k % 4 == 3) c.quant->scale_ub = 2.0;  // below many rows' max: capped, saturating
            }
            if (kind == QuantScale::per_group) {
              c.quant->group_size = k % 3 == 1 ? 64 : 128;
              c.quant->column_major = k % 2 == 1;
            }
            if (k % 3 == 2) c.quant->division = QuantDivision::reciprocal;
            c.rstd = k % 2 == 0;
            ++k;
            g.cases.push_back(c);
          }
      groups.push_back(g);
    }

  // After a residual add (fused_add_quant_forward), every kind, strided and in place.
  {
    CheckGroup g{"add + quant", {}, {}};
    std::size_t k = 0;
    for (DType x : xs)
      for (QuantScale kind : {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group})
        for (DType q : {DType::f8e4m3, DType::i8})
          for (std::int64_t n : quick ? Cols{1024} : Cols{128, 1024, 4096}) {
            const DType r = half(x) && k % 2 ? DType::f32 : x;
            CheckCase c = with_residual(with_quant(make(x, x, x, rows_for(sz, n, k), n), kind, q), r, k % 3 == 0);
            if (k % 3 == 1) {
              c.x_at.row_stride = n + 3;
              c.residual->at.row_stride = n + 8;
              c.y_at.row_stride = n + 1;
            }
            c.quant->pow2 = kind != QuantScale::static_tensor && k % 4 == 1;
            if (k % 3 == 1) c.quant->division = QuantDivision::reciprocal;
            c.params.cast = k % 2 ? Cast::llama : Cast::fp32;
            ++k;
            g.cases.push_back(c);
          }
    groups.push_back(g);
  }
  return groups;
}

std::vector<CheckGroup> add_backward_groups(bool quick, bool on_cuda) {
  const Sizes sz = case_sizes(quick);
  std::vector<CheckGroup> groups;
  struct Pair {
    DType r, x;
  };
  std::vector<Pair> pairs = {{DType::f32, DType::f32},
                             {DType::f16, DType::f16},
                             {DType::bf16, DType::bf16},
                             {DType::f32, DType::f16},
                             {DType::f32, DType::bf16}};
  if (!on_cuda) pairs.push_back({DType::f64, DType::f64});
  const Cols cols = quick ? Cols{7, 128, 1000, 4096} : Cols{1, 7, 64, 128, 1000, 4096, 8192, 65537};
  for (const Pair& p : pairs) {
    CheckGroup g{std::string("add backward r_out=") + dtype_name(p.r) + " x=" + dtype_name(p.x), {}, {}};
    std::vector<std::optional<DType>> weights = {p.x, std::nullopt};
    if (half(p.x)) weights.push_back(DType::f32);
    std::size_t k = 0;
    for (std::optional<DType> w : weights)
      for (std::int64_t n : cols) {
        BackwardCheckCase c;
        c.x = p.x;
        c.residual = p.r;
        c.weight = w;
        if (w) c.dw = k % 2 && *w != DType::f64 ? DType::f32 : *w;
        c.want_dr = p.r != p.x || k % 3 == 0;
        c.rows = rows_for(sz, n, k);
        c.cols = n;
        c.saved_rstd = k % 2 == 0;
        if (w && k % 4 == 3) {
          c.params.weight_offset = 1.0;
          c.w_mean = 0.0;
        }
        ++k;
        g.backward_cases.push_back(c);
      }
    groups.push_back(g);
  }
  // Layouts, dx written over dr_out, and two runs giving the same bytes.
  {
    CheckGroup g{"add backward layouts / in place / determinism", {}, {}};
    std::size_t k = 0;
    for (DType t : {DType::bf16, DType::f16, DType::f32})
      for (std::int64_t n : quick ? Cols{64, 1000} : Cols{64, 1000, 4096}) {
        BackwardCheckCase c;
        c.x = t;
        c.residual = t;
        c.weight = t;
        c.dw = DType::f32;
        c.rows = std::max<std::int64_t>(2, rows_for(sz, n + 64, k++));
        c.cols = n;
        c.x_at.row_stride = n + 3;
        c.dy_at.row_stride = n + 8;
        c.dx_at = {-1, n + 1, 1, -1};
        g.backward_cases.push_back(c);
        c.x_at = c.dy_at = c.dx_at = {};
        c.in_place = true;  // dx is dr_out
        c.saved_rstd = true;
        g.backward_cases.push_back(c);
        c.in_place = false;
        c.twice = true;
        c.rows = std::min<std::int64_t>(sz.budget / n, 2000);
        g.backward_cases.push_back(c);
      }
    groups.push_back(g);
  }
  return groups;
}

}  // namespace

std::vector<CheckGroup> build_fused_check_groups(bool quick, bool on_cuda, const std::string& which) {
  std::vector<CheckGroup> groups = which == "add"     ? add_groups(quick, on_cuda)
                                   : which == "quant" ? quant_groups(quick)
                                                      : add_backward_groups(quick, on_cuda);
  const bool served = which == "add"     ? detail::kCudaResidualAdd
                      : which == "quant" ? detail::kCudaQuantize && detail::kCudaResidualAdd
                                         : detail::kCudaResidualBackward;
  if (on_cuda && !served)
    for (CheckGroup& g : groups) {
      g.skipped_why = "the CUDA backend does not serve this fusion yet";
      // "add + quant" needs both steps; a group of quantised cases alone needs only one.
      if (which == "quant" && detail::kCudaQuantize && g.name != "add + quant") g.skipped_why.clear();
    }
  return groups;
}

}  // namespace rmsnorm::cli
