#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_check.h"
#include "normal_fill.h"

namespace rmsnorm::bench {
namespace {

template <class T>
__device__ T from_float(float v);
template <>
__device__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <class T>
__global__ void fill_normal_kernel(T* out, long long n, unsigned long long seed, float mean, float stddev) {
  for (long long i = blockIdx.x * 256LL + threadIdx.x; i < n; i += 256LL * gridDim.x)
    out[i] = from_float<T>(normal_at(seed, static_cast<std::uint64_t>(i), mean, stddev));
}

}  // namespace

void fill_normal_device(void* data, DType t, std::int64_t n, std::uint64_t seed, float mean, float stddev,
                        Stream stream) {
  if (n <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const unsigned grid = grid_for(n);
  switch (t) {
    case DType::f32:
      fill_normal_kernel<<<grid, 256, 0, s>>>(static_cast<float*>(data), n, seed, mean, stddev);
      break;
    case DType::f16:
      fill_normal_kernel<<<grid, 256, 0, s>>>(static_cast<__half*>(data), n, seed, mean, stddev);
      break;
    case DType::bf16:
      fill_normal_kernel<<<grid, 256, 0, s>>>(static_cast<__nv_bfloat16*>(data), n, seed, mean, stddev);
      break;
    case DType::f64:
    case DType::f8e4m3:
    case DType::i8:
      throw Error(Code::unsupported, "fill_normal_device: f32, f16 or bf16 only");
  }
  check_launch("fill_normal_kernel");
}

}  // namespace rmsnorm::bench
