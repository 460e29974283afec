// `rmsnorm bench`: shapes, the driver that prints the tables, and the two timing backends
// (bench_cpu.cpp, bench_cuda.cu) it calls one shape at a time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device.h"
#include "options.h"
#include "report.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

struct BenchShape {
  std::string suite;
  std::int64_t rows = 0, cols = 0;
  bool latency = false;  // decode: microseconds per call, in a graph and plain
};

struct BenchContext {
  RunDevice device;
  DType dtype = DType::f16;
  Strategy strategy = Strategy::automatic;
  int reps = 50;
  std::uint64_t seed = 1;
  std::string commit, date;
};

// What a backend measured on one shape. A failed oracle check leaves that implementation
// untimed, sets `failed` and says why in `notes`.
struct ShapeResult {
  std::vector<Record> records;
  std::vector<std::string> notes;
  bool failed = false;
};

ShapeResult bench_shape_cpu(const BenchContext& ctx, const BenchShape& shape);
// CUDA builds only.
ShapeResult bench_shape_cuda(const BenchContext& ctx, const BenchShape& shape);

// Prints the tables to stdout and writes the requested files; returns the exit status.
int run_bench(const BenchOptions& options, const RunDevice& device);

// Shared by the backends: the rows of an M-row matrix that are checked against the oracle
// before timing (all rows up to 128, else the first and the last 64), as [begin, end).
std::vector<std::pair<std::int64_t, std::int64_t>> rows_to_check(std::int64_t rows);
// Compares y with the oracle's answer for x, both host copies of the same checked rows
// (contiguous, cols elements each, dtype t), with the weight (cols elements of t).
// Returns an empty string when they agree, else what went wrong.
std::string check_rows(const void* x, const void* y, const void* weight, DType t, std::int64_t rows,
                       std::int64_t cols, const Params& params);
// Records for one implementation's median time per call.
Record make_record(const BenchContext& ctx, const BenchShape& shape, const std::string& impl,
                   const std::string& mode, double us, std::int64_t sets, std::int64_t calls, int reps);
double median(std::vector<double> v);

}  // namespace rmsnorm::cli
