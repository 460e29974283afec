#include "check_cases.h"

#include <algorithm>
#include <cstdio>

#include "kernel_configs.h"
#include "options.h"

namespace rmsnorm::cli {
namespace {

struct Combo {
  DType x;
  std::optional<DType> w;
  DType y;
};

// Every (x, weight, y) the API accepts: the weight has x's dtype, f32, or is absent; y has
// x's dtype, or f32 when a 16-bit x meets an f32 weight. f64 is a CPU-only dtype.
std::vector<Combo> dtype_combos(bool on_cuda) {
  std::vector<Combo> out;
  for (DType x : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
    if (x == DType::f64 && on_cuda) continue;
    const bool half = x == DType::f16 || x == DType::bf16;
    out.push_back({x, x, x});
    if (half) {
      out.push_back({x, DType::f32, x});
      out.push_back({x, DType::f32, DType::f32});
    }
    out.push_back({x, std::nullopt, x});
  }
  return out;
}

std::string combo_name(const Combo& c) {
  return std::string("x=") + dtype_name(c.x) + " w=" + (c.w ? dtype_name(*c.w) : "none") + " y=" + dtype_name(c.y);
}

CheckCase make(const Combo& c, std::int64_t rows, std::int64_t cols, Cast cast = Cast::fp32) {
  CheckCase k;
  k.x = c.x;
  k.weight = c.w;
  k.y = c.y;
  k.rows = rows;
  k.cols = cols;
  k.params.cast = cast;
  return k;
}

Combo same(DType t) { return {t, t, t}; }

// The forward's groups.
std::vector<CheckGroup> build_forward_check_groups(bool quick, bool on_cuda) {
  const Sizes sz = case_sizes(quick);
  const std::vector<Combo> combos = dtype_combos(on_cuda);
  std::vector<DType> base_types = {DType::f32, DType::f16, DType::bf16};
  std::vector<CheckGroup> groups;

  // Every dtype combination, both casts, small to mid rows.
  const std::vector<std::int64_t> combo_cols = quick ? std::vector<std::int64_t>{7, 128, 1000, 4096}
                                                     : std::vector<std::int64_t>{1, 7, 64, 128, 1000, 4096, 8192};
  for (const Combo& c : combos) {
    CheckGroup g{"dtypes " + combo_name(c), {}, {}};
    std::size_t k = 0;
    for (std::int64_t n : combo_cols)
      for (Cast cast : {Cast::fp32, Cast::llama}) {
        CheckCase t = make(c, rows_for(sz, n, k++), n, cast);
        t.rstd = k % 2 == 0;
        g.cases.push_back(t);
      }
    groups.push_back(g);
  }

  // Awkward row lengths: primes, 2^k +- 1, model sizes that are not powers of two, and
  // rows longer than any register-resident configuration holds (up to 2^20: on sm_90,
  // cluster rows of two to four pieces a block).
  {
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{1, 3, 7, 17, 100, 127, 257, 1000, 1031, 4095, 5120, 8191, 12288, 65537}
              : std::vector<std::int64_t>{
                    1,    2,    3,    5,     7,     8,     9,     15,    17,    31,     33,     63,     65,     100,
                    127,  129,  255,  257,   511,   513,   1000,  1023,  1025,  1031,   2047,   2049,   4095,   4097,
                    5120, 8191, 8193, 12288, 16383, 16385, 32767, 32769, 65537, 131071, 262147, 524289, 1048576};
    CheckGroup g{"awkward cols", {}, {}};
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : cols) g.cases.push_back(make(same(t), rows_for(sz, n, k++), n));
    groups.push_back(g);
  }

  // The benchmark's seed table (M = 4096 there), with fewer rows.
  {
    CheckGroup g{"seed shapes", {}, {}};
    const std::vector<DType> types =
        quick ? std::vector<DType>{DType::f16} : std::vector<DType>{DType::f16, DType::bf16, DType::f32};
    for (DType t : types)
      for (std::int64_t n = 1024; n <= 8192; n += 1024) g.cases.push_back(make(same(t), sz.max_rows, n));
    groups.push_back(g);
  }

  // Many rows: more rows than one wave of blocks holds, with counts that leave partial
  // blocks and partial waves (grid-stride loops, rows-per-block tails).
  {
    CheckGroup g{"many rows", {}, {}};
    struct Shape {
      DType t;
      std::int64_t rows, cols;
    };
    const std::vector<Shape> shapes = quick ? std::vector<Shape>{{DType::f16, 2053, 64}, {DType::bf16, 1031, 128}}
                                            : std::vector<Shape>{{DType::f16, 20011, 64},
                                                                 {DType::bf16, 8209, 128},
                                                                 {DType::f16, 4099, 256},
                                                                 {DType::bf16, 2053, 1000},
                                                                 {DType::f32, 777, 4096}};
    for (const Shape& sh : shapes) {
      CheckCase c = make(same(sh.t), sh.rows, sh.cols);
      c.rstd = true;
      g.cases.push_back(c);
    }
    groups.push_back(g);
  }

  // Strided rows: padding must stay untouched, and strides that break 16-byte alignment
  // (or a misaligned base pointer) must fall back to a correct narrower path.
  {
    CheckGroup g{"strided rows", {}, {}};
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{64, 1000} : std::vector<std::int64_t>{64, 1000, 4096, 5120};
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : cols) {
        const std::int64_t rows = std::max<std::int64_t>(2, rows_for(sz, n + 64, k++));
        CheckCase c = make(same(t), rows, n);
        c.x_at.row_stride = n + 8;  // aligned padding in x only
        g.cases.push_back(c);
        c = make(same(t), rows, n);
        c.y_at.row_stride = n + 8;  // in y only
        g.cases.push_back(c);
        c = make(same(t), rows, n, Cast::llama);
        c.x_at.row_stride = n + 3;  // misaligned strides
        c.y_at.row_stride = n + 5;
        g.cases.push_back(c);
        c = make(same(t), rows, n);
        c.x_at = {-1, n + 1, 1, -1};  // misaligned base pointers
        c.y_at = {-1, n, 3, -1};
        g.cases.push_back(c);
        c = make(same(t), rows, n);
        c.x_at.row_stride = 2 * n;  // every other row of a wider matrix
        c.y_at.row_stride = n + 64;
        c.rstd = true;
        g.cases.push_back(c);
      }
    groups.push_back(g);
  }

  // QK-norm over a fused QKV projection: the q and k parts of a (tokens, (H + 2 KVH) * D)
  // buffer viewed as (tokens, heads, head_dim) and normalised with no copy. The rest of
  // the buffer (other slices, v) is poison that must survive.
  {
    CheckGroup g{"batched / QKV slices", {}, {}};
    const std::vector<std::int64_t> dims =
        quick ? std::vector<std::int64_t>{64, 128} : std::vector<std::int64_t>{64, 80, 96, 128, 256};
    const std::int64_t tokens = quick ? 9 : 33, heads = 8, kv_heads = 2;
    for (DType t : base_types)
      for (std::int64_t d : dims) {
        const std::int64_t width = (heads + 2 * kv_heads) * d;
        for (int part = 0; part < 2; ++part) {  // q, then k
          CheckCase c = make(same(t), part == 0 ? heads : kv_heads, d);
          c.batch = tokens;
          c.x_at = {width, d, part == 0 ? 0 : heads * d, tokens * width};
          c.in_place = true;
          g.cases.push_back(c);
          c.in_place = false;  // into a separate contiguous (tokens, heads, head_dim) tensor
          c.rstd = true;
          c.params.cast = Cast::llama;
          g.cases.push_back(c);
        }
      }
    // A general batched view with different strides in x and y.
    for (DType t : base_types) {
      const std::int64_t n = quick ? 100 : 1000;
      CheckCase c = make(same(t), 5, n);
      c.batch = 3;
      c.x_at = {5 * (n + 24) + 16, n + 24, 0, -1};
      c.y_at = {5 * n + 40, n, 0, -1};
      c.rstd = true;
      g.cases.push_back(c);
    }
    groups.push_back(g);
  }

  // y is x: each element must be read before it is overwritten.
  {
    CheckGroup g{"in-place", {}, {}};
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{7, 1000, 4096} : std::vector<std::int64_t>{7, 128, 1000, 4096, 8191};
    std::vector<DType> types = base_types;
    if (!on_cuda) types.push_back(DType::f64);
    std::size_t k = 0;
    for (DType t : types)
      for (std::int64_t n : cols)
        for (bool strided : {false, true}) {
          const bool f32w = (t == DType::f16 || t == DType::bf16) && k % 2 == 1;
          CheckCase c =
              make({t, f32w ? DType::f32 : t, t}, rows_for(sz, n, k), n, k % 3 == 0 ? Cast::llama : Cast::fp32);
          if (strided) c.x_at.row_stride = n + 8;
          c.in_place = true;
          c.rstd = k % 2 == 0;
          ++k;
          g.cases.push_back(c);
        }
    groups.push_back(g);
  }

  // Gemma stores w - 1 and multiplies by (1 + w): weights near 0.
  {
    CheckGroup g{"weight offset 1 (Gemma)", {}, {}};
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{128, 1000} : std::vector<std::int64_t>{256, 1000, 3072};
    std::size_t k = 0;
    for (const Combo& combo : combos) {
      if (!combo.w) continue;
      for (std::int64_t n : cols)
        for (Cast cast : {Cast::fp32, Cast::llama}) {
          CheckCase c = make(combo, rows_for(sz, n, k++), n, cast);
          c.params.weight_offset = 1.0;
          c.w_mean = 0.0;
          g.cases.push_back(c);
        }
    }
    groups.push_back(g);
  }

  // Each rounding mode over every dtype combination, with eps and input scales where eps
  // dominates (tiny inputs), is irrelevant, or where squares get large.
  for (Cast cast : {Cast::fp32, Cast::llama}) {
    CheckGroup g{std::string("cast ") + (cast == Cast::fp32 ? "fp32" : "llama"), {}, {}};
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{100} : std::vector<std::int64_t>{100, 2048};
    struct Scale {
      double x_scale, eps;
    };
    const Scale scales[] = {{1e-3, 0.0}, {1.0, 1e-5}, {30.0, 1e-6}};
    std::size_t k = 0;
    for (const Combo& combo : combos)
      for (std::int64_t n : cols)
        for (const Scale& s : scales) {
          CheckCase c = make(combo, rows_for(sz, n, k++), n, cast);
          c.x_scale = s.x_scale;
          c.params.eps = s.eps;
          g.cases.push_back(c);
        }
    groups.push_back(g);
  }

  // The per-row rstd output, for the backward pass.
  {
    CheckGroup g{"rstd output", {}, {}};
    const std::vector<std::int64_t> cols =
        quick ? std::vector<std::int64_t>{1, 1000} : std::vector<std::int64_t>{1, 64, 1000, 4096, 16384};
    std::vector<DType> types = base_types;
    if (!on_cuda) types.push_back(DType::f64);
    std::size_t k = 0;
    for (DType t : types)
      for (std::int64_t n : cols) {
        CheckCase c = make(same(t), rows_for(sz, n, k++), n);
        c.rstd = true;
        g.cases.push_back(c);
        c = make(same(t), 7, n, Cast::llama);  // batched: rstd is indexed by b * rows + r
        c.batch = 2;
        c.x_at = {7 * n + 8, n, 0, -1};
        c.rstd = true;
        g.cases.push_back(c);
      }
    groups.push_back(g);
  }

  // Every CUDA strategy forced, over lengths around each one's register capacities (and
  // beyond the largest cluster's: cluster rows in pieces, Plan::pieces).
  const std::vector<std::int64_t> strategy_cols =
      quick ? std::vector<std::int64_t>{7, 64, 1000, 4096, 8192, 32768}
            : std::vector<std::int64_t>{7,    8,    64,    128,   256,   512,   1000,   1024,   1031,   2048,  4096,
                                        5120, 8192, 12288, 16384, 32768, 65536, 131072, 262147, 524288, 786440};
  for (Strategy s : forced_strategies()) {
    CheckGroup g{std::string("strategy ") + strategy_name(s), {}, {}};
    if (!on_cuda) {
      g.skipped_why = "CUDA only: the CPU backend has one strategy";
      groups.push_back(g);
      continue;
    }
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : strategy_cols) {
        const bool half = t != DType::f32;
        // 16-bit x alternates with an f32 weight and f32 y (a wider store per vector).
        const Combo combo = half && k % 2 ? Combo{t, DType::f32, DType::f32} : same(t);
        CheckCase c = make(combo, rows_for(sz, n, k), n, k % 3 == 2 ? Cast::llama : Cast::fp32);
        c.params.strategy = s;
        c.skip_if_unsupported = true;
        c.rstd = true;
        g.cases.push_back(c);
        if (k % 4 == 0) {  // strided rows, 16-byte aligned
          c.x_at.row_stride = n + 16;
          c.y_at.row_stride = n + 8;
          g.cases.push_back(c);
        }
        if (k % 4 == 1) {  // x one element off 16 bytes, y strided off it: chunks loaded an element at a time
          c.x_at.offset = 1;
          c.y_at.row_stride = n + 3;
          g.cases.push_back(c);
        }
        ++k;
      }
    groups.push_back(g);
  }

  // Every register configuration the planner can pick, through the planner: rows that fill
  // a configuration exactly, one vector short of it, and one vector past the next smaller
  // capacity (the first row length it is picked for). Its lanes' last items are then full,
  // idle or the only one in use.
  if (!quick) {
    CheckGroup g{"register configurations", {}, {}};
    std::size_t k = 0;
    for (DType t : base_types) {
      const std::int64_t vw = 16 / static_cast<std::int64_t>(dtype_size(t));
      std::vector<std::int64_t> caps;
      for (const auto& c : detail::kWarpRowsConfigs) caps.push_back(c.capacity());
      for (const auto& c : detail::kBlockRowConfigs) caps.push_back(c.capacity());
      std::sort(caps.begin(), caps.end());
      caps.erase(std::unique(caps.begin(), caps.end()), caps.end());
      for (std::size_t i = 0; i < caps.size(); ++i)
        for (std::int64_t n : {caps[i] * vw, (caps[i] - 1) * vw, (i ? caps[i - 1] + 1 : 1) * vw}) {
          CheckCase c = make(same(t), k % 2 ? 3 : 1, n, k % 3 == 2 ? Cast::llama : Cast::fp32);
          c.rstd = true;
          g.cases.push_back(c);
          ++k;
        }
    }
    groups.push_back(g);
  }
  return groups;
}

}  // namespace

Sizes case_sizes(bool quick) { return quick ? Sizes{1 << 15, 16} : Sizes{1 << 18, 64}; }

std::int64_t rows_for(const Sizes& s, std::int64_t cols, std::size_t k) {
  static const std::int64_t cycle[] = {1, 3, 5, 17, 33, 64};
  const std::int64_t want = std::min<std::int64_t>(cycle[k % 6], s.max_rows);
  return std::max<std::int64_t>(1, std::min(want, s.budget / cols));
}

std::vector<CheckGroup> build_check_groups(bool quick, bool on_cuda, const std::string& op) {
  std::vector<CheckGroup> groups;
  const auto add = [&](std::vector<CheckGroup> more) { groups.insert(groups.end(), more.begin(), more.end()); };
  const bool all = op == "all", forward = all || op == "forward", backward = all || op == "backward";
  if (forward) add(build_forward_check_groups(quick, on_cuda));
  if (forward || op == "add") add(build_fused_check_groups(quick, on_cuda, "add"));
  if (forward || op == "add") add(build_allreduce_check_groups(quick, on_cuda));
  if (forward || op == "quant") add(build_fused_check_groups(quick, on_cuda, "quant"));
  if (backward) add(build_backward_check_groups(quick, on_cuda));
  if (backward || op == "add") add(build_fused_check_groups(quick, on_cuda, "add backward"));
  if (forward || backward) add(build_sharded_check_groups(quick, on_cuda, op));
  return groups;
}

std::string describe_params(const Params& p) {
  std::string s = p.cast == Cast::llama ? " cast=llama" : " cast=fp32";
  char eps[32];
  std::snprintf(eps, sizeof eps, "%g", p.eps);
  s += std::string(" eps=") + eps;
  if (p.weight_offset != 0) s += " offset=" + std::to_string(static_cast<int>(p.weight_offset));
  return s;
}

std::string describe(const CheckCase& c) {
  std::string s = std::string("x=") + dtype_name(c.x) + " w=" + (c.weight ? dtype_name(*c.weight) : "none") +
                  " y=" + dtype_name(c.y) + " ";
  if (c.batch != 1) s += std::to_string(c.batch) + "x";
  s += std::to_string(c.rows) + "x" + std::to_string(c.cols);
  auto place = [&](const char* name, const Placement& p) {
    if (p.row_stride >= 0) s += std::string(" ") + name + "_row_stride=" + std::to_string(p.row_stride);
    if (p.batch_stride >= 0) s += std::string(" ") + name + "_batch_stride=" + std::to_string(p.batch_stride);
    if (p.offset) s += std::string(" ") + name + "_offset=" + std::to_string(p.offset);
  };
  place("x", c.x_at);
  if (c.in_place)
    s += " in-place";
  else
    place("y", c.y_at);
  s += describe_params(c.params);
  if (c.x_scale != 1.0) {
    char scale[32];
    std::snprintf(scale, sizeof scale, "%g", c.x_scale);
    s += std::string(" x_scale=") + scale;
  }
  if (c.rstd) s += " rstd";
  if (c.params.strategy != Strategy::automatic) s += std::string(" strategy=") + strategy_name(c.params.strategy);
  if (c.residual) {
    s += std::string(" residual=") + dtype_name(c.residual->dtype);
    place("r", c.residual->at);
    if (c.residual->in_place)
      s += " r-in-place";
    else
      place("r_out", c.residual->out_at);
  }
  if (c.quant) {
    const QuantCheck& q = *c.quant;
    s += std::string(" quant=") + quant_scale_name(q.kind) + "/" + dtype_name(q.dtype);
    if (q.kind == QuantScale::per_group) s += " group=" + std::to_string(q.group_size);
    if (q.column_major) s += " column-major";
    if (q.pow2) s += " pow2";
    if (q.division != QuantDivision::exact) s += std::string(" ") + quant_division_name(q.division);
    if (q.scale_ub) {
      char ub[32];
      std::snprintf(ub, sizeof ub, "%g", *q.scale_ub);
      s += std::string(" scale_ub=") + ub;
    }
  }
  return s;
}

}  // namespace rmsnorm::cli
