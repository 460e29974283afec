// Error checking for the benchmark kernels: every launch is followed by cudaGetLastError,
// and a failure becomes rmsnorm::Error(Code::cuda_error) naming the kernel.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::bench {

inline void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(Code::cuda_error, std::string(kernel) + ": " + cudaGetErrorString(e));
}

// Enough blocks of 256 threads for a grid-stride loop over n elements: a few waves of the
// GPU's SMs is all a streaming kernel needs (capped so the grid size stays legal).
inline unsigned grid_for(long long n) {
  const long long blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535LL * 16 ? 65535LL * 16 : blocks));
}

}  // namespace rmsnorm::bench
