// Column shards of a view, as tensor parallelism splits the N columns of every row over k
// ranks: what the tests and `rmsnorm check` feed the sharded-row steps (rmsnorm.h, "Rows
// split across ranks") before comparing the joined result with the unsharded oracle.
#pragma once

#include <cstdint>
#include <vector>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::reference {

// The first column of each of k shards of n columns, and n at the end: shard i holds
// [bounds[i], bounds[i + 1]). As even as can be (sizes differ by at most one), so every shard
// has a column when k <= n.
inline std::vector<std::int64_t> shard_bounds(std::int64_t n, std::int64_t k) {
  std::vector<std::int64_t> b;
  for (std::int64_t i = 0; i <= k; ++i) b.push_back(i * n / k);
  return b;
}

// Columns [begin, end) of every row of v: the same rows and strides, a narrower row (for a
// vector such as the weight: its elements [begin, end)).
inline TensorView column_shard(const TensorView& v, std::int64_t begin, std::int64_t end) {
  TensorView s = v;
  s.data = static_cast<unsigned char*>(v.data) + begin * static_cast<std::int64_t>(dtype_size(v.dtype));
  s.cols = end - begin;
  return s;
}

}  // namespace rmsnorm::reference
