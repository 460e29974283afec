// Host-side CUDA runtime queries: device count and description, and the pointer-residency
// check of the argument validation. Kernels never call any of this.
#include <cuda_runtime.h>

#include <string>

#include "problem.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm {

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string describe_device(Device device) {
  if (device.kind == DeviceKind::cpu) return "CPU";
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, device.index);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return "CUDA device " + std::to_string(device.index) + " (unavailable: " + cudaGetErrorString(err) + ")";
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ", " +
         std::to_string(prop.multiProcessorCount) + " SMs, " + std::to_string(prop.l2CacheSize >> 20) + " MB L2)";
}

namespace detail {

void check_pointer_residency(const void* ptr, Device device, const char* what) {
  if (ptr == nullptr) return;
  cudaPointerAttributes attr{};
  const cudaError_t err = cudaPointerGetAttributes(&attr, ptr);
  if (err != cudaSuccess) {
    cudaGetLastError();
    // Without a usable CUDA device no pointer can be device memory.
    if (device.kind == DeviceKind::cpu) return;
    throw Error(Code::invalid_argument, std::string(what) + ": cannot query the pointer with the CUDA runtime (" +
                                            cudaGetErrorString(err) + "); expected memory of CUDA device " +
                                            std::to_string(device.index));
  }
  const bool device_memory = attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  if (device.kind == DeviceKind::cpu) {
    if (attr.type == cudaMemoryTypeDevice)
      throw Error(Code::invalid_argument, std::string(what) +
                                              ": a CUDA device pointer was given with Device::cpu "
                                              "(expected host memory)");
    return;
  }
  if (!device_memory)
    throw Error(Code::invalid_argument, std::string(what) + ": a host pointer was given with Device::cuda(" +
                                            std::to_string(device.index) + ") (expected device memory)");
  if (attr.type == cudaMemoryTypeDevice && attr.device != device.index)
    throw Error(Code::invalid_argument, std::string(what) + ": memory of CUDA device " + std::to_string(attr.device) +
                                            ", expected device " + std::to_string(device.index));
}

}  // namespace detail
}  // namespace rmsnorm
