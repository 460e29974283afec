// The CUDA backend's entry: route a validated problem to the launcher of its input dtype.
#include <algorithm>
#include <array>
#include <atomic>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/forward_steps.cuh"
#include "cuda/launch.h"
#include "kernel_configs.h"
#include "problem.h"
#include "sharded_problem.h"

namespace rmsnorm::detail {
namespace cuda {
// Instantiated by the generated units (forward_instance.cu.in, backward_instance.cu.in).
template <class TX, class STEPS, bool ALIGNED>
void launch_forward(const ForwardProblem& p, const Plan& plan, int sm_count, const Queue& q);
template <class TX, class TG, bool RESIDUAL, bool ALIGNED>
void launch_backward(const BackwardProblem& p, const Plan& plan, int sm_count, const Queue& q);
template <class TX>
void launch_partial_sums(const PartialSumsProblem& p, const Queue& q);
}  // namespace cuda

namespace {
// Launches go to the current device; make it the views' device for the duration of a call.
class DeviceGuard {
 public:
  explicit DeviceGuard(int ordinal) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != ordinal && cudaSetDevice(ordinal) == cudaSuccess)
      switched_ = true;
    cudaGetLastError();
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};
int device_attribute(int device, cudaDeviceAttr attribute, const char* what) {
  int n = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&n, attribute, device);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(Code::cuda_error, std::string("cannot read the ") + what + " of CUDA device " + std::to_string(device) +
                                      ": " + cudaGetErrorString(err));
  }
  return n;
}
// The attributes read on every call (the SM count, the compute capability) never change
// while the process runs: each is read from the runtime once per device.
template <cudaDeviceAttr ATTRIBUTE>
int cached_attribute(int device, const char* what) {
  static std::array<std::atomic<int>, 64> cache{};  // 0: not read yet (both are positive)
  if (device < 0 || device >= static_cast<int>(cache.size())) return device_attribute(device, ATTRIBUTE, what);
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    n = device_attribute(device, ATTRIBUTE, what);
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}
int sm_count(int device) { return cached_attribute<cudaDevAttrMultiProcessorCount>(device, "SM count"); }
// The most blocks, one partial dw row each, any backward plan launches: a full grid of the
// smallest blocks.
std::int64_t most_partial_rows(int device) {
  return cuda::filling_blocks(kMinBlockThreads, sm_count(device), kMaxThreadsPerSm);
}
// Programmatic dependent launch needs sm_90.
cuda::Queue queue_for(Stream stream, bool pdl, int device) {
  return {static_cast<cudaStream_t>(stream), pdl && cuda_cc_major(device) >= 9};
}

// An element `cols` columns into a row (a shard's first column).
template <class T>
T* columns_in(T* base, std::int64_t cols, DType dtype) {
  using Byte = std::conditional_t<std::is_const_v<T>, const unsigned char, unsigned char>;
  return base ? static_cast<T*>(static_cast<Byte*>(base) + cols * static_cast<std::int64_t>(dtype_size(dtype)))
              : nullptr;
}

// A row beyond the backward's cluster rows, as plan_backward plans it (dw wanted, rstd
// saved): the rows' dot products sum(g x) over every column first, into the workspace's
// head (partial_grad_dot's kernel; the sharded rows' apply step brings its own), then the
// columns in shards of equal width, whole chunks each, every shard a cluster-row backward
// reading the saved rstd and the dots (the apply step's kernels, over full_cols), each
// finishing its slice of dw. The shards run in stream order through the same partial rows.
void backward_in_column_shards(const BackwardProblem& p, const Plan& plan, std::int64_t held, int device,
                               Stream stream) {
  const std::int64_t shard_cols = column_shard_cols(p.cols, plan.vector_width, held);
  const std::size_t dots_bytes =
      p.row_dots ? 0 : (static_cast<std::size_t>(p.total_rows()) * sizeof(float) + 15) / 16 * 16;
  // Each shard's partial dw rows: one a cluster, never more clusters than rows or SMs (so
  // within cuda_backward_workspace's rows, with the dots beside them: a shard is at most
  // half a row plus a chunk).
  const std::size_t partial_bytes =
      static_cast<std::size_t>(std::min(p.total_rows(), most_partial_rows(device)) * shard_cols) * sizeof(float);
  if (!p.rstd || !p.dw || p.workspace_bytes < dots_bytes + partial_bytes)
    throw Error(Code::internal, "workspace: the column shards of a long row need " +
                                    std::to_string(dots_bytes + partial_bytes) + " bytes, a saved rstd and dw");
  float* dots = p.row_dots ? nullptr : static_cast<float*>(p.workspace);
  if (dots) {
    PartialSumsProblem sums;
    sums.x = p.x;
    sums.dy = p.dy;
    sums.weight = p.weight;
    sums.sums = dots;
    sums.x_dtype = p.x_dtype;  // dy's too (plan_backward shards only then)
    sums.w_dtype = p.w_dtype;
    sums.batch = p.batch;
    sums.rows = p.rows;
    sums.cols = p.cols;
    sums.x_batch_stride = p.x_batch_stride;
    sums.x_row_stride = p.x_row_stride;
    sums.dy_batch_stride = p.dy_batch_stride;
    sums.dy_row_stride = p.dy_row_stride;
    sums.weight_offset = p.weight_offset;
    sums.pdl = p.pdl;
    cuda_partial_sums(sums, device, stream);
  }
  for (std::int64_t first = 0; first < p.cols; first += shard_cols) {
    BackwardProblem s = p;
    s.cols = std::min(shard_cols, p.cols - first);
    s.x = columns_in(p.x, first, p.x_dtype);
    s.dy = columns_in(p.dy, first, p.dx_dtype);
    s.dx = columns_in(p.dx, first, p.dx_dtype);
    s.weight = columns_in(p.weight, first, p.w_dtype);
    s.dw = columns_in(p.dw, first, p.dw_dtype);
    s.dr_out = columns_in(p.dr_out, first, p.x_dtype);
    s.dr = columns_in(p.dr, first, p.x_dtype);
    s.row_dots = p.row_dots ? p.row_dots : dots;
    s.full_cols = p.row_dots ? p.full_cols : p.cols;
    s.workspace = static_cast<unsigned char*>(p.workspace) + dots_bytes;
    s.workspace_bytes = p.workspace_bytes - dots_bytes;
    cuda_backward(s, plan, device, stream);  // the plan holds a shard
  }
}

template <class TX, bool RESIDUAL, class TG = TX>
void launch_backward_aligned(const BackwardProblem& p, const Plan& plan, int sms, const cuda::Queue& q) {
  cuda::with_alignment(
      plan, [&](auto aligned) { cuda::launch_backward<TX, TG, RESIDUAL, decltype(aligned)::value>(p, plan, sms, q); });
}
}  // namespace

std::size_t cuda_backward_workspace(std::int64_t total_rows, std::int64_t cols, int device) {
  // One fp32 partial dw row per backward block, never more blocks than rows. A long row's
  // column shards (backward_in_column_shards) fit too: their dots and partial rows take at
  // most rows * 4 bytes (rounded to 16) and half a row's plus a chunk's.
  return static_cast<std::size_t>(std::min(total_rows, most_partial_rows(device)) * cols) * sizeof(float);
}

void cuda_backward(const BackwardProblem& p, const Plan& plan, int device, Stream stream) {
  DeviceGuard guard(device);
  if (p.total_rows() == 0) {
    if (p.dw) {
      const cudaError_t err = cudaMemsetAsync(p.dw, 0, static_cast<std::size_t>(p.cols) * dtype_size(p.dw_dtype),
                                              static_cast<cudaStream_t>(stream));
      if (err != cudaSuccess)
        throw Error(Code::cuda_error, std::string("dw: zero fill failed: ") + cudaGetErrorString(err));
    }
    return;
  }
  if (plan.strategy == Strategy::cluster_row) {
    // The vectors a cluster row holds: its blocks' registers, in as many pieces.
    const std::int64_t held = std::int64_t{plan.threads_per_row} * plan.items_per_thread * plan.pieces;
    if ((p.cols + plan.vector_width - 1) / plan.vector_width > held)
      return backward_in_column_shards(p, plan, held, device, stream);
  }
  const int sms = sm_count(device);
  const cuda::Queue q = queue_for(stream, p.pdl, device);
  // The residual add's backward: x is r_out, dr_out and dr have its dtype; dy and dx have it
  // too, or are 16-bit with an f32 r_out.
  const bool residual = p.dr_out != nullptr;
  if (residual && p.x_dtype == DType::f32 && p.dx_dtype == DType::f16)
    return launch_backward_aligned<float, true, __half>(p, plan, sms, q);
  if (residual && p.x_dtype == DType::f32 && p.dx_dtype == DType::bf16)
    return launch_backward_aligned<float, true, __nv_bfloat16>(p, plan, sms, q);
  switch (p.x_dtype) {
    case DType::f32:
      return residual ? launch_backward_aligned<float, true>(p, plan, sms, q)
                      : launch_backward_aligned<float, false>(p, plan, sms, q);
    case DType::f16:
      return residual ? launch_backward_aligned<__half, true>(p, plan, sms, q)
                      : launch_backward_aligned<__half, false>(p, plan, sms, q);
    case DType::bf16:
      return residual ? launch_backward_aligned<__nv_bfloat16, true>(p, plan, sms, q)
                      : launch_backward_aligned<__nv_bfloat16, false>(p, plan, sms, q);
    case DType::f64:
      throw Error(Code::unsupported, "x: f64 is supported on the CPU only");
    case DType::f8e4m3:
    case DType::i8:
      break;  // outputs only: validation refuses them as x
  }
  throw Error(Code::internal, std::string("x: no CUDA kernels for ") + dtype_name(p.x_dtype));
}

int cuda_cc_major(int device) {
  return cached_attribute<cudaDevAttrComputeCapabilityMajor>(device, "compute capability");
}

namespace {
// The forward's fused steps as the problem asks for them.
template <class TX, class STEPS>
void launch_forward_aligned(const ForwardProblem& p, const Plan& plan, int sms, const cuda::Queue& q) {
  cuda::with_alignment(
      plan, [&](auto aligned) { cuda::launch_forward<TX, STEPS, decltype(aligned)::value>(p, plan, sms, q); });
}

template <class TX>
void launch_forward_steps(const ForwardProblem& p, const Plan& plan, int sms, const cuda::Queue& q) {
  using cuda::ForwardSteps;
  if (p.ranks > 1 && (!p.residual || p.quantize))
    throw Error(Code::internal, "the ranks' sum comes with the residual add and without quantising");
  if constexpr (!std::is_same<TX, float>::value) {
    // An f32 residual with 16-bit x: the row the norm reads is r_out's, f32; x is its input.
    if (p.residual && p.r_dtype == DType::f32) {
      if (p.ranks > 1) return launch_forward_aligned<float, ForwardSteps<true, false, TX, true>>(p, plan, sms, q);
      if (p.quantize) return launch_forward_aligned<float, ForwardSteps<true, true, TX>>(p, plan, sms, q);
      return launch_forward_aligned<float, ForwardSteps<true, false, TX>>(p, plan, sms, q);
    }
  }
  if (p.residual && p.quantize) return launch_forward_aligned<TX, ForwardSteps<true, true>>(p, plan, sms, q);
  if (p.residual && p.ranks > 1)
    return launch_forward_aligned<TX, ForwardSteps<true, false, void, true>>(p, plan, sms, q);
  if (p.residual) return launch_forward_aligned<TX, ForwardSteps<true, false>>(p, plan, sms, q);
  if (p.quantize) return launch_forward_aligned<TX, ForwardSteps<false, true>>(p, plan, sms, q);
  launch_forward_aligned<TX, cuda::PlainSteps>(p, plan, sms, q);
}
}  // namespace

void cuda_forward(const ForwardProblem& p, const Plan& plan, int device, Stream stream) {
  DeviceGuard guard(device);
  // The SM count: the cluster rows' grid, and for block rows whether a batch is few enough
  // rows to split (Params::split_few_rows, on sm_90); 0 where neither applies.
  const bool split =
      plan.strategy == Strategy::block_row && p.split_few_rows != SplitFewRows::off && cuda_cc_major(device) >= 9;
  const int sms = plan.strategy == Strategy::cluster_row || split ? sm_count(device) : 0;
  const cuda::Queue q = queue_for(stream, p.pdl, device);
  // x's dtype picks the instantiations; an f32 residual with 16-bit x takes an f32 row's
  // (launch_forward_steps).
  switch (p.x_dtype) {
    case DType::f32:
      return launch_forward_steps<float>(p, plan, sms, q);
    case DType::f16:
      return launch_forward_steps<__half>(p, plan, sms, q);
    case DType::bf16:
      return launch_forward_steps<__nv_bfloat16>(p, plan, sms, q);
    case DType::f64:
      throw Error(Code::unsupported, "x: f64 is supported on the CPU only");
    case DType::f8e4m3:
    case DType::i8:
      break;  // outputs only: validation refuses them as x
  }
  throw Error(Code::internal, std::string("x: no CUDA kernels for ") + dtype_name(p.x_dtype));
}

// The sharded-row steps: the partial sums have a kernel of their own (sharded.cu); the apply
// steps are the forward and backward kernels reading the reduced sums instead of reducing.

void cuda_partial_sums(const PartialSumsProblem& p, int device, Stream stream) {
  DeviceGuard guard(device);
  const cuda::Queue q = queue_for(stream, p.pdl, device);
  switch (p.x_dtype) {
    case DType::f32:
      return cuda::launch_partial_sums<float>(p, q);
    case DType::f16:
      return cuda::launch_partial_sums<__half>(p, q);
    case DType::bf16:
      return cuda::launch_partial_sums<__nv_bfloat16>(p, q);
    case DType::f64:
      throw Error(Code::unsupported, "x: f64 is supported on the CPU only");
    case DType::f8e4m3:
    case DType::i8:
      break;  // outputs only: validation refuses them as x
  }
  throw Error(Code::internal, std::string("x: no CUDA kernels for ") + dtype_name(p.x_dtype));
}

void cuda_forward_from_sums(const ForwardFromSumsProblem& p, const Plan& plan, int device, Stream stream) {
  ForwardProblem f = p.forward;
  f.row_sums = static_cast<const float*>(p.sums);
  f.full_cols = p.full_cols;
  cuda_forward(f, plan, device, stream);
}

void cuda_backward_from_sums(const BackwardFromSumsProblem& p, const Plan& plan, int device, Stream stream) {
  BackwardProblem b = p.backward;
  b.row_dots = static_cast<const float*>(p.dots);
  b.full_cols = p.full_cols;
  cuda_backward(b, plan, device, stream);
}

}  // namespace rmsnorm::detail
