// The unfused baseline on the GPU: one simple kernel per PyTorch op (see unfused.h), with
// PyTorch's elementwise launch shape (256 threads, 4 elements per thread, unrolled) and
// every intermediate written to and re-read from device memory. It moves ~36 bytes per
// element for 16-bit inputs where the fused kernel moves 4; that is the point of fusing.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "cuda_check.h"
#include "unfused.h"

namespace rmsnorm::bench {
namespace {

__device__ inline float to_float(float v) { return v; }
__device__ inline float to_float(__half v) { return __half2float(v); }
__device__ inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ T from_float(float v);
template <>
__device__ inline float from_float<float>(float v) { return v; }
template <>
__device__ inline __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

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
  __device__ void operator()(long long i) const {
    out[i] = in[i] * per_row[static_cast<Index>(i) / cols];
  }
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
void launch_elementwise(const char* name, long long n, Op op, cudaStream_t stream) {
  if (n <= 0) return;
  const long long blocks = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  elementwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(n, op);
  check_launch(name);
}

// mean over the last dimension: RowsPerBlock rows per 256-thread block, so short rows
// (QK-norm) still give every thread work and long rows get a whole block each.
template <int RowsPerBlock>
__global__ void __launch_bounds__(kThreads) row_mean_kernel(const float* in, float* out,
                                                            long long rows, long long cols) {
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
      if (row < rows) out[row] = total / static_cast<float>(cols);
    }
  } else {
    if (lane == 0 && row < rows) out[row] = sum / static_cast<float>(cols);
  }
}

void launch_row_mean(const float* in, float* out, long long rows, long long cols,
                     cudaStream_t stream) {
  if (cols <= 1024) {
    constexpr int kRows = kThreads / 32;
    row_mean_kernel<kRows><<<static_cast<unsigned>((rows + kRows - 1) / kRows), kThreads, 0, stream>>>(
        in, out, rows, cols);
  } else {
    row_mean_kernel<1><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(in, out, rows, cols);
  }
  check_launch("row_mean_kernel");
}

template <class T, class Index>
void run(const UnfusedProblem& p, cudaStream_t s) {
  const long long m = p.rows, n = p.cols, mn = m * n;
  const UnfusedScratch t = carve_unfused_scratch(p.scratch, p.dtype, m, n);
  const T* x = static_cast<const T*>(p.x);
  const float* xf = reinterpret_cast<const float*>(x);  // f32: .float() is a no-op
  if constexpr (!std::is_same_v<T, float>) {
    launch_elementwise("cast_to_float_kernel", mn, CastToFloat<T>{x, t.xf}, s);
    xf = t.xf;
  }
  launch_elementwise("square_kernel", mn, Square{xf, t.sq}, s);
  launch_row_mean(t.sq, t.var, m, n, s);
  launch_elementwise("add_eps_kernel", m, AddScalar{t.var, t.var_eps, static_cast<float>(p.eps)}, s);
  launch_elementwise("rsqrt_kernel", m, Rsqrt{t.var_eps, t.rstd}, s);
  launch_elementwise("mul_rstd_kernel", mn, MulRowScalar<Index>{xf, t.rstd, t.h, static_cast<Index>(n)}, s);
  const T* hc = reinterpret_cast<const T*>(t.h);  // f32: .to(float32) is a no-op
  if constexpr (!std::is_same_v<T, float>) {
    launch_elementwise("cast_from_float_kernel", mn, CastFromFloat<T>{t.h, static_cast<T*>(t.h_cast)}, s);
    hc = static_cast<const T*>(t.h_cast);
  }
  launch_elementwise("mul_weight_kernel", mn,
                     MulWeight<T, Index>{static_cast<const T*>(p.weight), hc, static_cast<T*>(p.y),
                                         static_cast<Index>(n)},
                     s);
}

template <class T>
void run_indexed(const UnfusedProblem& p, cudaStream_t s) {
  const long long mn = p.rows * p.cols;
  if (mn <= static_cast<long long>(std::numeric_limits<unsigned>::max()))
    run<T, unsigned>(p, s);
  else
    run<T, unsigned long long>(p, s);
}

}  // namespace

void unfused_forward_cuda(const UnfusedProblem& p, Stream stream) {
  if (p.rows <= 0 || p.cols <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::f32: return run_indexed<float>(p, s);
    case DType::f16: return run_indexed<__half>(p, s);
    case DType::bf16: return run_indexed<__nv_bfloat16>(p, s);
    case DType::f64: break;
  }
  throw Error(Code::unsupported, "unfused_forward_cuda: dtype must be f32, f16 or bf16");
}

}  // namespace rmsnorm::bench
