#include <cstdint>

#include "unfused.h"

namespace rmsnorm::bench {
namespace {

// 256 bytes: what cudaMalloc guarantees, so every intermediate starts as aligned as a
// fresh PyTorch tensor would.
constexpr std::size_t kAlign = 256;
std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Calls `take(bytes)` once per intermediate, in layout order.
template <class F>
void layout(DType dtype, std::int64_t rows, std::int64_t cols, F take) {
  const std::size_t mn = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  const std::size_t m = static_cast<std::size_t>(rows);
  const bool f32 = dtype == DType::f32;
  take(f32 ? 0 : mn * 4);                  // xf
  take(mn * 4);                            // sq
  take(m * 4);                             // var
  take(m * 4);                             // var_eps
  take(m * 4);                             // rstd
  take(mn * 4);                            // h
  take(f32 ? 0 : mn * dtype_size(dtype));  // h_cast
}

}  // namespace

int unfused_op_count(DType dtype) { return dtype == DType::f32 ? 6 : 8; }

std::size_t unfused_scratch_bytes(DType dtype, std::int64_t rows, std::int64_t cols) {
  std::size_t total = 0;
  layout(dtype, rows, cols, [&](std::size_t b) { total += round_up(b); });
  return total;
}

UnfusedScratch carve_unfused_scratch(void* scratch, DType dtype, std::int64_t rows, std::int64_t cols) {
  void* parts[7];
  int k = 0;
  auto* at = static_cast<unsigned char*>(scratch);
  layout(dtype, rows, cols, [&](std::size_t b) {
    parts[k++] = b ? at : nullptr;
    at += round_up(b);
  });
  return UnfusedScratch{static_cast<float*>(parts[0]),
                        static_cast<float*>(parts[1]),
                        static_cast<float*>(parts[2]),
                        static_cast<float*>(parts[3]),
                        static_cast<float*>(parts[4]),
                        static_cast<float*>(parts[5]),
                        parts[6]};
}

}  // namespace rmsnorm::bench
