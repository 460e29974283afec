// The device a command runs on (--device) and memory on it. device.cpp is the only C++
// file of the CLI that calls the CUDA runtime (bench_cuda.cu aside); in a CPU-only build
// the same calls work on host memory, so `check` runs unchanged on either device.
#pragma once

#include <cstddef>
#include <string>

#include "options.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

struct RunDevice {
  Device device;
  std::string name;  // describe_device(device)
  std::string line;  // "device: NVIDIA H100 ... (CUDA)" / "device: CPU (no CUDA device: ...)"
  bool is_cuda() const { return device.kind == DeviceKind::cuda; }
};

// Resolves --device and makes a CUDA device current. Throws UsageError when CUDA was asked
// for and is not available (the message says why).
RunDevice select_device(const DeviceChoice& choice);

// A buffer on `device`: cudaMalloc'd for CUDA, plain heap memory for the CPU.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device device, std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return data_; }
  std::size_t size() const { return size_; }
  // Synchronous copies of `bytes` bytes between host memory and this buffer.
  void upload(const void* host, std::size_t bytes);
  void download(void* host, std::size_t bytes) const;

 private:
  Device device_{};
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Waits for the device's work and reports an asynchronous CUDA error as
// Error(Code::cuda_error) naming `what`. A no-op on the CPU.
void synchronize(Device device, const char* what);

}  // namespace rmsnorm::cli
