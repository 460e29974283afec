// Reports a failed kernel launch as rmsnorm::Error(Code::cuda_error) with the kernel's name,
// its configuration and the CUDA error string.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "kernel_configs.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail::cuda {

inline void check_launch(const char* strategy, const char* kernel, const Plan& plan) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return;
  throw Error(Code::cuda_error, std::string(kernel) + " (" + strategy + ", " + std::to_string(plan.threads_per_row) +
                                    " threads/row, " + std::to_string(plan.items_per_thread) + " items, vector " +
                                    std::to_string(plan.vector_width) + ") failed to launch: " + cudaGetErrorName(err) +
                                    ": " + cudaGetErrorString(err));
}

// Launches `kernel` on a 1-D grid of 1-D clusters of `cluster` blocks (sm_90).
template <class Args>
void launch_cluster(void (*kernel)(Args), unsigned grid, int block, int cluster, cudaStream_t stream, const Args& args,
                    const char* name, const Plan& plan) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(static_cast<unsigned>(block));
  config.stream = stream;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = static_cast<unsigned>(cluster);
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, args);
  if (err != cudaSuccess) {
    cudaGetLastError();
    throw Error(Code::cuda_error, std::string(name) + " (cluster_row, " + std::to_string(cluster) +
                                      " blocks a cluster) failed to launch: " + cudaGetErrorName(err) + ": " +
                                      cudaGetErrorString(err));
  }
  check_launch(strategy_name(plan.strategy), name, plan);
}

// Blocks of `block` threads that fill every SM with `threads_per_sm` threads each.
inline std::int64_t filling_blocks(int block, int sm_count, int threads_per_sm) {
  return static_cast<std::int64_t>(sm_count) * std::max(threads_per_sm / block, 1);
}

// Clusters of the persistent cluster grids: twice what the kernels' launch bounds keep
// resident (2048 threads an SM), and no more than there are rows. Measured on the H100
// (bf16, 2026-11-25): sized to the resident count alone, the backward lost 20 % (8192 x
// 32768: 1.47 against 1.82 TB/s) and the forward 16 % (2048 x 131072: 2.05 against 2.44) -
// clusters must fit within one GPC, so fewer than that are resident at once and the rest
// ran their whole share of rows as a second wave; a forward cluster a row (no loop) moved
// 2.64 / 2.45 / 2.24 TB/s on rows of 65536 / 131072 / 262144, against 2.85 / 2.44 / 2.31.
inline std::int64_t cluster_count(std::int64_t rows, int block, int cluster, int sm_count) {
  const std::int64_t fill = filling_blocks(block, sm_count, kMaxThreadsPerSm) / cluster;
  return std::min(rows, std::max<std::int64_t>(fill, 1));
}

}  // namespace rmsnorm::detail::cuda
