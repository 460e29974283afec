#include "device.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#if defined(RMSNORM_CLI_HAVE_CUDA)
#include <cuda_runtime.h>
#endif

namespace rmsnorm::cli {
namespace {

#if defined(RMSNORM_CLI_HAVE_CUDA)
void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw Error(Code::cuda_error, what + ": " + cudaGetErrorString(e));
}
#endif

// Why there is no CUDA device to run on, for the "device:" line and error messages.
std::string why_no_cuda() {
  if (!built_with_cuda()) return "this build has no CUDA backend";
#if defined(RMSNORM_CLI_HAVE_CUDA)
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it: it is the answer, not a failure of ours
    return cudaGetErrorString(e);
  }
  if (n == 0) return "the CUDA runtime sees no device";
#endif
  return "cuda_device_count() is 0";
}

}  // namespace

RunDevice select_device(const DeviceChoice& choice) {
  using Kind = DeviceChoice::Kind;
  const bool have_cuda = built_with_cuda() && cuda_device_count() > 0;
  RunDevice r;
  if (choice.kind == Kind::cpu || (choice.kind == Kind::automatic && !have_cuda)) {
    r.device = Device::cpu();
    r.name = describe_device(r.device);
    r.line =
        "device: " + r.name + " (" +
        (choice.kind == Kind::cpu ? std::string("requested with --device cpu") : "no CUDA device: " + why_no_cuda()) +
        ")";
    return r;
  }
  if (!have_cuda) throw UsageError("--device cuda: no CUDA device (" + why_no_cuda() + ")");
  if (choice.ordinal >= cuda_device_count())
    throw UsageError("--device cuda:" + std::to_string(choice.ordinal) + ": only " +
                     std::to_string(cuda_device_count()) + " CUDA device(s) visible");
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cuda_check(cudaSetDevice(choice.ordinal), "cudaSetDevice");
#endif
  r.device = Device::cuda(choice.ordinal);
  r.name = describe_device(r.device);
  r.line = "device: " + r.name + " (CUDA)";
  return r;
}

DeviceBuffer::DeviceBuffer(Device device, std::size_t bytes) : device_(device), size_(bytes) {
  const std::size_t n = bytes ? bytes : 1;
  if (device.kind == DeviceKind::cpu) {
    // 64-byte alignment, like a fresh device allocation is (256), so that alignment-
    // dependent code paths see the same pointers on both devices where offsets allow.
    data_ = std::aligned_alloc(64, (n + 63) / 64 * 64);
    if (!data_) throw std::bad_alloc();
    return;
  }
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cuda_check(cudaMalloc(&data_, n), "cudaMalloc(" + std::to_string(n) + " bytes)");
#else
  throw Error(Code::unsupported, "DeviceBuffer: CUDA memory in a CPU-only build");
#endif
}

DeviceBuffer::~DeviceBuffer() {
  if (!data_) return;
  if (device_.kind == DeviceKind::cpu) {
    std::free(data_);
    return;
  }
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cudaFree(data_);  // an error here has nowhere to go; a sticky one resurfaces elsewhere
#endif
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : device_(o.device_), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    DeviceBuffer old(std::move(*this));
    device_ = o.device_;
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

void DeviceBuffer::upload(const void* host, std::size_t bytes) {
  if (bytes > size_) throw Error(Code::internal, "DeviceBuffer::upload: too many bytes");
  if (device_.kind == DeviceKind::cpu) {
    std::memcpy(data_, host, bytes);
    return;
  }
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cuda_check(cudaMemcpy(data_, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
#endif
}

void DeviceBuffer::download(void* host, std::size_t bytes) const {
  if (bytes > size_) throw Error(Code::internal, "DeviceBuffer::download: too many bytes");
  if (device_.kind == DeviceKind::cpu) {
    std::memcpy(host, data_, bytes);
    return;
  }
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cuda_check(cudaMemcpy(host, data_, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
#endif
}

void synchronize(Device device, const char* what) {
  if (device.kind == DeviceKind::cpu) return;
#if defined(RMSNORM_CLI_HAVE_CUDA)
  cuda_check(cudaDeviceSynchronize(), what);
  cuda_check(cudaGetLastError(), what);
#else
  (void)what;
#endif
}

}  // namespace rmsnorm::cli
