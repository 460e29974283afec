// The CUDA backend's entry: route a validated problem to the launcher of its input dtype.
#include "cuda/common.cuh"
#include "problem.h"

namespace rmsnorm::detail {
namespace cuda {
template <class TX>
void launch_forward(const ForwardProblem& p, const Plan& plan, cudaStream_t stream);
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
}  // namespace

void cuda_forward(const ForwardProblem& p, const Plan& plan, int device, Stream stream) {
  DeviceGuard guard(device);
  auto* s = static_cast<cudaStream_t>(stream);
  switch (p.x_dtype) {
    case DType::f32: return cuda::launch_forward<float>(p, plan, s);
    case DType::f16: return cuda::launch_forward<__half>(p, plan, s);
    case DType::bf16: return cuda::launch_forward<__nv_bfloat16>(p, plan, s);
    case DType::f64: break;
  }
  throw Error(Code::unsupported, "x: f64 is supported on the CPU only");
}

}  // namespace rmsnorm::detail
