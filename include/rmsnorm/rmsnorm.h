// rmsnorm: fused RMSNorm for large language models, on CUDA GPUs and on the CPU.
//
//   rstd = 1 / sqrt(mean(x_j^2) + eps)        (fp32 accumulation; fp64 for f64 input)
//   y_j  = x_j * rstd * (w_j + weight_offset)
//
// with fused variants: a residual add before the norm (fused_add_forward, and its backward;
// fused_allreduce_add_forward with the ranks' sum before it) and 8-bit outputs after it
// (quant_forward, fused_add_quant_forward).
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

// Params::split_few_rows. A split row pays a cluster barrier and gains the bandwidth of
// more SMs: on the H200 it was the faster where a row moves 16 KB of x or more, and the
// slower at 8 KB (decode in a CUDA graph, docs/performance.md, "few rows").
enum class SplitFewRows : int {
  automatic = 0,  // split block rows of 256 and 512 lanes (8192 and 16384 16-bit columns)
  off = 1,        // never split: one block a row
  on = 2,         // split every block row of 128, 256 or 512 lanes (from 4096 16-bit columns)
};
const char* split_few_rows_name(SplitFewRows s) noexcept;  // "auto", "off", "on"

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
  // CUDA, sm_90, the forward's plain store and residual add: whether a batch of fewer rows
  // than the GPU has SMs (a decode step) runs each block row split over a cluster of blocks
  // on several SMs instead of one block on one SM (SplitFewRows). Reduced in the block's
  // order either way, so the bits are the same (batch invariance holds). Ignored on the CPU
  // and below sm_90.
  SplitFewRows split_few_rows = SplitFewRows::automatic;
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
// contiguous vectors of one f32 (f64 for f64 x) per row, like rstd. CPU and CUDA views (f64
// on the CPU only). A shard's partial sums are layout invariant: their order depends only on
// the shard's cols and dtype, never on the row count, strides or alignment. On the CPU each
// step sums a shard in the same fixed order as forward does a row, so a single shard
// (x_shard = x) gives forward's and backward's results bit for bit; on CUDA the partial sums
// have a kernel of their own, and a single shard equals forward within the tolerance of one
// sum. With several shards the order of the all-reduce joins in, and results equal the
// unsharded op's within the tolerance of one sum of N terms.

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
// Fused residual add (forward and backward)
// ---------------------------------------------------------------------------------------

// The residual add of a decoder layer and the norm after it, in one pass:
//
//   r_out = x + residual                       (in fp32, fp64 for f64; rounded once to r's dtype)
//   y     = rmsnorm(r_out) * (weight + offset) (the norm of the rounded r_out: what the next
//                                               layer reads; Hugging Face's and vLLM's order)
//
//  x             (batch, rows, cols) view, f32 / f16 / bf16 (f64 on the CPU)
//  residual      same shape; x's dtype, or f32 with f16/bf16 x (an fp32 residual stream, as
//                Megatron and TransformerEngine keep it)
//  weight        as in forward
//  y             as in forward: x's dtype, or f32 for 16-bit x with an f32 weight. May be
//                exactly x.
//  residual_out  same shape and dtype as residual. May be exactly residual: in place. vLLM's
//                fused_add_rms_norm is the call with y == x and residual_out == residual.
//  rstd          optional: as in forward, of the rows of r_out
//
// Every feature of forward holds: strided and batched views (each argument its own strides),
// no weight, weight_offset, both casts (Cast::llama rounds r_out * rstd to x's dtype, the
// activations' one: with a residual of x's dtype this is LlamaRMSNorm applied to r_out), and
// layout invariance: y's and r_out's bits depend only on the row's values, so y equals
// forward() applied to r_out wherever that call is defined with the same dtypes.
// Only the two exact aliasings above are allowed; any other shared byte is refused.
void fused_add_forward(const TensorView& x, const TensorView& residual, const std::optional<TensorView>& weight,
                       const TensorView& y, const TensorView& residual_out, const Params& params = {},
                       const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr);
Status fused_add_forward_status(const TensorView& x, const TensorView& residual,
                                const std::optional<TensorView>& weight, const TensorView& y,
                                const TensorView& residual_out, const Params& params = {},
                                const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr) noexcept;

// The end of a tensor-parallel layer in one pass: the sum of the ranks' partial outputs (an
// all-reduce's arithmetic, reading every rank's partial directly, as a one-shot all-reduce
// does), the residual add and the norm:
//
//   s     = partials[0] + partials[1] + ... + partials[count - 1]   (fp32, fp64 for f64, in
//                                                                    this order)
//   r_out = s + residual               (the same accumulator; rounded once to r's dtype)
//   y     = rmsnorm(r_out) * (weight + offset)
//
//  partials   `count` views (1 to kMaxAllReduceRanks), each in x's place of fused_add_forward:
//             one shape, dtype and strides for all; on CUDA, memory this device can read
//             (the peers' buffers mapped by symmetric memory or CUDA IPC)
//  residual, weight, y, residual_out, params, rstd: as in fused_add_forward, except that no
//             output may share a byte with a partial (y may not alias partials[0]): the other
//             ranks read the partials while this call runs
//
// The ranks' synchronisation is the caller's: every partial written before the call starts
// (a barrier across the ranks), and none rewritten until every rank's call has read it. Every
// rank that passes the same partials in the same order and the same residual gets the same
// bits, on either backend. count == 1 is fused_add_forward(partials[0], ...) bit for bit. On
// CUDA the sum is the residual add's prologue in the same kernels (one pass: each partial
// read once, over NVLink for a peer's); a partial not 16-byte aligned where x would need it
// makes the call load every array an element at a time (same bits, slower).
inline constexpr std::size_t kMaxAllReduceRanks = 16;
void fused_allreduce_add_forward(const TensorView* partials, std::size_t count, const TensorView& residual,
                                 const std::optional<TensorView>& weight, const TensorView& y,
                                 const TensorView& residual_out, const Params& params = {},
                                 const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr);
Status fused_allreduce_add_forward_status(const TensorView* partials, std::size_t count, const TensorView& residual,
                                          const std::optional<TensorView>& weight, const TensorView& y,
                                          const TensorView& residual_out, const Params& params = {},
                                          const std::optional<TensorView>& rstd = std::nullopt,
                                          Stream stream = nullptr) noexcept;

// Gradients of fused_add_forward. x and the residual get the same gradient: the norm's
// (backward() computed on r_out) plus the gradient that reaches r_out from the rest of the
// network (the residual stream), added in fp32 and rounded once:
//
//   dx = dr = dnorm(dy; r_out) + dr_out,   dw = sum over rows of dy * r_out * rstd
//
//  dy       gradient of y: r_out's shape, dx's dtype
//  dr_out   gradient of r_out: same shape, r_out's dtype
//  r_out    the forward's residual_out (the norm's input): f32 / f16 / bf16 (f64 on the CPU)
//  weight   as in backward: x's dtype (dx's) or f32
//  rstd     optional: the forward's rstd; recomputed from r_out when absent
//  dx       the gradient of x: r_out's dtype, or f16 / bf16 with an f32 r_out (x was 16-bit,
//           the residual f32). May be exactly dy or exactly dr_out.
//  dr       optional: the same gradient in r_out's dtype, stored too (the residual's gradient
//           when its dtype is not x's); may be exactly dr_out. Without it, dr is dx.
//  dw       optional, as in backward (deterministic)
//  workspace, workspace_bytes: backward_workspace_size(r_out, dw, params) bytes
void fused_add_backward(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                        const std::optional<TensorView>& weight, const std::optional<TensorView>& rstd,
                        const TensorView& dx, const std::optional<TensorView>& dr, const std::optional<TensorView>& dw,
                        const Params& params, void* workspace, std::size_t workspace_bytes, Stream stream = nullptr);
Status fused_add_backward_status(const TensorView& dy, const TensorView& dr_out, const TensorView& r_out,
                                 const std::optional<TensorView>& weight, const std::optional<TensorView>& rstd,
                                 const TensorView& dx, const std::optional<TensorView>& dr,
                                 const std::optional<TensorView>& dw, const Params& params, void* workspace,
                                 std::size_t workspace_bytes, Stream stream = nullptr) noexcept;

// ---------------------------------------------------------------------------------------
// 8-bit outputs (forward, optionally after the residual add)
// ---------------------------------------------------------------------------------------

// The norm's output quantised to q = f8e4m3 or i8 (q's dtype says which) instead of being
// stored. y_j is computed in fp32 exactly as forward computes it before its store (under
// Cast::fp32 never rounded to 16 bits; under Cast::llama with Hugging Face's roundings, as
// vLLM's fused norm-and-quantise kernels do), then
//
//   q_j = sat(y_j / s)   with `/` the correctly rounded fp32 division by default
//                        (QuantDivision::exact: the `(y / scale)` of eager PyTorch), s the
//                        scale of y_j's row (and group); or, with QuantDivision::reciprocal,
//                        q_j = sat(y_j * r) with r = 1 / s rounded once to fp32 (vLLM's fused
//                        norm-and-quantise kernels: `x * (1.0f / scale)`), which differs from
//                        the exact quotient in the last bit for some values and so can move
//                        a value one code across a rounding boundary, and costs one multiply
//                        a value where the exact quotient takes several instructions. Either
//                        way a scale outside [2^-64, 2^64] (a static one: computed scales are
//                        never there) is divided by exactly.
//   f8e4m3: round to nearest even, saturated at +-448, NaN kept: `t.clamp(-448, 448)
//           .to(torch.float8_e4m3fn)` bit for bit (see float_to_f8e4m3_bits)
//   i8:     round half to even, saturated at +-127 (symmetric, never -128); NaN -> 0
//
// Scales (s), all fp32:
//   static_tensor  one scale for the tensor, read from memory (it may be produced by an
//                  earlier kernel): `scales` is a vector of 1 f32 element.
//   per_row        one per row, computed and written: `scales` is a contiguous f32 vector of
//                  batch*rows elements (row b*rows + r, like rstd).
//   per_group      one per row and group of `group_size` consecutive columns (group_size
//                  divides cols; 128 is DeepSeek-V3's activation layout), computed and
//                  written: `scales` is (total rows, cols / group_size) row-major (a matrix
//                  view, row_stride >= cols / group_size), or with `column_major_scales` its
//                  transpose in memory: a (cols / group_size, total rows) matrix view whose
//                  row_stride >= total rows may pad each group's column of scales (for the
//                  alignment a GEMM's loads want).
// A computed scale is, with a = the max of |y_j| over the row (group) (NaN ignored),
//
//   s = max(min(a, scale_ub) / qmax, min_scale)      qmax = quant_max(q)
//
// `scale_ub` (optional, a vector of 1 f32 element in memory) caps a: vLLM's and FBGEMM's
// upper bound on the activations' range (1200 for Llama 3.1's fp8 checkpoints); values
// beyond it saturate. min_scale = quant_min_scale(q) = 1 / (qmax * 512) (vLLM's minimum for
// fp8 per-token scales, applied to int8 alike) keeps an all-zero row from dividing by zero.
// `pow2_scales` then rounds s up to a power of two (the exponent-only UE8M0 scales of
// DeepSeek-V3's recipe), so that s >= a / qmax still holds and nothing saturates.
enum class QuantScale : int { static_tensor = 0, per_row = 1, per_group = 2 };
const char* quant_scale_name(QuantScale k) noexcept;  // "static", "row", "group"
QuantScale parse_quant_scale(const std::string& name);
enum class QuantDivision : int { exact = 0, reciprocal = 1 };
const char* quant_division_name(QuantDivision d) noexcept;  // "exact", "reciprocal"
QuantDivision parse_quant_division(const std::string& name);

struct Quant {
  QuantScale kind = QuantScale::per_row;
  TensorView scales;                              // f32; read (static_tensor) or written (per_row, per_group)
  std::int64_t group_size = 128;                  // per_group only
  bool column_major_scales = false;               // per_group only
  bool pow2_scales = false;                       // per_row and per_group only
  std::optional<TensorView> scale_ub;             // per_row and per_group only: 1 f32 element
  QuantDivision division = QuantDivision::exact;  // y / s, or y * (1 / s) (vLLM's)
};

// 448 for f8e4m3, 127 for i8 (0 for any other dtype).
float quant_max(DType q) noexcept;
// The smallest computed scale: 1 / (quant_max(q) * 512) (0 for any other dtype).
float quant_min_scale(DType q) noexcept;

//  x, weight, params, rstd   as in forward (x f32 / f16 / bf16: there is no f64 quantised path)
//  q        x's shape, dtype f8e4m3 or i8; shares no byte with any other argument
//  quant    the scales, as above; they share no byte with any other argument
void quant_forward(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& q,
                   const Quant& quant, const Params& params = {}, const std::optional<TensorView>& rstd = std::nullopt,
                   Stream stream = nullptr);
Status quant_forward_status(const TensorView& x, const std::optional<TensorView>& weight, const TensorView& q,
                            const Quant& quant, const Params& params = {},
                            const std::optional<TensorView>& rstd = std::nullopt, Stream stream = nullptr) noexcept;

// The residual add, then the quantised output: fused_add_forward with q in place of y
// (residual_out may be exactly residual; q aliases nothing).
void fused_add_quant_forward(const TensorView& x, const TensorView& residual, const std::optional<TensorView>& weight,
                             const TensorView& q, const TensorView& residual_out, const Quant& quant,
                             const Params& params = {}, const std::optional<TensorView>& rstd = std::nullopt,
                             Stream stream = nullptr);
Status fused_add_quant_forward_status(const TensorView& x, const TensorView& residual,
                                      const std::optional<TensorView>& weight, const TensorView& q,
                                      const TensorView& residual_out, const Quant& quant, const Params& params = {},
                                      const std::optional<TensorView>& rstd = std::nullopt,
                                      Stream stream = nullptr) noexcept;

// ---------------------------------------------------------------------------------------
// Introspection
// ---------------------------------------------------------------------------------------

// What the CUDA backend would launch for a view (also available in CPU-only builds, so
// the choice is testable anywhere). For a CUDA view the plan is for its device; otherwise
// for an sm_90 device (clusters available).
inline constexpr int kClusterPerRow = -1;  // Plan::cluster_grid: a cluster a row
struct Plan {
  Strategy strategy = Strategy::automatic;
  int vector_width = 1;      // elements per chunk: 16 bytes of x, the unit a lane sums
  int threads_per_row = 0;   // lanes cooperating on one row
  int items_per_thread = 0;  // chunks each lane holds in registers (0: streamed)
  int threads_per_block = 0;
  // Blocks per row (cluster_row), else 1. The backward of a row beyond the largest cluster's
  // registers, with dw wanted and rstd saved (CUDA), runs in equal column shards: the plan
  // is then a shard's, holding fewer chunks than the row has, and the rows' dot products
  // are summed over the whole row first.
  int cluster_size = 1;
  // cluster_row: a block's slice of the row in this many pieces of its register capacity,
  // one held in registers and the rest in shared memory (rows beyond the registers of a
  // cluster's largest portable size: up to 4 forward, 2 backward), else 1.
  int pieces = 1;
  // cluster_row, forward: the clusters launched, each looping over its share of the rows, in
  // multiples of the clusters the device holds at once, or kClusterPerRow for one a row; 0 is
  // the launcher's choice (twice the resident clusters). The planner leaves it 0: it is there
  // to time grids against each other (`rmsnorm bench --grid`).
  int cluster_grid = 0;
  // cluster_row, forward, the plain store of aligned rows in one piece: each block's slice
  // copied to shared memory (cp.async) and read back from there, rather than held in
  // registers, so that shared memory decides how many blocks an SM holds (three of 512 x 8
  // where registers hold two), with one cluster a row unless cluster_grid says otherwise.
  // The planner takes it for clusters of 4 blocks or more; the bits are the registers'.
  bool shared_slices = false;
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
