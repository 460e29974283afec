// Device memory for the tests, through the CUDA runtime (CUDA builds only).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "support.h"

namespace rmsnorm::testing {
namespace {
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace

std::string cuda_unavailable_reason() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error so that later calls start clean
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
  }
  if (count == 0) return "cudaGetDeviceCount reports 0 devices";
  return {};
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) throw std::runtime_error("DeviceBuffer without a device: " + reason);
  check(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes), "cudaMalloc");
}

DeviceBuffer::~DeviceBuffer() { cudaFree(ptr_); }

void DeviceBuffer::upload(const void* src, std::size_t bytes, std::size_t offset) {
  check(cudaMemcpy(data() + offset, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
}

void DeviceBuffer::download(void* dst, std::size_t bytes, std::size_t offset) const {
  check(cudaMemcpy(dst, data() + offset, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

void DeviceBuffer::copy_within(std::size_t dst_offset, std::size_t src_offset, std::size_t bytes) {
  check(cudaMemcpy(data() + dst_offset, data() + src_offset, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
}

void DeviceBuffer::fill(unsigned char byte) { check(cudaMemset(ptr_, byte, bytes_), "cudaMemset"); }

void device_synchronize() { check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace rmsnorm::testing
