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
// Programmatic dependent launch needs sm_90.
cuda::Queue queue_for(Stream stream, bool pdl, int device) {
  return {static_cast<cudaStream_t>(stream), pdl && cuda_cc_major(device) >= 9};
}

template <class TX, bool RESIDUAL, class TG = TX>
void launch_backward_aligned(const BackwardProblem& p, const Plan& plan, int sms, const cuda::Queue& q) {
  cuda::with_alignment(
      plan, [&](auto aligned) { cuda::launch_backward<TX, TG, RESIDUAL, decltype(aligned)::value>(p, plan, sms, q); });
}
}  // namespace

std::size_t cuda_backward_workspace(std::int64_t total_rows, std::int64_t cols, int device) {
  // One fp32 partial dw row per backward block; the most blocks any plan launches is a full
  // grid of the smallest blocks, and never more than the rows.
  const std::int64_t most = cuda::filling_blocks(kMinBlockThreads, sm_count(device), kMaxThreadsPerSm);
  return static_cast<std::size_t>(std::min(total_rows, most) * cols) * sizeof(float);
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
  const bool split = plan.strategy == Strategy::block_row && p.split_few_rows && cuda_cc_major(device) >= 9;
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
