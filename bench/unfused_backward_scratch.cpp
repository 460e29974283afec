// Memory layouts of the unfused backward (its scratch, the saved tensors) and the step
// that makes the saved tensors from an unfused forward: shared by the CPU and CUDA
// backends.
#include <algorithm>
#include <cstring>

#include "unfused_backward.h"

namespace rmsnorm::bench {
namespace {

// 256 bytes: what cudaMalloc guarantees, so every intermediate starts as aligned as a
// fresh PyTorch tensor would.
constexpr std::size_t kAlign = 256;
std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Points parts[k] at consecutive aligned slices of `base` of bytes[k] bytes each (nullptr
// for a zero-sized part).
template <std::size_t N>
void carve(void* base, const std::size_t (&bytes)[N], void* (&parts)[N]) {
  auto* at = static_cast<unsigned char*>(base);
  for (std::size_t k = 0; k < N; ++k) {
    parts[k] = bytes[k] ? at : nullptr;
    at += round_up(bytes[k]);
  }
}
template <std::size_t N>
std::size_t total(const std::size_t (&bytes)[N]) {
  std::size_t t = 0;
  for (std::size_t b : bytes) t += round_up(b);
  return t;
}

constexpr std::size_t kScratchParts = 11;
void scratch_sizes(DType dtype, std::int64_t rows, std::int64_t cols, std::size_t (&b)[kScratchParts]) {
  const std::size_t mn = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  const std::size_t m = static_cast<std::size_t>(rows);
  const bool f32 = dtype == DType::f32;
  const std::size_t es = dtype_size(dtype);
  const std::size_t partial =
      static_cast<std::size_t>(unfused_dw_chunks(rows, cols).chunks) * static_cast<std::size_t>(cols) * 4;
  const std::size_t sizes[kScratchParts] = {f32 ? 0 : mn * es,  // g_hc
                                            mn * es,            // gw
                                            mn * 4,             // f0
                                            f32 ? 0 : mn * 4,   // f1
                                            mn * 4,             // f2
                                            mn * 4,             // f3
                                            m * 4,
                                            m * 4,
                                            m * 4,
                                            m * 4,  // r0..r3
                                            partial};
  std::copy(sizes, sizes + kScratchParts, b);
}

constexpr std::size_t kSavedParts = 3;
void saved_sizes(DType dtype, std::int64_t rows, std::int64_t cols, std::size_t (&b)[kSavedParts]) {
  const std::size_t mn = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols);
  b[0] = dtype == DType::f32 ? 0 : mn * 4;    // xf (f32: x itself)
  b[1] = mn * dtype_size(dtype);              // h_cast (f32: h)
  b[2] = static_cast<std::size_t>(rows) * 4;  // rstd
}

}  // namespace

int unfused_backward_op_count(DType dtype) { return dtype == DType::f32 ? 15 : 17; }

ColumnChunks unfused_dw_chunks(std::int64_t rows, std::int64_t cols) {
  // About 2048 (32-column x chunk) tiles: enough blocks to fill a GPU for any width, at
  // least 64 rows per chunk so that a thread's loop amortises its start.
  const std::int64_t col_tiles = std::max<std::int64_t>(1, (cols + 31) / 32);
  const std::int64_t most = std::max<std::int64_t>(1, (rows + 63) / 64);
  const std::int64_t want = std::clamp<std::int64_t>(2048 / col_tiles, 1, most);
  ColumnChunks c;
  c.rows_per_chunk = std::max<std::int64_t>(1, (rows + want - 1) / want);
  c.chunks = std::max<std::int64_t>(1, (rows + c.rows_per_chunk - 1) / c.rows_per_chunk);
  return c;
}

std::size_t unfused_backward_scratch_bytes(DType dtype, std::int64_t rows, std::int64_t cols) {
  std::size_t b[kScratchParts];
  scratch_sizes(dtype, rows, cols, b);
  return total(b);
}

UnfusedBackwardScratch carve_unfused_backward_scratch(void* scratch, DType dtype, std::int64_t rows,
                                                      std::int64_t cols) {
  std::size_t b[kScratchParts];
  scratch_sizes(dtype, rows, cols, b);
  void* p[kScratchParts];
  carve(scratch, b, p);
  const auto f = [](void* v) { return static_cast<float*>(v); };
  return {p[0], p[1], f(p[2]), f(p[3]), f(p[4]), f(p[5]), f(p[6]), f(p[7]), f(p[8]), f(p[9]), f(p[10])};
}

std::size_t unfused_saved_bytes(DType dtype, std::int64_t rows, std::int64_t cols) {
  std::size_t b[kSavedParts];
  saved_sizes(dtype, rows, cols, b);
  return total(b);
}

UnfusedSaved unfused_save_for_backward(const UnfusedProblem& forward, void* saved,
                                       const std::function<void(void*, const void*, std::size_t)>& copy) {
  std::size_t b[kSavedParts];
  saved_sizes(forward.dtype, forward.rows, forward.cols, b);
  void* p[kSavedParts];
  carve(saved, b, p);
  const UnfusedScratch s = carve_unfused_scratch(forward.scratch, forward.dtype, forward.rows, forward.cols);
  const bool f32 = forward.dtype == DType::f32;
  if (!f32) copy(p[0], s.xf, b[0]);
  copy(p[1], f32 ? static_cast<const void*>(s.h) : s.h_cast, b[1]);
  copy(p[2], s.rstd, b[2]);
  return {f32 ? static_cast<const float*>(forward.x) : static_cast<const float*>(p[0]), p[1],
          static_cast<const float*>(p[2])};
}

UnfusedSaved unfused_save_for_backward_cpu(const UnfusedProblem& forward, void* saved) {
  unfused_forward_cpu(forward);
  return unfused_save_for_backward(forward, saved,
                                   [](void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); });
}

}  // namespace rmsnorm::bench
