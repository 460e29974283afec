// The backward groups of `rmsnorm check`: dx and dw against the fp64 oracle over dtypes,
// weight and dw dtypes, saved or recomputed rstd, awkward and long rows, layouts, dx == dy,
// Gemma's offset, every forced CUDA strategy, and bit-identical repeated runs.
#include <algorithm>
#include <cstdio>

#include "check_cases.h"
#include "options.h"

namespace rmsnorm::cli {
namespace {

using Cols = std::vector<std::int64_t>;

// The dw dtypes the API accepts with a weight of dtype w: w's own, or f32 (f64 for an f64
// weight only), plus "not asked for".
std::vector<std::optional<DType>> dw_choices(std::optional<DType> w) {
  if (!w) return {std::nullopt};
  std::vector<std::optional<DType>> out = {*w};
  if (*w != DType::f32 && *w != DType::f64) out.push_back(DType::f32);
  out.push_back(std::nullopt);
  return out;
}

BackwardCheckCase make(DType x, std::optional<DType> w, std::optional<DType> dw, std::int64_t rows, std::int64_t cols) {
  BackwardCheckCase c;
  c.x = x;
  c.weight = w;
  c.dw = w ? dw : std::nullopt;
  c.rows = rows;
  c.cols = cols;
  return c;
}

// x's dtype for weight and dw: the common training setup.
BackwardCheckCase same(DType t, std::int64_t rows, std::int64_t cols) { return make(t, t, t, rows, cols); }

std::string weight_name(std::optional<DType> w) { return w ? dtype_name(*w) : "none"; }

}  // namespace

std::vector<CheckGroup> build_backward_check_groups(bool quick, bool on_cuda) {
  const Sizes sz = case_sizes(quick);
  const std::vector<DType> base_types = {DType::f32, DType::f16, DType::bf16};
  std::vector<DType> all_types = base_types;
  if (!on_cuda) all_types.push_back(DType::f64);  // f64 is a CPU-only dtype
  std::vector<CheckGroup> groups;

  // Every (x, weight) pair with every dw dtype it accepts (and none), saved rstd or not.
  {
    const Cols cols = quick ? Cols{7, 128, 1000, 4096} : Cols{1, 7, 64, 128, 1000, 4096, 8192};
    for (DType x : all_types) {
      std::vector<std::optional<DType>> weights = {x};
      if (x == DType::f16 || x == DType::bf16) weights.push_back(DType::f32);
      weights.push_back(std::nullopt);
      for (std::optional<DType> w : weights) {
        CheckGroup g{std::string("backward dtypes x=") + dtype_name(x) + " w=" + weight_name(w), {}, {}};
        std::size_t k = 0;
        for (std::int64_t n : cols)
          for (std::optional<DType> dw : dw_choices(w)) {
            BackwardCheckCase c = make(x, w, dw, rows_for(sz, n, k), n);
            c.saved_rstd = k++ % 2 == 1;
            g.backward_cases.push_back(c);
          }
        groups.push_back(g);
      }
    }
  }

  // Awkward row lengths: 1, primes, 2^k +- 1, model sizes that are not powers of two, and
  // rows longer than a register-resident backward holds (8192 vectors, kernel_configs.h).
  {
    const Cols cols = quick ? Cols{1, 3, 7, 17, 127, 257, 1000, 1031, 4095, 8191, 12288, 65537}
                            : Cols{1,    2,    3,    5,    7,    8,     9,     15,    17,    31,    33,    63,    65,
                                   100,  127,  129,  255,  257,  511,   513,   1000,  1023,  1025,  1031,  2047,  2049,
                                   4095, 4097, 5120, 8191, 8193, 12288, 16383, 16385, 32767, 32769, 65537, 131071};
    CheckGroup g{"backward awkward cols", {}, {}};
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : cols) {
        BackwardCheckCase c = same(t, rows_for(sz, n, k), n);
        if (k % 2) c.dw = DType::f32;
        c.saved_rstd = k % 3 == 0;
        ++k;
        g.backward_cases.push_back(c);
      }
    groups.push_back(g);
  }

  // Long rows with few rows: the rows a model's widest layers (and the vocabulary-sized
  // norms) give, past what a block holds in registers, past what 8 blocks' registers hold
  // (140000, 262144 16-bit: the CUDA backend's cluster rows in two pieces) and past two pieces
  // (262147, 300001: with the saved rstd and dw, its column shards).
  {
    const Cols cols =
        quick ? Cols{16384, 65536, 140000, 262147} : Cols{16384, 32768, 65536, 140000, 262144, 262147, 300001};
    CheckGroup g{"backward long rows", {}, {}};
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : cols)
        for (bool saved : {false, true}) {
          const bool f32w = t != DType::f32 && k % 2 == 1;
          BackwardCheckCase c = make(t, f32w ? DType::f32 : t, k % 3 == 1 ? DType::f32 : (f32w ? DType::f32 : t),
                                     n >= 65536 ? 2 : (quick ? 2 : 3 + static_cast<std::int64_t>(k % 3)), n);
          c.saved_rstd = saved;
          ++k;
          g.backward_cases.push_back(c);
        }
    groups.push_back(g);
  }

  // dw summed over many rows: more row groups than one wave of blocks, partial blocks, and
  // dw's tolerance growing like sqrt(rows).
  {
    struct Shape {
      DType t;
      std::int64_t rows, cols;
      DType dw;
    };
    const std::vector<Shape> shapes =
        quick ? std::vector<Shape>{{DType::bf16, 2053, 64, DType::f32}, {DType::f16, 1031, 128, DType::f16}}
              : std::vector<Shape>{{DType::bf16, 20011, 128, DType::f32},
                                   {DType::f16, 8209, 64, DType::f16},
                                   {DType::bf16, 4099, 256, DType::bf16},
                                   {DType::f32, 2053, 1000, DType::f32},
                                   {DType::f16, 777, 4096, DType::f32}};
    CheckGroup g{"backward many rows", {}, {}};
    for (const Shape& s : shapes) {
      BackwardCheckCase c = make(s.t, s.t, s.dw, s.rows, s.cols);
      c.saved_rstd = s.rows % 2 == 1;
      g.backward_cases.push_back(c);
    }
    groups.push_back(g);
  }

  // Strided and batched views: padding between rows must survive, strides and base
  // pointers that break 16-byte alignment must fall back to a correct narrower path, and
  // each of x, dy and dx may have its own layout.
  {
    const Cols cols = quick ? Cols{64, 1000} : Cols{64, 1000, 4096, 5120};
    CheckGroup g{"backward strided / batched", {}, {}};
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : cols) {
        const std::int64_t rows = std::max<std::int64_t>(2, rows_for(sz, n + 64, k++));
        BackwardCheckCase c = same(t, rows, n);
        c.x_at.row_stride = n + 8;  // aligned padding, one tensor at a time
        g.backward_cases.push_back(c);
        c = same(t, rows, n);
        c.dy_at.row_stride = n + 8;
        c.saved_rstd = true;
        g.backward_cases.push_back(c);
        c = same(t, rows, n);
        c.dx_at.row_stride = n + 8;
        c.dw = DType::f32;
        g.backward_cases.push_back(c);
        c = same(t, rows, n);
        c.x_at.row_stride = n + 3;  // misaligned strides
        c.dy_at.row_stride = n + 5;
        c.dx_at.row_stride = n + 1;
        g.backward_cases.push_back(c);
        c = same(t, rows, n);
        c.x_at = {-1, -1, 1, -1};  // misaligned base pointers (offset 1 element)
        c.dy_at = {-1, -1, 3, -1};
        c.dx_at = {-1, -1, 1, -1};
        c.saved_rstd = true;
        g.backward_cases.push_back(c);
        c = same(t, rows, n);
        c.x_at.row_stride = 2 * n;  // every other row of a wider matrix
        c.dy_at.row_stride = n + 64;
        g.backward_cases.push_back(c);
      }
    // QK-norm's backward over a fused QKV projection: x is the q or k slice of a (tokens,
    // (H + 2 KVH) * D) buffer viewed as (tokens, heads, head_dim), dy the same slice of the
    // gradient buffer, and dx lands in that slice (in place) or in a contiguous tensor.
    const Cols dims = quick ? Cols{64, 128} : Cols{64, 80, 96, 128, 256};
    const std::int64_t tokens = quick ? 9 : 33, heads = 8, kv_heads = 2;
    for (DType t : base_types)
      for (std::int64_t d : dims) {
        const std::int64_t width = (heads + 2 * kv_heads) * d;
        for (int part = 0; part < 2; ++part) {  // q, then k
          BackwardCheckCase c = same(t, part == 0 ? heads : kv_heads, d);
          c.batch = tokens;
          c.dw = DType::f32;
          c.x_at = {width, d, part == 0 ? 0 : heads * d, tokens * width};
          c.dy_at = c.x_at;
          c.in_place = true;
          g.backward_cases.push_back(c);
          c.in_place = false;
          c.saved_rstd = true;
          c.dw = t;
          g.backward_cases.push_back(c);
        }
      }
    // A general batched view with different strides in x, dy and dx.
    for (DType t : base_types) {
      const std::int64_t n = quick ? 100 : 1000;
      BackwardCheckCase c = same(t, 5, n);
      c.batch = 3;
      c.x_at = {5 * (n + 24) + 16, n + 24, 0, -1};
      c.dy_at = {5 * n + 40, n, 0, -1};
      c.dx_at = {6 * (n + 8), n + 8, 0, -1};
      c.saved_rstd = true;
      g.backward_cases.push_back(c);
    }
    groups.push_back(g);
  }

  // dx is dy (the gradient buffer reused): each element must be read before it is written.
  {
    const Cols cols = quick ? Cols{7, 1000, 4096} : Cols{7, 128, 1000, 4096, 8191};
    CheckGroup g{"backward in-place (dx is dy)", {}, {}};
    std::size_t k = 0;
    for (DType t : all_types)
      for (std::int64_t n : cols)
        for (bool strided : {false, true}) {
          const bool half = t == DType::f16 || t == DType::bf16;
          const std::optional<DType> w =
              k % 3 == 2 ? std::nullopt : std::optional<DType>(half && k % 3 == 1 ? DType::f32 : t);
          BackwardCheckCase c =
              make(t, w, w ? std::optional<DType>(k % 2 ? DType::f32 : *w) : std::nullopt, rows_for(sz, n, k), n);
          if (t == DType::f64 && c.dw) c.dw = DType::f64;
          if (strided) c.dy_at.row_stride = n + 8;
          c.in_place = true;
          c.saved_rstd = k % 2 == 0;
          ++k;
          g.backward_cases.push_back(c);
        }
    groups.push_back(g);
  }

  // Gemma's (1 + w): the gradient flows through w + 1, dw is still d/dw.
  {
    const Cols cols = quick ? Cols{128, 1000} : Cols{256, 1000, 3072};
    CheckGroup g{"backward weight offset 1 (Gemma)", {}, {}};
    std::size_t k = 0;
    for (DType t : all_types) {
      std::vector<DType> weights = {t};
      if (t == DType::f16 || t == DType::bf16) weights.push_back(DType::f32);
      for (DType w : weights)
        for (std::int64_t n : cols) {
          BackwardCheckCase c = make(t, w, k % 2 && w != DType::f64 ? DType::f32 : w, rows_for(sz, n, k), n);
          c.params.weight_offset = 1.0;
          c.w_mean = 0.0;
          c.saved_rstd = k++ % 2 == 0;
          g.backward_cases.push_back(c);
        }
    }
    groups.push_back(g);
  }

  // Input scales where eps dominates (tiny x), is irrelevant, or where squares get large.
  {
    const Cols cols = quick ? Cols{100} : Cols{100, 2048};
    struct Scale {
      double x_scale, eps;
    };
    const Scale scales[] = {{1e-3, 0.0}, {1e-3, 1e-5}, {1.0, 1e-5}, {30.0, 1e-6}};
    CheckGroup g{"backward input scales, eps", {}, {}};
    std::size_t k = 0;
    for (DType t : all_types)
      for (std::int64_t n : cols)
        for (const Scale& s : scales) {
          BackwardCheckCase c = same(t, rows_for(sz, n, k), n);
          c.x_scale = s.x_scale;
          c.params.eps = s.eps;
          c.saved_rstd = k++ % 2 == 1;
          g.backward_cases.push_back(c);
        }
    groups.push_back(g);
  }

  // An empty batch: dx untouched, dw all zeros (the sum over no rows).
  {
    CheckGroup g{"backward zero rows", {}, {}};
    for (DType t : all_types)
      for (std::int64_t n : {1, 1000}) {
        BackwardCheckCase c = same(t, 0, n);
        if (t != DType::f64) c.dw = DType::f32;
        g.backward_cases.push_back(c);
        c.batch = 3;  // 3 batches of 0 rows
        c.saved_rstd = true;
        g.backward_cases.push_back(c);
      }
    groups.push_back(g);
  }

  // Every CUDA strategy forced, over lengths around each one's register capacities.
  const Cols strategy_cols = quick ? Cols{7, 64, 1000, 4096, 8192, 32768}
                                   : Cols{7,    8,    64,   128,   256,   512,   1000,  1024,  1031,  2048,
                                          4096, 5120, 8192, 12288, 16384, 24576, 32768, 65536, 131072};
  for (Strategy s : forced_strategies()) {
    CheckGroup g{std::string("backward strategy ") + strategy_name(s), {}, {}};
    if (!on_cuda) {
      g.skipped_why = "CUDA only: the CPU backend has one strategy";
      groups.push_back(g);
      continue;
    }
    std::size_t k = 0;
    for (DType t : base_types)
      for (std::int64_t n : strategy_cols) {
        const bool f32w = t != DType::f32 && k % 2 == 1;  // 16-bit x alternates with an f32 weight
        BackwardCheckCase c =
            make(t, f32w ? DType::f32 : t, k % 3 == 0 ? DType::f32 : (f32w ? DType::f32 : t), rows_for(sz, n, k), n);
        c.params.strategy = s;
        c.skip_if_unsupported = true;
        c.saved_rstd = k % 2 == 0;
        g.backward_cases.push_back(c);
        if (k % 4 == 0) {  // strided rows, 16-byte aligned, and dx is dy
          c.x_at.row_stride = n + 16;
          c.dy_at.row_stride = n + 8;
          c.in_place = true;
          g.backward_cases.push_back(c);
        }
        if (k % 4 == 2) {  // no weight, so no dw: the kernels' weight-free paths
          c.weight.reset();
          c.dw.reset();
          g.backward_cases.push_back(c);
        }
        if (k % 4 == 1) {  // x one element off 16 bytes, dy strided off it: element-wise loads
          c.x_at.offset = 1;
          c.dy_at.row_stride = n + 3;
          g.backward_cases.push_back(c);
        }
        ++k;
      }
    groups.push_back(g);
  }

  // Determinism: two runs on the same inputs (outputs poisoned again, the workspace left
  // with other stale bytes) must give the same dx and dw bytes.
  {
    struct Shape {
      DType t;
      std::int64_t rows, cols;
      Strategy s;
    };
    std::vector<Shape> shapes = quick ? std::vector<Shape>{{DType::bf16, 1500, 128, Strategy::automatic},
                                                           {DType::f16, 4, 65536, Strategy::automatic}}
                                      : std::vector<Shape>{{DType::bf16, 3000, 128, Strategy::automatic},
                                                           {DType::f16, 200, 4096, Strategy::automatic},
                                                           {DType::bf16, 4, 65536, Strategy::automatic},
                                                           {DType::f32, 64, 4000, Strategy::automatic}};
    if (on_cuda)
      for (Strategy s : forced_strategies()) shapes.push_back({DType::bf16, 33, 8192, s});
    CheckGroup g{"backward determinism (2 runs)", {}, {}};
    for (const Shape& sh : shapes) {
      BackwardCheckCase c = make(sh.t, sh.t, DType::f32, sh.rows, sh.cols);
      c.twice = true;
      c.params.strategy = sh.s;
      c.skip_if_unsupported = sh.s != Strategy::automatic;
      g.backward_cases.push_back(c);
    }
    groups.push_back(g);
  }
  return groups;
}

std::string describe(const BackwardCheckCase& c) {
  std::string s = std::string("backward x=") + dtype_name(c.x) + " w=" + weight_name(c.weight) +
                  " dw=" + (c.dw ? dtype_name(*c.dw) : "none") + " ";
  if (c.batch != 1) s += std::to_string(c.batch) + "x";
  s += std::to_string(c.rows) + "x" + std::to_string(c.cols);
  auto place = [&](const char* name, const Placement& p) {
    if (p.row_stride >= 0) s += std::string(" ") + name + "_row_stride=" + std::to_string(p.row_stride);
    if (p.batch_stride >= 0) s += std::string(" ") + name + "_batch_stride=" + std::to_string(p.batch_stride);
    if (p.offset) s += std::string(" ") + name + "_offset=" + std::to_string(p.offset);
  };
  if (c.residual) s += std::string(" r_out=") + dtype_name(*c.residual) + (c.want_dr ? " dr" : "");
  place(c.residual ? "r_out" : "x", c.x_at);
  place("dy", c.dy_at);
  if (c.in_place)
    s += c.residual ? " in-place(dx=dr_out)" : " in-place(dx=dy)";
  else
    place("dx", c.dx_at);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", c.params.eps);
  s += std::string(" eps=") + buf;
  if (c.params.weight_offset != 0) s += " offset=" + std::to_string(static_cast<int>(c.params.weight_offset));
  if (c.x_scale != 1.0) {
    std::snprintf(buf, sizeof buf, "%g", c.x_scale);
    s += std::string(" x_scale=") + buf;
  }
  s += c.saved_rstd ? " rstd=saved" : " rstd=recomputed";
  if (c.params.strategy != Strategy::automatic) s += std::string(" strategy=") + strategy_name(c.params.strategy);
  if (c.twice) s += " twice";
  return s;
}

}  // namespace rmsnorm::cli
