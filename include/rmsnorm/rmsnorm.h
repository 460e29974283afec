// rmsnorm: fused RMSNorm for large language models, on CUDA GPUs and on the CPU.
//
//   rstd = 1 / sqrt(mean(x_j^2) + eps)        (fp32 accumulation; fp64 for f64 input)
//   y_j  = x_j * rstd * (w_j + weight_offset)
//
// This header is the whole public C++ API. It includes no CUDA or framework header:
// device memory is a plain pointer plus a Device tag, and a CUDA stream is passed as a
// `void*` (a cudaStream_t converts to it). Calls on CUDA views are stream-ordered and
// allocation-free; calls on CPU views run synchronously on the calling thread(s).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include "rmsnorm/dtype.h"

namespace rmsnorm {

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

enum class DeviceKind : int { cpu = 0, cuda = 1 };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;  // CUDA ordinal; ignored for the CPU
  static Device cpu() noexcept { return {DeviceKind::cpu, 0}; }
  static Device cuda(int ordinal = 0) noexcept { return {DeviceKind::cuda, ordinal}; }
};

// A strided view of `batch * rows` rows of `cols` contiguous elements each. Element (b, r, c)
// lives at data + b * batch_stride + r * row_stride + c (strides in elements, not bytes).
// A matrix is the batch == 1 case. A slice of a fused QKV buffer viewed as
// (tokens, heads, head_dim) is a batched view with batch_stride = the token stride.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  std::int64_t batch = 1;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::int64_t batch_stride = 0;  // elements between batches (ignored when batch == 1)
  std::int64_t row_stride = 0;    // elements between rows, >= cols

  // (rows, cols) with row_stride (default: cols, i.e. contiguous).
  static TensorView matrix(void* data, DType dtype, Device device, std::int64_t rows, std::int64_t cols,
                           std::int64_t row_stride = -1) noexcept;
  // (batch, rows, cols) with two strides.
  static TensorView batched(void* data, DType dtype, Device device, std::int64_t batch, std::int64_t rows,
                            std::int64_t cols, std::int64_t batch_stride, std::int64_t row_stride) noexcept;
  // A contiguous vector of n elements (a weight, or the per-row rstd).
  static TensorView vector(void* data, DType dtype, Device device, std::int64_t n) noexcept;

  std::int64_t total_rows() const noexcept { return batch * rows; }
};

// ---------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------

// How the output is rounded.
enum class Cast : int {
  // All math in fp32 (fp64 for f64), one rounding at the store. Also Gemma's semantics.
  fp32 = 0,
  // Hugging Face LlamaRMSNorm: x * rstd is rounded to x's dtype, then multiplied by the
  // weight in the promoted dtype of (x, weight), then stored. Bit-identical to it except
  // where the fp32 sum of squares rounds differently.
  llama = 1,
};

// Parallel strategy of the CUDA backend (the CPU backend has one). `automatic` picks from
// (cols, dtypes) only, never from the row count, the strides or the alignment, so a row
// gives the same bits whether it is normalised alone (decode), inside a batch (prefill) or
// inside any strided, batched or misaligned view (layout invariance).
enum class Strategy : int {
  automatic = 0,
  warp_rows = 1,    // a row per group of 1..32 lanes, several rows per block, row in registers
  block_row = 2,    // a row per block, held in registers
  long_row = 3,     // a row per block, streamed twice (sum of squares, then scale): any length
  cluster_row = 4,  // sm_90: a row split over a cluster of blocks, in registers
};
const char* strategy_name(Strategy s) noexcept;
// "auto", "warp_rows", "block_row", "long_row", "cluster_row"
Strategy parse_strategy(const std::string& name);

struct Params {
  double eps = 1e-6;           // finite, >= 0
  double weight_offset = 0.0;  // 0: Llama/Mistral/Qwen; 1: Gemma's (1 + w)
  Cast cast = Cast::fp32;
  Strategy strategy = Strategy::automatic;
  // Check with the CUDA runtime that every pointer is memory of the view's device. Costs
  // about a microsecond per call; a framework binding that already knows may turn it off.
  bool check_pointers = true;
  // CUDA, sm_90: launch the kernels as programmatic dependents. Each kernel may then be
  // scheduled while the previous kernel in the stream is still running, and waits for it
  // to finish (and its writes to be visible) before reading anything; it lets the next
  // kernel launched this way start early in turn. This hides the launch latency between
  // back-to-back kernels (a decode step's small calls, in a CUDA graph or not) and changes
  // no result. Ignored on the CPU and below sm_90.
  bool pdl = true;
};

// A CUDA stream as an opaque handle (cudaStream_t). nullptr is the legacy default stream.
using Stream = void*;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

enum class Code : int {
  ok = 0,
  invalid_argument = 1,  // a bad argument; the message names it and says what was expected
  unsupported = 2,       // a valid request this build or device cannot serve
  cuda_error = 3,        // the CUDA runtime reported an error (message has the kernel's name)
  internal = 4,
};
const char* code_name(Code c) noexcept;

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

// Result of the non-throwing entry points.
struct Status {
  Code code = Code::ok;
  std::string message;
  bool ok() const noexcept { return code == Code::ok; }
};

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

// y = rmsnorm(x) * (weight + offset), row by row.
//
//  x       (batch, rows, cols) view, f32 / f16 / bf16 (f64 on the CPU)
//  weight  `cols` contiguous elements of x's dtype or f32 (f64 with f64 x), or none (w = 1)
//  y       same shape as x; x's dtype, or f32 when x is f16/bf16 and the weight is f32
//          (the dtype Hugging Face returns in that case under Cast::llama). May be exactly
//          x (same pointer and strides) for an in-place update; any other overlap is refused.
//  rstd    optional: batch*rows contiguous f32 (f64 for f64 x), 1/sqrt(mean(x^2)+eps) per row
//  stream  CUDA stream for CUDA views; ignored for CPU views
//
// Zero rows is a no-op. Arguments are all checked before anything is written; on a bad
// argument this throws rmsnorm::Error (Code::invalid_argument) and writes nothing.
void forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
             const Params& params = {}, const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr);

// The same, reporting errors as a Status instead of throwing.
Status forward_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                      const Params& params = {}, const std::optional<TensorView>& rstd = std::nullopt,
                      Stream stream = nullptr) noexcept;

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

// Gradients of forward (treating the rounding steps of Cast::llama as identities):
//   g_j  = dy_j * (w_j + offset)                 (dy_j when there is no weight)
//   dx_j = rstd * g_j - rstd^3 / cols * x_j * sum_k(g_k * x_k)
//   dw_j = sum over all rows of dy_j * x_j * rstd
//
//  dy, x   same shape (views as in forward); x's dtype for both
//  weight  as in forward (none: no dw)
//  rstd    optional: the forward's rstd output; recomputed from x when absent
//  dx      same shape, x's dtype; may be exactly dy (in place)
//  dw      optional (only with a weight): cols contiguous elements of the weight's dtype or f32
//  workspace, workspace_bytes: scratch memory on x's device of at least
//          backward_workspace_size(...) bytes (may be null when that size is 0)
//
// dw is accumulated in fp32 in per-block partial sums which a second pass adds up in a
// fixed order: two runs on the same device give bit-identical dw.
std::size_t backward_workspace_size(const TensorView& x, const std::optional<TensorView>& dw,
                                    const Params& params = {});

void backward(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
              const std::optional<TensorView>& rstd, const TensorView& dx, const std::optional<TensorView>& dw,
              const Params& params, void* workspace, std::size_t workspace_bytes, Stream stream = nullptr);

Status backward_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                       const std::optional<TensorView>& rstd, const TensorView& dx, const std::optional<TensorView>& dw,
                       const Params& params, void* workspace, std::size_t workspace_bytes,
                       Stream stream = nullptr) noexcept;

// ---------------------------------------------------------------------------------------
// Rows split across ranks (the hidden dimension sharded)
// ---------------------------------------------------------------------------------------
//
// When tensor parallelism splits the N columns of every row over ranks (q/k norms over a
// whole projection whose heads are split, any norm after a row-split layer), each rank holds
// a shard of each row, and rstd needs the sum of squares of the whole row. The forward is
// then two steps around one all-reduce, made by the caller with any collective library (this
// library communicates nothing):
//
//   partial_sum_squares(x_shard, sums)                       sums[r] = sum of x^2 over the shard
//   all-reduce(sums, sum)                                    4 bytes a row (8 for f64)
//   forward_from_sums(x_shard, w_shard, y_shard, sums, N)    rstd = 1 / sqrt(sums / N + eps)
//
// and the backward two steps around another:
//
//   partial_grad_dot(dy_shard, x_shard, w_shard, dots)       dots[r] = sum of dy * (w + offset) * x
//   all-reduce(dots, sum)
//   backward_from_sums(dy_shard, x_shard, w_shard, rstd, dots, N, dx_shard, dw_shard)
//
// A shard's dw is the gradient of its own columns of the weight: no communication. The views,
// dtypes, Params and aliasing rules are those of forward and backward; `sums` and `dots` are
// contiguous vectors of one f32 (f64 for f64 x) per row, like rstd. Each step sums a shard in
// the same fixed order as forward does a row, so a single shard (x_shard = x) gives forward's
// and backward's results bit for bit; with several shards the order of the all-reduce joins
// in, and results equal the unsharded op's within the tolerance of one sum of N terms.

// sums[r] = sum over the shard's columns of x[r, j]^2, accumulated in f32 (f64 for f64 x).
//  x     (batch, rows, cols) view of the shard, as forward's x
//  sums  batch*rows contiguous f32 (f64 for f64 x); must not overlap x
void partial_sum_squares(const TensorView& x, const TensorView& sums, const Params& params = {},
                         Stream stream = nullptr);

// forward over a shard, given the sums of squares of the whole rows (all-reduced):
//   rstd = 1 / sqrt(sums[r] * (1 / full_cols) + eps),  y = x * rstd * (w + offset)
// with forward's casts. full_cols is N, the length of the whole row (>= the shard's cols).
// weight is the shard's columns of the weight; rstd, optional, is written as forward writes
// it (the backward needs it: a shard cannot recompute it). sums must not overlap y or rstd.
void forward_from_sums(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                       const TensorView& sums, std::int64_t full_cols, const Params& params = {},
                       const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr);

// dots[r] = sum over the shard's columns of dy[r, j] * (w_j + offset) * x[r, j] (dy * x without
// a weight), accumulated in f32 (f64 for f64 x). dy and x as in backward.
void partial_grad_dot(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                      const TensorView& dots, const Params& params = {}, Stream stream = nullptr);

// backward over a shard, given the forward's rstd and the all-reduced dots of the whole rows:
//   dx_j = rstd * g_j - rstd^3 / full_cols * x_j * dots[r],   g_j = dy_j * (w_j + offset)
//   dw_j = sum over rows of dy_j * x_j * rstd                  (this shard's columns)
// Arguments as in backward, except that rstd is required; the workspace is sized by
// backward_workspace_size(x, dw, params) with the shard's x.
void backward_from_sums(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                        const TensorView& rstd, const TensorView& dots, std::int64_t full_cols, const TensorView& dx,
                        const std::optional<TensorView>& dw, const Params& params, void* workspace,
                        std::size_t workspace_bytes, Stream stream = nullptr);

// The same four, reporting errors as a Status instead of throwing.
Status partial_sum_squares_status(const TensorView& x, const TensorView& sums, const Params& params = {},
                                  Stream stream = nullptr) noexcept;
Status forward_from_sums_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                                const TensorView& sums, std::int64_t full_cols, const Params& params = {},
                                const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr) noexcept;
Status partial_grad_dot_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                               const TensorView& dots, const Params& params = {}, Stream stream = nullptr) noexcept;
Status backward_from_sums_status(const TensorView& dy, const TensorView& x, const std::optional<TensorView>& weight,
                                 const TensorView& rstd, const TensorView& dots, std::int64_t full_cols,
                                 const TensorView& dx, const std::optional<TensorView>& dw, const Params& params,
                                 void* workspace, std::size_t workspace_bytes, Stream stream = nullptr) noexcept;

// ---------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------

// What the CUDA backend would launch for a view (also available in CPU-only builds, so
// the choice is testable anywhere). For a CUDA view the plan is for its device; otherwise
// for an sm_90 device (clusters available).
struct Plan {
  Strategy strategy = Strategy::automatic;
  int vector_width = 1;      // elements per chunk: 16 bytes of x, the unit a lane sums
  int threads_per_row = 0;   // lanes cooperating on one row
  int items_per_thread = 0;  // chunks each lane holds in registers (0: streamed)
  int threads_per_block = 0;
  int cluster_size = 1;  // blocks per row (cluster_row), else 1
  // Elements per memory access: vector_width when every row start is 16-byte aligned and
  // cols a multiple of it, else 1. It changes how chunks are loaded, never the order in
  // which they are summed: the rest of the plan depends on (cols, dtypes) only.
  int load_width = 1;
};
// `requested` is Params::strategy; a forced strategy whose capacity cannot hold `cols`
// throws Error(Code::unsupported) naming the limit.
// The weight, when given, takes part: its alignment can limit the load width, and its
// dtype decides which output dtypes are valid.
Plan plan_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& y,
                  Strategy requested = Strategy::automatic);
Plan plan_forward(const TensorView& x, const TensorView& y, Strategy requested = Strategy::automatic);

// Whether this build has the CUDA backend, and how many CUDA devices it sees (0 when none).
bool built_with_cuda() noexcept;
int cuda_device_count() noexcept;
// A one-line description of the device for reports, e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)".
std::string describe_device(Device device);

const char* version() noexcept;

}  // namespace rmsnorm
