// Device code shared by the unfused baselines (unfused.cu, unfused_backward.cu): PyTorch's
// elementwise launch shape (256 threads, 4 elements per thread, unrolled), the ops as
// functors (one kernel instantiation per PyTorch op), and a row reduction.
//
// Everything is in an unnamed namespace: each .cu file gets its own kernels, so the two
// translation units share no device symbols (no relocatable device code needed).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>
#include <string>

#include "cuda_check.h"

namespace rmsnorm::bench {
namespace {

// Calls f(T{}, Index{}) with the CUDA element type of `dtype` and, as PyTorch does, 32-bit
// indices where `elements` fits them, 64-bit otherwise.
template <class F>
void with_type_and_index(DType dtype, long long elements, const char* who, F&& f) {
  const auto indexed = [&](auto t) {
    if (elements <= static_cast<long long>(std::numeric_limits<unsigned>::max()))
      f(t, 0u);
    else
      f(t, 0ull);
  };
  switch (dtype) {
    case DType::f32:
      return indexed(float{});
    case DType::f16:
      return indexed(__half{});
    case DType::bf16:
      return indexed(__nv_bfloat16{});
    case DType::f64:
    case DType::f8e4m3:
    case DType::i8:
      break;
  }
  throw Error(Code::unsupported, std::string(who) + ": dtype must be f32, f16 or bf16");
}

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) {
  return v;
}
template <>
__device__ inline __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

constexpr int kThreads = 256;
constexpr int kPerThread = 4;  // PyTorch's thread_work_size for elementwise kernels

// Elementwise ops as functors; each kernel instantiation is one PyTorch op.
template <class T>
struct CastToFloat {
  const T* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] = to_float(in[i]); }
};
struct Square {
  const float* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] = in[i] * in[i]; }
};
struct AddScalar {
  const float* in;
  float* out;
  float value;
  __device__ void operator()(long long i) const { out[i] = in[i] + value; }
};
struct Rsqrt {
  const float* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] = rsqrtf(in[i]); }
};
// Broadcast of a per-row value; Index is 32-bit whenever the tensor allows it, because a
// 64-bit division per element would make this memory-bound kernel compute-bound (PyTorch
// uses a precomputed fast divider for the same reason).
template <class Index>
struct MulRowScalar {
  const float* in;
  const float* per_row;
  float* out;
  Index cols;
  __device__ void operator()(long long i) const { out[i] = in[i] * per_row[static_cast<Index>(i) / cols]; }
};
template <class T>
struct CastFromFloat {
  const float* in;
  T* out;
  __device__ void operator()(long long i) const { out[i] = from_float<T>(in[i]); }
};
// w * h with w broadcast over rows: fp32 math, one rounding (PyTorch's opmath for 16-bit).
template <class T, class Index>
struct MulWeight {
  const T* w;
  const T* h;
  T* out;
  Index cols;
  __device__ void operator()(long long i) const {
    out[i] = from_float<T>(to_float(w[static_cast<Index>(i) % cols]) * to_float(h[i]));
  }
};

template <class Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(long long n, Op op) {
  const long long base = static_cast<long long>(blockIdx.x) * (kThreads * kPerThread) + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const long long i = base + static_cast<long long>(k) * kThreads;
    if (i < n) op(i);
  }
}

template <class Op>
inline void launch_elementwise(const char* name, long long n, Op op, cudaStream_t stream) {
  if (n <= 0) return;
  const long long blocks = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  elementwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(n, op);
  check_launch(name);
}

// Sum over the last dimension divided by `divisor` (cols: mean(-1); 1: sum(-1), exact):
// RowsPerBlock rows per 256-thread block, so short rows (QK-norm) still give every thread
// work and long rows get a whole block each.
template <int RowsPerBlock>
__global__ void __launch_bounds__(kThreads)
    row_sum_kernel(const float* in, float* out, long long rows, long long cols, float divisor) {
  constexpr int kLanes = kThreads / RowsPerBlock;  // threads per row: 32 or 256
  const int sub = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const long long row = static_cast<long long>(blockIdx.x) * RowsPerBlock + sub;
  float sum = 0.0f;
  if (row < rows) {
    const float* r = in + row * cols;
    for (long long j = lane; j < cols; j += kLanes) sum += r[j];
  }
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  if constexpr (kLanes > 32) {
    __shared__ float partial[kThreads / 32];
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
      if (row < rows) out[row] = total / divisor;
    }
  } else {
    if (lane == 0 && row < rows) out[row] = sum / divisor;
  }
}

inline void launch_row_sum(const char* name, const float* in, float* out, long long rows, long long cols, float divisor,
                           cudaStream_t stream) {
  if (rows <= 0) return;
  if (cols <= 1024) {
    constexpr int kRows = kThreads / 32;
    row_sum_kernel<kRows>
        <<<static_cast<unsigned>((rows + kRows - 1) / kRows), kThreads, 0, stream>>>(in, out, rows, cols, divisor);
  } else {
    row_sum_kernel<1><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(in, out, rows, cols, divisor);
  }
  check_launch(name);
}

}  // namespace
}  // namespace rmsnorm::bench
