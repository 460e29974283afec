// Test-only helpers on top of reference/harness.h: host tensors with guard space around
// them, device mirrors of host tensors (real with the CUDA runtime, absent without it),
// and a check that an error names the argument at fault.
//
// The device helpers are the only place the CPU-buildable test files touch CUDA: in a
// build without the CUDA backend they report why there is no device, and the CUDA
// variants of the tests skip with that reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

#include "harness.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm {
// How GoogleTest prints the library's enums in failure messages (found by ADL).
inline void PrintTo(Code c, std::ostream* os) { *os << code_name(c); }
inline void PrintTo(Strategy s, std::ostream* os) { *os << strategy_name(s); }
inline void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }
}  // namespace rmsnorm

namespace rmsnorm::testing {

using reference::HostTensor;

// ---------------------------------------------------------------------------------------
// Host tensors
// ---------------------------------------------------------------------------------------

// A poisoned host tensor (batch, rows, cols) whose first element sits `lead` elements past
// the start of the buffer, with `trail` poisoned elements after its span. The buffer starts
// 16-byte aligned, so lead = 1 gives a view misaligned for vector access; the guards let
// count_stray_writes catch writes just outside the span.
HostTensor make_tensor(DType dtype, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                       std::int64_t batch_stride = -1, std::int64_t row_stride = -1, std::int64_t lead = 0,
                       std::int64_t trail = 0);
// A poisoned contiguous vector of n elements with `lead` and `trail` guard elements.
HostTensor make_vector(DType dtype, std::int64_t n, std::int64_t lead = 0, std::int64_t trail = 0);

// True when every byte of the buffer is still the poison byte.
bool all_poisoned(const std::vector<unsigned char>& bytes);

// A stable seed for a test case, so that every case draws different data but every run
// of the suite draws the same.
std::uint64_t seed_of(std::initializer_list<std::int64_t> parts);

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

// True when `name` occurs in `message` as a word of its own (not inside a longer
// identifier): "x" is found in "x must not be null" and in "'x'", not in "max".
bool names_word(const std::string& message, const std::string& name);
// True when the message names one of `names`.
bool names_any(const std::string& message, const std::vector<std::string>& names);

// ---------------------------------------------------------------------------------------
// CUDA device memory (tests/device_memory_{cuda,none}.cpp)
// ---------------------------------------------------------------------------------------

// Empty when a CUDA device is usable by the tests; otherwise the reason it is not
// ("this build has no CUDA backend", "cudaGetDeviceCount: no CUDA-capable device ...").
std::string cuda_unavailable_reason();

// Device memory owned by a test. Constructing one without a usable device throws.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  unsigned char* data() const { return static_cast<unsigned char*>(ptr_); }
  std::size_t size() const { return bytes_; }
  void upload(const void* src, std::size_t bytes, std::size_t offset = 0);
  void download(void* dst, std::size_t bytes, std::size_t offset = 0) const;
  // Device-to-device copy inside this buffer.
  void copy_within(std::size_t dst_offset, std::size_t src_offset, std::size_t bytes);
  void fill(unsigned char byte);

 private:
  void* ptr_ = nullptr;
  std::size_t bytes_ = 0;
};

// Waits for all device work; throws on a CUDA error.
void device_synchronize();

// A device copy of a host tensor with the same layout and the same alignment (the device
// buffer is 256-byte aligned and the host one 16-byte aligned, so view.data keeps its
// offset modulo 16). view describes the device copy with Device::cuda(0).
struct DeviceMirror {
  explicit DeviceMirror(const HostTensor& host);
  void download_into(HostTensor& host) const;
  DeviceBuffer buffer;
  TensorView view;
};

}  // namespace rmsnorm::testing
