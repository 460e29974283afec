// Device memory for the tests in a build without the CUDA backend: there is none, and
// cuda_unavailable_reason() says so, so the CUDA variants of the tests skip.
#include <stdexcept>
#include <string>

#include "support.h"

namespace rmsnorm::testing {

std::string cuda_unavailable_reason() { return "this build has no CUDA backend (RMSNORM_CUDA=OFF)"; }

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  throw std::logic_error("DeviceBuffer in a build without CUDA: " + cuda_unavailable_reason());
}
DeviceBuffer::~DeviceBuffer() = default;
void DeviceBuffer::upload(const void*, std::size_t, std::size_t) {}
void DeviceBuffer::download(void*, std::size_t, std::size_t) const {}
void DeviceBuffer::copy_within(std::size_t, std::size_t, std::size_t) {}
void DeviceBuffer::fill(unsigned char) {}
void device_synchronize() {}

}  // namespace rmsnorm::testing
