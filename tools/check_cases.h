// The cases of `rmsnorm check`, grouped as its output lines are. Building the list is
// separate from running it (check.cpp, check_backward.cpp) so that a new case is one line
// here (forward: check_cases.cpp; backward: check_backward_cases.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

// Where a view's elements lie in its buffer (in elements): -1 strides mean contiguous.
// `offset` moves the view's first element into the buffer (a QKV slice, a misaligned base).
struct Placement {
  std::int64_t batch_stride = -1;
  std::int64_t row_stride = -1;
  std::int64_t offset = 0;
  std::int64_t buffer_elements = -1;  // -1: just what the view spans (plus the guard)
};

// The residual add of a fused case (fused_add_forward): residual of `dtype`, r_out written
// to its own buffer or (in_place) over the residual.
struct ResidualCheck {
  DType dtype = DType::f32;
  bool in_place = false;
  Placement at, out_at;  // the residual's, r_out's (out_at ignored in place)
};

// The quantised output of a fused case (quant_forward): q of `dtype`, scales as rmsnorm.h says.
struct QuantCheck {
  QuantScale kind = QuantScale::per_row;
  DType dtype = DType::f8e4m3;
  std::int64_t group_size = 128;   // per_group
  bool column_major = false;       // per_group
  bool pow2 = false;               // per_row, per_group
  std::optional<double> scale_ub;  // per_row, per_group
  double static_fraction = 0.8;    // static: the scale is this fraction of max|y| / qmax
  QuantDivision division = QuantDivision::exact;
};

struct CheckCase {
  DType x = DType::f32;
  std::optional<DType> weight;  // none: w = 1
  DType y = DType::f32;
  std::int64_t batch = 1, rows = 1, cols = 1;
  Placement x_at, y_at;
  bool in_place = false;  // y is x (y_at is ignored)
  bool rstd = false;
  Params params;
  // Input distributions: x ~ N(0, x_scale^2), w ~ N(w_mean, w_std^2).
  double x_scale = 1.0, w_mean = 1.0, w_std = 0.1;
  // A forced strategy that cannot serve the case is a skip, not a failure.
  bool skip_if_unsupported = false;
  // Fusions (check_fused.cpp runs these): a residual add before the norm, a quantised
  // output after it (then `y` is q and its dtype quant->dtype).
  std::optional<ResidualCheck> residual;
  std::optional<QuantCheck> quant;
};

// A backward case: dy and x in, dx (and dw) out.
struct BackwardCheckCase {
  DType x = DType::f32;         // of x, dy and dx
  std::optional<DType> weight;  // none: w = 1 (and no dw)
  std::optional<DType> dw;      // the weight's dtype or f32; none: dw not asked for
  std::int64_t batch = 1, rows = 1, cols = 1;
  Placement x_at, dy_at, dx_at;
  bool in_place = false;    // dx is dy (dx_at is ignored)
  bool saved_rstd = false;  // pass the rstd a forward would have saved; else it is recomputed
  bool twice = false;       // run twice (fresh poison, another stale workspace): same bytes
  Params params;
  // Input distributions: x ~ N(0, x_scale^2), dy ~ N(0, 1), w ~ N(w_mean, w_std^2).
  double x_scale = 1.0, w_mean = 1.0, w_std = 0.1;
  bool skip_if_unsupported = false;
  // The residual add's backward (fused_add_backward, check_fused.cpp): x is r_out, of this
  // dtype, and `x` above is dy's and dx's; dr_out ~ N(0, 0.25) is added; dr, in r_out's
  // dtype, is written too when want_dr. in_place then means dx is dr_out.
  std::optional<DType> residual;
  bool want_dr = false;
};

// A case of rows split across ranks (check_sharded.cpp): x's rows cut into `shards` column
// shards, the steps run shard by shard with the per-row sums added between them. Forward:
// y and rstd; backward (from the rstd a forward would have saved): dx and dw.
struct ShardedCheckCase {
  bool backward = false;
  DType x = DType::f32;         // of x (and dy, dx)
  std::optional<DType> weight;  // none: w = 1
  DType y = DType::f32;         // forward only
  std::optional<DType> dw;      // backward only, with a weight; none: not asked for
  std::int64_t batch = 1, rows = 1, cols = 1, shards = 2;
  Placement x_at;  // the layout of x and of every other (batch, rows, cols) buffer
  Params params;
  double x_scale = 1.0, w_mean = 1.0;
};

// A case of the ranks' sum before the residual add (fused_allreduce_add_forward,
// check_allreduce.cpp): `ranks` partials of x's dtype, each in a buffer of its own (as the
// peers' are), summed, the residual added, the row normalised.
struct AllReduceCheckCase {
  DType x = DType::f32;         // the partials'
  DType residual = DType::f32;  // the residual's and r_out's: x's, or f32 with 16-bit x
  std::optional<DType> weight;  // none: w = 1
  DType y = DType::f32;
  int ranks = 2;  // 1 to kMaxAllReduceRanks
  std::int64_t batch = 1, rows = 1, cols = 1;
  // Every partial's layout (the API wants one shape and strides for all); partial `odd_rank`
  // starts one element further into its buffer, so that its base is off the 16-byte grid
  // the others are on.
  Placement x_at;
  int odd_rank = -1;  // -1: none
  Placement r_at, r_out_at, y_at;
  bool in_place = false;  // r_out is the residual (r_out_at is ignored)
  bool rstd = false;
  Params params;
  double w_mean = 1.0;  // w ~ N(w_mean, 0.1^2)
  bool skip_if_unsupported = false;
};

// One line of the check's output: forward cases, backward ones, sharded-row ones or the
// ranks' sum's.
struct CheckGroup {
  std::string name;
  std::vector<CheckCase> cases;
  std::string skipped_why;  // non-empty: the group does not apply on this device
  std::vector<BackwardCheckCase> backward_cases = {};
  std::vector<ShardedCheckCase> sharded_cases = {};
  std::vector<AllReduceCheckCase> allreduce_cases = {};
  std::size_t size() const {
    return cases.size() + backward_cases.size() + sharded_cases.size() + allreduce_cases.size();
  }
};

// `op`: "forward", "backward" or "all" (the forward groups, then the backward ones), or
// "add" / "quant" (the residual add's groups, forward and backward; the quantised output's).
// The fused groups follow the plain ones of their direction.
std::vector<CheckGroup> build_check_groups(bool quick, bool on_cuda, const std::string& op = "all");
std::vector<CheckGroup> build_backward_check_groups(bool quick, bool on_cuda);
// The sharded-row groups for `op` (forward, backward or all), on either device.
std::vector<CheckGroup> build_sharded_check_groups(bool quick, bool on_cuda, const std::string& op);
// The fused groups (check_fused_cases.cpp): `which` is "add", "quant" or "add backward".
std::vector<CheckGroup> build_fused_check_groups(bool quick, bool on_cuda, const std::string& which);
// The ranks' sum before the residual add (check_allreduce.cpp), one of the "add" groups.
std::vector<CheckGroup> build_allreduce_check_groups(bool quick, bool on_cuda);

// "x=f16 w=f32 y=f16 2x(3x1000) xs=1008 llama eps=1e-05 offset=1 rstd in-place ..."
std::string describe(const CheckCase& c);
// "x=bf16 w=bf16 dw=f32 3x5x96 dy_row_stride=104 in-place rstd offset=1 ..."
std::string describe(const BackwardCheckCase& c);
// "backward x=bf16 w=bf16 dw=f32 5x1000 in 3 shards eps=1e-06"
std::string describe(const ShardedCheckCase& c);
// "x=bf16 r=f32 w=f32 y=f32 8 ranks 3x4096 partial 7 one element further r-in-place ..."
std::string describe(const AllReduceCheckCase& c);
// " cast=... eps=...[ offset=N]": a case's norm parameters, as the descriptions give them.
std::string describe_params(const Params& p);

// Case sizes: the oracle reads every element through a non-inlined call, so a case is
// kept to `budget` elements; the full sweep runs in well under a minute on two cores.
struct Sizes {
  std::int64_t budget;  // elements per case
  std::int64_t max_rows;
};
Sizes case_sizes(bool quick);
// A row count for `cols` that varies with `k` (1, 3, 5, 17, 33, max: block and warp
// tails), within the element budget.
std::int64_t rows_for(const Sizes& s, std::int64_t cols, std::size_t k);

}  // namespace rmsnorm::cli
