// `rmsnorm bench`: shapes, the driver that prints the tables, and the timing backends it
// calls one shape at a time: forward (bench_cpu.cpp, bench_cuda.cu), backward
// (bench_backward_cpu.cpp, bench_backward_cuda.cu) and the fused forms (bench_fused_cpu.cpp,
// bench_fused_cuda.cu).
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
  std::string op = "forward";                     // forward, backward, add or quant
  QuantScale quant = QuantScale::per_row;         // op quant
  DType qdtype = DType::f8e4m3;                   // op quant
  QuantDivision division = QuantDivision::exact;  // op quant
  DType dtype = DType::f16;
  Strategy strategy = Strategy::automatic;
  int config_threads = 0, config_items = 0;  // see BenchOptions
  int cluster_grid = 0;                      // see BenchOptions
  bool shared_slices = false;                // see BenchOptions
  int max_cluster = 8;                       // see BenchOptions
  bool pdl = true;
  SplitFewRows split = SplitFewRows::automatic;       // Params::split_few_rows
  bool leave_out_dw = false, leave_out_rstd = false;  // see BenchOptions
  int reps = 50;
  std::uint64_t seed = 1;
  std::string commit, date;
};

// What a backend measured on one shape. A failed oracle check leaves that implementation
// untimed, sets `failed` and says why in `notes`. A fused form the device's backend refuses
// (Code::unsupported: its kernels are not there yet) is no failure: `fused_not_served` makes
// its cells read "not served", and the baseline and the copy are timed as usual.
struct ShapeResult {
  std::vector<Record> records;
  std::vector<std::string> notes;
  bool failed = false;
  bool fused_not_served = false;
};

ShapeResult bench_shape_cpu(const BenchContext& ctx, const BenchShape& shape);
ShapeResult bench_backward_shape_cpu(const BenchContext& ctx, const BenchShape& shape);
// The fused forms (--op add, --op quant).
ShapeResult bench_fused_shape_cpu(const BenchContext& ctx, const BenchShape& shape);
// CUDA builds only.
ShapeResult bench_shape_cuda(const BenchContext& ctx, const BenchShape& shape);
ShapeResult bench_backward_shape_cuda(const BenchContext& ctx, const BenchShape& shape);
ShapeResult bench_fused_shape_cuda(const BenchContext& ctx, const BenchShape& shape);

// Model bytes of one call on an M x N shape: forward 2*M*N*s (read x, write y), backward
// 3*M*N*s (read x and dy, write dx), add 4*M*N*s (read x and r, write y and r_out), quant
// M*N*s + M*N + the fp32 scales (read x, write q and scales).
double model_bytes(const BenchContext& ctx, std::int64_t rows, std::int64_t cols);
// The scales' bytes of --op quant: 4 (static), 4*M (row), 4*M*N/128 (group).
std::size_t quant_scale_bytes(QuantScale kind, std::int64_t rows, std::int64_t cols);
constexpr std::int64_t kBenchGroupSize = 128;

// Prints the tables to stdout and writes the requested files; returns the exit status.
int run_bench(const BenchOptions& options, const RunDevice& device);

// Shared by the backends: the rows of an M-row matrix that are checked against the oracle
// before timing (all rows up to 128, else the first and the last 64), as [begin, end).
std::vector<std::pair<std::int64_t, std::int64_t>> rows_to_check(std::int64_t rows);
// Compares y with the oracle's answer for x, both host copies of the same checked rows
// (contiguous, cols elements each, dtype t), with the weight (cols elements of t).
// Returns an empty string when they agree, else what went wrong.
std::string check_rows(const void* x, const void* y, const void* weight, DType t, std::int64_t rows, std::int64_t cols,
                       const Params& params);

// The fused forms' checks before timing (bench_fused_cuda.cu), on host copies of the checked
// rows gathered contiguously (rows_to_check's, in order: `rows` rows of `cols` elements).
// Each returns an empty string when the outputs pass, else what went wrong.
//
// --op add, residual of x's dtype t, Cast::fp32: r_out must be x + r rounded once to t, bit
// for bit; y the norm of r_out (weight of t) within forward_tolerance.
struct AddOutputs {
  const void* y = nullptr;
  const void* r_out = nullptr;
};
std::string check_add_rows(const void* x, const void* r, const AddOutputs& got, const void* weight, DType t,
                           std::int64_t rows, std::int64_t cols, const Params& params);
// The fused call's outputs against the unfused baseline's: r_out bytes identical, y within
// twice forward_tolerance of the baseline's (each is within it of the exact value).
std::string compare_add_outputs(const AddOutputs& fused, const AddOutputs& unfused, DType t, std::int64_t rows,
                                std::int64_t cols);
// --op quant: codes of dtype q and the scales they were made with, (rows, groups) row-major
// (a static scale repeated; groups = 1 unless per group).
struct QuantOutputs {
  const void* q = nullptr;
  std::vector<double> scales;
};
// Against the oracle (Cast::fp32): the codes by compare_quantized, computed scales by
// compare_scales. `y_stored`: the codes were made from y stored in t first (the unfused
// baseline's plain forward), whose rounding widens y's tolerance to forward_tolerance's;
// otherwise from the fp32 y of the fused call (quant_y_tolerance).
std::string check_quant_rows(const void* x, const QuantOutputs& got, const void* weight, DType t, DType q,
                             QuantScale kind, std::int64_t group_size, std::int64_t rows, std::int64_t cols,
                             const Params& params, bool y_stored, QuantDivision division = QuantDivision::exact);
// The fused call's codes against the baseline's, as values (code * scale): within one
// quantisation step (the code spacing at the larger of the two codes, times the larger
// scale), plus both y tolerances (the baseline's y was rounded to t before it was divided).
// Bit equality is not expected: the scales come from differently rounded y.
std::string compare_quant_outputs(const QuantOutputs& fused, const QuantOutputs& unfused, DType t, DType q,
                                  std::int64_t group_size, std::int64_t rows, std::int64_t cols);

// The oracle's backward for a benchmark input: x and dy are host copies of a whole
// contiguous (rows, cols) matrix of dtype t, the weight has t too. dx for the rows of
// rows_to_check (in order), dw over all rows (the oracle run on chunks of rows in
// parallel, their sums added in a fixed order).
struct BackwardExpected {
  std::vector<double> dx, dx_scale;
  std::vector<double> dw, dw_scale;
};
BackwardExpected backward_expected(const void* x, const void* dy, const void* weight, DType t, std::int64_t rows,
                                   std::int64_t cols, const Params& params);
// Compares a backward's dx on the checked rows (contiguous host copy) and its dw (cols of
// dtype t) with the expectation under dx_tolerance / dw_tolerance (rows = all rows).
// `eager_roundings`: the unfused baseline's extra roundings of the 16-bit products (see
// unfused_backward.h) widen the terms' allowance by that many unit roundoffs of t.
// Returns an empty string when they agree, else what went wrong. A null dw is not checked
// (a backward that left dw out: bench --leave-out dw).
std::string check_backward(const BackwardExpected& expected, const void* dx_rows, const void* dw, DType t,
                           std::int64_t rows, std::int64_t cols, int eager_roundings);

// One buffer set of the backward benchmark, one allocation laid out [x | dy | dx | rstd],
// each part 256-byte aligned, so that the copy ceiling moves exactly the backward's bytes
// inside it: the first 1.5*M*N*s bytes (x and the start of dy) copied over the last
// 1.5*M*N*s bytes of matrix (the rest of dy and dx): 1.5 read + 1.5 written = 3*M*N*s.
struct BackwardSetLayout {
  std::size_t matrix = 0;  // M*N*s
  std::size_t pitch = 0;   // matrix rounded up to 256 bytes: x at 0, dy at pitch, dx at 2 pitch
  std::size_t bytes = 0;   // the whole set, rstd (M floats) at 3 pitch
  std::size_t copy = 0;    // bytes the copy ceiling moves each way
  // The unfused baseline's buffers: the tensors its forward saves (one copy per set), its
  // backward's scratch and the forward scratch that makes the saved tensors (one each).
  std::size_t saved = 0, scratch = 0, forward_scratch = 0;
  static std::size_t round_up(std::size_t n) { return (n + 255) / 256 * 256; }
  BackwardSetLayout(DType t, std::int64_t rows, std::int64_t cols);  // bench_common.cpp
};

// Records for one implementation's median time per call.
Record make_record(const BenchContext& ctx, const BenchShape& shape, const std::string& impl, const std::string& mode,
                   double us, std::int64_t sets, std::int64_t calls, int reps);
double median(std::vector<double> v);

}  // namespace rmsnorm::cli
