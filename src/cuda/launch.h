// Kernel launches: one launcher for every kernel, which reports a failed launch as
// rmsnorm::Error(Code::cuda_error) with the kernel's name, its configuration and the CUDA
// error string; and the grid sizes of the persistent kernels.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kernel_configs.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail::cuda {

// The shape of a launch: a grid of blocks, optionally grouped in 1-D clusters (sm_90).
struct LaunchShape {
  dim3 grid;
  dim3 block;
  int cluster = 0;               // blocks per cluster; 0: not a cluster launch
  std::size_t shared_bytes = 0;  // dynamic shared memory per block
};

// What a failed launch reports: the kernel, its configuration and the runtime's words.
inline std::string describe_launch(const char* kernel, const LaunchShape& shape, const Plan* plan) {
  std::string s = std::string(kernel) + " (";
  if (plan)
    s += std::string(strategy_name(plan->strategy)) + ", " + std::to_string(plan->threads_per_row) + " threads/row, " +
         std::to_string(plan->items_per_thread) + " items, vector " + std::to_string(plan->vector_width) +
         (plan->load_width == plan->vector_width ? ", " : " loaded an element at a time, ");
  s += std::to_string(shape.grid.x) + " blocks of " + std::to_string(shape.block.x * shape.block.y) + " threads";
  if (shape.cluster > 0) s += ", " + std::to_string(shape.cluster) + " blocks a cluster";
  if (shape.shared_bytes > 0) s += ", " + std::to_string(shape.shared_bytes) + " bytes of dynamic shared memory";
  return s + ")";
}

// Where kernels go: the stream, and whether they are launched as programmatic dependents
// (Params::pdl on an sm_90 device): scheduled before the previous kernel in the stream has
// finished, they wait for it in begin_dependent_grid (common.cuh).
struct Queue {
  cudaStream_t stream = nullptr;
  bool dependent = false;
};

// Lets `kernel` use `bytes` of dynamic shared memory a block on the current device: beyond
// the default 48 KB, counted with the kernel's static shared memory, it must be allowed
// (on the H200, 48 KB of group maxima beside LongRowImpl's own reduction buffers failed to
// launch, cudaErrorInvalidValue, until they were). The allowance is an attribute of the
// kernel (one value per kernel and device, not one per size): setting it for a smaller
// size lowers it again, and a later launch with more shared memory then fails. So the
// largest size allowed so far is kept per (device, kernel), the attribute is only ever
// raised, and the runtime call stays off the launch path once a kernel's largest size has
// been seen. Kernels without dynamic shared memory never come here; those with some pay an
// uncontended lock and a map lookup a launch (whether the kernel's static shared memory
// leaves room is itself a per-kernel fact to look up), beside the launch's microseconds;
// graph replays pay nothing.
template <class... KernelArgs>
cudaError_t allow_shared_bytes(void (*kernel)(KernelArgs...), std::size_t bytes) {
  if (bytes == 0) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, std::size_t> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  std::size_t& largest = allowed[std::make_pair(device, reinterpret_cast<const void*>(kernel))];
  if (bytes <= largest) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) largest = bytes;
  return err;
}

// Lets `kernel` run clusters of `blocks` blocks: beyond the portable kMaxClusterSize the
// kernel must allow non-portable sizes (sm_90: up to 16), once per device and kernel.
template <class... KernelArgs>
cudaError_t allow_cluster_blocks(void (*kernel)(KernelArgs...), int blocks) {
  if (blocks <= kMaxClusterSize) return cudaSuccess;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, bool> allowed;
  const std::lock_guard<std::mutex> lock(mutex);
  bool& done = allowed[std::make_pair(device, reinterpret_cast<const void*>(kernel))];
  if (done) return cudaSuccess;
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  if (err == cudaSuccess) done = true;
  return err;
}

// Calls f with whether the plan loads whole chunks (Plan::load_width) as a compile-time
// constant: every kernel has an aligned and an unaligned instantiation (load_chunk), each
// compiled in a translation unit of its own (src/CMakeLists.txt).
template <class F>
decltype(auto) with_alignment(const Plan& plan, F&& f) {
  if (plan.load_width == plan.vector_width) return f(std::true_type{});
  return f(std::false_type{});
}

// Launches every kernel of the library.
template <class... KernelArgs, class... Args>
void launch_kernel(void (*kernel)(KernelArgs...), const LaunchShape& shape, const Queue& queue, const char* name,
                   const Plan* plan, const Args&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = shape.grid;
  config.blockDim = shape.block;
  config.stream = queue.stream;
  config.dynamicSmemBytes = shape.shared_bytes;
  cudaError_t err = allow_shared_bytes(kernel, shape.shared_bytes);
  if (err == cudaSuccess) err = allow_cluster_blocks(kernel, shape.cluster);
  cudaLaunchAttribute attributes[2]{};
  unsigned n = 0;
  if (shape.cluster > 0) {
    attributes[n].id = cudaLaunchAttributeClusterDimension;
    attributes[n].val.clusterDim.x = static_cast<unsigned>(shape.cluster);
    attributes[n].val.clusterDim.y = 1;
    attributes[n].val.clusterDim.z = 1;
    ++n;
  }
  if (queue.dependent) {
    attributes[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  config.attrs = attributes;
  config.numAttrs = n;
  if (err == cudaSuccess) err = cudaLaunchKernelEx(&config, kernel, args...);
  // A launch error is returned here; one the runtime defers is read back (and cleared) next.
  const cudaError_t last = cudaGetLastError();
  if (err == cudaSuccess) err = last;
  if (err != cudaSuccess)
    throw Error(Code::cuda_error, describe_launch(name, shape, plan) + " failed to launch: " + cudaGetErrorName(err) +
                                      ": " + cudaGetErrorString(err));
}

// Blocks of `block` threads that fill every SM with `threads_per_sm` threads each.
inline std::int64_t filling_blocks(int block, int sm_count, int threads_per_sm) {
  return static_cast<std::int64_t>(sm_count) * std::max(threads_per_sm / block, 1);
}

// Clusters of `shape` (its block, cluster size and dynamic shared memory) that the current
// device holds at once, as the occupancy calculator counts them, or 0 when it cannot say.
// A cluster's blocks must share a GPC, so this is less than SMs / cluster size: on the
// H100 (132 SMs), 30 clusters of four blocks of one block an SM, not 33. Cached: it costs a
// driver query and never changes while the process runs.
template <class... KernelArgs>
int resident_clusters(void (*kernel)(KernelArgs...), const LaunchShape& shape) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  const auto key =
      std::make_tuple(device, reinterpret_cast<const void*>(kernel), shape.block.x, shape.cluster, shape.shared_bytes);
  static std::mutex mutex;
  static std::map<decltype(key), int> cache;
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = cache.find(key);
  if (found != cache.end()) return found->second;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(shape.cluster));
  config.blockDim = shape.block;
  config.dynamicSmemBytes = shape.shared_bytes;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim.x = static_cast<unsigned>(shape.cluster);
  cluster.val.clusterDim.y = 1;
  cluster.val.clusterDim.z = 1;
  config.attrs = &cluster;
  config.numAttrs = 1;
  int clusters = 0;
  if (allow_shared_bytes(kernel, shape.shared_bytes) != cudaSuccess ||
      allow_cluster_blocks(kernel, shape.cluster) != cudaSuccess ||
      cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess)
    clusters = 0;
  cudaGetLastError();  // a failed query is not the caller's error: it falls back
  cache.emplace(key, clusters);
  return clusters;
}

// Clusters of the persistent cluster grids when resident_clusters cannot say (the
// forward's is twice the resident clusters otherwise): SMs x 2048 threads / block / cluster
// size, four times what one-block-an-SM kernels keep resident, and no more than there are
// rows. Measured on the
// H100 (bf16, 2026-11-25): sized to SMs / cluster size (more than fit at once: clusters
// must share a GPC) the rest ran their whole share of rows as a second wave, and the
// forward lost 16 % (2048 x 131072: 2.05 against 2.44 TB/s); a forward cluster a row (no
// loop) moved 2.64 / 2.45 / 2.24 TB/s on rows of 65536 / 131072 / 262144, against 2.85 /
// 2.44 / 2.31.
inline std::int64_t cluster_count(std::int64_t rows, int block, int cluster, int sm_count) {
  const std::int64_t fill = filling_blocks(block, sm_count, kMaxThreadsPerSm) / cluster;
  return std::min(rows, std::max<std::int64_t>(fill, 1));
}

}  // namespace rmsnorm::detail::cuda
