// Reports a failed kernel launch as rmsnorm::Error(Code::cuda_error) with the kernel's name,
// its configuration and the CUDA error string.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::detail::cuda {

inline void check_launch(const char* strategy, const char* kernel, const Plan& plan) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return;
  throw Error(Code::cuda_error,
              std::string(kernel) + " (" + strategy + ", " + std::to_string(plan.threads_per_row) +
                  " threads/row, " + std::to_string(plan.items_per_thread) + " items, vector " +
                  std::to_string(plan.vector_width) + ") failed to launch: " + cudaGetErrorName(err) +
                  ": " + cudaGetErrorString(err));
}

}  // namespace rmsnorm::detail::cuda
