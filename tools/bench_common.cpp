// Helpers both benchmark backends use: the oracle check before timing, and records.
#include <algorithm>
#include <cmath>

#include "bench.h"
#include "harness.h"
#include "oracle.h"
#include "tolerances.h"

namespace rmsnorm::cli {

std::vector<std::pair<std::int64_t, std::int64_t>> rows_to_check(std::int64_t rows) {
  constexpr std::int64_t kEdge = 64;  // first and last rows: a wrong grid or tail shows there
  if (rows <= 2 * kEdge) return {{0, rows}};
  return {{0, kEdge}, {rows - kEdge, rows}};
}

std::string check_rows(const void* x, const void* y, const void* weight, DType t, std::int64_t rows,
                       std::int64_t cols, const Params& params) {
  namespace ref = rmsnorm::reference;
  const TensorView xv = TensorView::matrix(const_cast<void*>(x), t, Device::cpu(), rows, cols);
  const TensorView yv = TensorView::matrix(const_cast<void*>(y), t, Device::cpu(), rows, cols);
  const TensorView wv = TensorView::vector(const_cast<void*>(weight), t, Device::cpu(), cols);
  const ref::ForwardResult expected = ref::forward(xv, wv, t, params);
  const ref::Comparison c = ref::compare(yv, expected.y, ref::forward_tolerance(t, t, params.cast, cols));
  return c.passed() ? std::string() : c.describe();
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

Record make_record(const BenchContext& ctx, const BenchShape& shape, const std::string& impl,
                   const std::string& mode, double us, std::int64_t sets, std::int64_t calls, int reps) {
  Record r;
  r.dtype = dtype_name(ctx.dtype);
  r.rows = shape.rows;
  r.cols = shape.cols;
  r.impl = impl;
  r.mode = mode;
  r.suite = shape.suite;
  r.bytes = 2.0 * static_cast<double>(shape.rows) * static_cast<double>(shape.cols) *
            static_cast<double>(dtype_size(ctx.dtype));
  r.us = us;
  r.gbps = r.bytes / (us * 1e3);  // bytes / (us * 1e-6 s) / 1e9
  r.sets = sets;
  r.calls = calls;
  r.reps = reps;
  r.device = ctx.device.name;
  r.commit = ctx.commit;
  r.date = ctx.date;
  return r;
}

}  // namespace rmsnorm::cli
