// Launch configurations of the register-resident forward kernel, shared by the planner
// (plain C++, testable without a GPU) and the CUDA dispatch that instantiates them.
//
// Capacity in 16-byte vectors per row = threads_per_row * items. The planner picks the
// first entry whose capacity holds the row. Why these values:
//  - small rows (QK-norm, head_dim 64..256) give each row a few lanes of a warp and put
//    many rows in a 128-thread block, so every lane issues a full 16-byte access and a
//    block still moves 2 KB per step;
//  - up to 4 vectors (64 bytes) per lane keeps four loads in flight per thread before the
//    reduction needs them, enough to cover HBM latency at full occupancy, while the raw
//    row costs 4 registers per vector (no spills at 1024 threads x 64 registers);
//  - beyond 4096 vectors (32768 16-bit elements) a row no longer fits the register file
//    of one block at full width: long_row streams it instead.
#pragma once

namespace rmsnorm::detail {

struct RegisterConfig {
  int threads_per_row;
  int items;  // vectors per lane
  int threads_per_block;
  constexpr int capacity() const { return threads_per_row * items; }
};

// Sub-warp / warp rows: threads_per_row <= 32, several rows per block.
inline constexpr RegisterConfig kWarpRowsConfigs[] = {
    {4, 1, 128}, {8, 1, 128}, {16, 1, 128}, {32, 1, 128}, {32, 2, 128}, {32, 4, 128},
};
// A row per block.
inline constexpr RegisterConfig kBlockRowConfigs[] = {
    {128, 2, 128}, {128, 4, 128}, {256, 4, 256}, {512, 4, 512}, {1024, 4, 1024},
};
inline constexpr int kNumWarpRowsConfigs = sizeof(kWarpRowsConfigs) / sizeof(RegisterConfig);
inline constexpr int kNumBlockRowConfigs = sizeof(kBlockRowConfigs) / sizeof(RegisterConfig);

// The streaming kernel: a row per block of this many threads (512 leaves 128 registers
// per thread for four unrolled 16-byte loads in flight; at 1024 threads it spilled).
inline constexpr int kLongRowThreads = 512;

}  // namespace rmsnorm::detail
