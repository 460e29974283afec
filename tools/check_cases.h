// The cases of `rmsnorm check`, grouped as its output lines are. Building the list is
// separate from running it (check.cpp) so that a new case is one line here.
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
};

// One line of the check's output.
struct CheckGroup {
  std::string name;
  std::vector<CheckCase> cases;
  std::string skipped_why;  // non-empty: the group does not apply on this device
};

std::vector<CheckGroup> build_check_groups(bool quick, bool on_cuda);

// "x=f16 w=f32 y=f16 2x(3x1000) xs=1008 llama eps=1e-05 offset=1 rstd in-place ..."
std::string describe(const CheckCase& c);

}  // namespace rmsnorm::cli
