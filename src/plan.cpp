// The strategy choice: one small function of (cols, dtype, vector width). It never looks
// at the number of rows, so the reduction order of a row, and therefore its bits, are the
// same whether it is normalised alone (decode) or inside a batch (prefill).
#include <algorithm>
#include <cstdint>
#include <string>

#include "forward_configs.h"
#include "problem.h"

namespace rmsnorm::detail {
namespace {

bool aligned(const void* p, std::size_t bytes) {
  return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// 16-byte vectors need every row start 16-byte aligned, in x, y and the weight. Anything
// less falls back to scalar accesses (one element at a time), which are always correct.
int vector_width(const ForwardProblem& p) {
  const int full = static_cast<int>(16 / dtype_size(p.x_dtype));
  const auto ok = [&](const void* ptr, DType t, std::int64_t row_stride, std::int64_t batch_stride) {
    const std::size_t chunk = std::min<std::size_t>(16, full * dtype_size(t));
    return aligned(ptr, chunk) && row_stride % full == 0 && batch_stride % full == 0;
  };
  if (p.cols % full != 0) return 1;
  if (!ok(p.x, p.x_dtype, p.x_row_stride, p.x_batch_stride)) return 1;
  if (!ok(p.y, p.y_dtype, p.y_row_stride, p.y_batch_stride)) return 1;
  if (p.weight && !ok(p.weight, p.w_dtype, 0, 0)) return 1;
  return full;
}

template <int N>
const RegisterConfig* first_fit(const RegisterConfig (&table)[N], std::int64_t vectors) {
  for (const RegisterConfig& c : table)
    if (vectors <= c.capacity()) return &c;
  return nullptr;
}

Plan from_config(Strategy s, int vw, const RegisterConfig& c) {
  return Plan{s, vw, c.threads_per_row, c.items, c.threads_per_block};
}

}  // namespace

Plan plan_problem(const ForwardProblem& p, Strategy requested) {
  const int vw = vector_width(p);
  const std::int64_t vectors = p.cols / vw;
  const Plan long_row{Strategy::long_row, vw, kLongRowThreads, 0, kLongRowThreads};
  const bool full = vw * dtype_size(p.x_dtype) == 16;
  const RegisterConfig* warp = full ? first_fit(kWarpRowsConfigs, vectors) : nullptr;
  const RegisterConfig* block = full ? first_fit(kBlockRowConfigs, vectors) : nullptr;
  const auto refuse = [&](const char* name, int cap) {
    std::string why = full ? "a row of " + std::to_string(p.cols) + " elements (" + std::to_string(vectors) +
                                 " vectors) exceeds its " + std::to_string(cap) + "-vector capacity"
                           : "it needs 16-byte aligned rows (cols, strides and pointers multiples of " +
                                 std::to_string(16 / dtype_size(p.x_dtype)) + " elements)";
    throw Error(Code::unsupported, std::string("strategy: ") + name + " cannot serve this view: " + why);
  };
  switch (requested) {
    case Strategy::warp_rows:
      if (!warp) refuse("warp_rows", kWarpRowsConfigs[kNumWarpRowsConfigs - 1].capacity());
      return from_config(Strategy::warp_rows, vw, *warp);
    case Strategy::block_row:
      if (!block) refuse("block_row", kBlockRowConfigs[kNumBlockRowConfigs - 1].capacity());
      return from_config(Strategy::block_row, vw, *block);
    case Strategy::long_row:
      return long_row;
    case Strategy::automatic:
      break;
  }
  if (warp) return from_config(Strategy::warp_rows, vw, *warp);
  if (block) return from_config(Strategy::block_row, vw, *block);
  return long_row;
}

}  // namespace rmsnorm::detail
