// The unfused backward on the GPU: one simple kernel per op of unfused_backward.h, with
// PyTorch's elementwise launch shape and every intermediate written to and re-read from
// device memory. For 16-bit inputs it moves about 92 bytes per element (dy, xf and hc
// read, fp32 temporaries written and read back, dx written) where the fused backward
// moves 6 (x and dy read, dx written).
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "unfused_backward.h"
#include "unfused_kernels.cuh"

namespace rmsnorm::bench {
namespace {

// The backward's own elementwise ops (the forward's are in unfused_kernels.cuh).
template <class T>
struct MulSame {  // a * b of two tensors of the dtype: fp32 math, one rounding
  const T* a;
  const T* b;
  T* out;
  __device__ void operator()(long long i) const { out[i] = from_float<T>(to_float(a[i]) * to_float(b[i])); }
};
struct MulF32 {
  const float* a;
  const float* b;
  float* out;
  __device__ void operator()(long long i) const { out[i] = a[i] * b[i]; }
};
struct MulScalar {
  const float* in;
  float* out;
  float value;
  __device__ void operator()(long long i) const { out[i] = value * in[i]; }
};
struct Cube {  // pow(x, 3): PyTorch's pow kernel special-cases 3 as x * x * x
  const float* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] = in[i] * in[i] * in[i]; }
};
struct Copy {
  const float* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] = in[i]; }
};
struct AddInPlace {
  const float* in;
  float* out;
  __device__ void operator()(long long i) const { out[i] += in[i]; }
};
// A per-row value broadcast over the row (expand) times a scalar.
template <class Index>
struct ExpandMulScalar {
  const float* per_row;
  float* out;
  Index cols;
  float value;
  __device__ void operator()(long long i) const { out[i] = per_row[static_cast<Index>(i) / cols] * value; }
};

// dw = gw.sum(0) over a contiguous (rows, cols) tensor: as PyTorch's reduction over the
// outer dimension, consecutive threads take consecutive columns (coalesced rows) and the
// rows are split over blocks; each block writes fp32 partial sums of its chunk of rows for
// 32 columns (8 lanes of rows per column, added in shared memory).
constexpr int kColTile = 32, kRowLanes = kThreads / kColTile;

template <class T>
__global__ void __launch_bounds__(kThreads)
    column_sum_partial_kernel(const T* in, float* partial, long long rows, long long cols, long long rows_per_chunk) {
  const int c = threadIdx.x % kColTile, lane = threadIdx.x / kColTile;
  const long long col = static_cast<long long>(blockIdx.x) * kColTile + c;
  const long long begin = static_cast<long long>(blockIdx.y) * rows_per_chunk;
  const long long end = begin + rows_per_chunk < rows ? begin + rows_per_chunk : rows;
  float sum = 0.0f;
  if (col < cols)
    for (long long r = begin + lane; r < end; r += kRowLanes) sum += to_float(in[r * cols + col]);
  __shared__ float lanes[kRowLanes][kColTile + 1];
  lanes[lane][c] = sum;
  __syncthreads();
  if (lane == 0 && col < cols) {
    float total = 0.0f;
    for (int k = 0; k < kRowLanes; ++k) total += lanes[k][c];
    partial[static_cast<long long>(blockIdx.y) * cols + col] = total;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    column_sum_finalize_kernel(const float* partial, long long chunks, long long cols, T* out) {
  const long long col = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  if (col >= cols) return;
  float total = 0.0f;
  for (long long k = 0; k < chunks; ++k) total += partial[k * cols + col];
  out[col] = from_float<T>(total);
}

template <class T>
void launch_column_sum(const T* in, float* partial, long long rows, long long cols, T* out, cudaStream_t s) {
  const ColumnChunks cc = unfused_dw_chunks(rows, cols);
  const dim3 grid(static_cast<unsigned>((cols + kColTile - 1) / kColTile), static_cast<unsigned>(cc.chunks));
  column_sum_partial_kernel<T><<<grid, kThreads, 0, s>>>(in, partial, rows, cols, cc.rows_per_chunk);
  check_launch("column_sum_partial_kernel");
  column_sum_finalize_kernel<T>
      <<<static_cast<unsigned>((cols + kThreads - 1) / kThreads), kThreads, 0, s>>>(partial, cc.chunks, cols, out);
  check_launch("column_sum_finalize_kernel");
}

template <class T, class Index>
void run(const UnfusedBackwardProblem& p, cudaStream_t s) {
  constexpr bool kF32 = std::is_same_v<T, float>;
  const long long m = p.rows, n = p.cols, mn = m * n;
  const UnfusedBackwardScratch b = carve_unfused_backward_scratch(p.scratch, p.dtype, m, n);
  const Index cols = static_cast<Index>(n);
  const T* dy = static_cast<const T*>(p.dy);
  const T* w = static_cast<const T*>(p.weight);
  const T* hc = static_cast<const T*>(p.saved.h_cast);
  const float* xf = p.saved.xf;
  const float* rstd = p.saved.rstd;

  // MulBackward0 of y = w * hc, then dw = sum_to(w's shape)
  T* g_hc = kF32 ? reinterpret_cast<T*>(b.f0) : static_cast<T*>(b.g_hc);
  launch_elementwise("mul_grad_hc_kernel", mn, MulWeight<T, Index>{w, dy, g_hc, cols}, s);
  launch_elementwise("mul_grad_w_kernel", mn, MulSame<T>{dy, hc, static_cast<T*>(b.gw)}, s);
  launch_column_sum<T>(static_cast<const T*>(b.gw), b.dw_partial, m, n, static_cast<T*>(p.dw), s);
  // ToCopyBackward0 of hc = h.to(dtype)
  float* g_h = b.f0;
  if constexpr (!kF32) launch_elementwise("cast_grad_to_float_kernel", mn, CastToFloat<T>{g_hc, g_h}, s);
  // MulBackward0 of h = xf * rstd, then g_rstd = sum_to(rstd's shape)
  float* g_xf = kF32 ? static_cast<float*>(p.dx) : b.f1;
  launch_elementwise("mul_grad_xf_kernel", mn, MulRowScalar<Index>{g_h, rstd, g_xf, cols}, s);
  launch_elementwise("mul_grad_rstd_kernel", mn, MulF32{g_h, xf, b.f2}, s);
  launch_row_sum("sum_grad_rstd_kernel", b.f2, b.r0, m, n, 1.0f, s);
  // RsqrtBackward0: -0.5 * grad * result.pow(3)
  launch_elementwise("mul_scalar_kernel", m, MulScalar{b.r0, b.r1, -0.5f}, s);
  launch_elementwise("pow3_kernel", m, Cube{rstd, b.r2}, s);
  launch_elementwise("mul_kernel", m, MulF32{b.r1, b.r2, b.r3}, s);
  // MeanBackward1: grad.expand(M, N) / N (PyTorch's division by a scalar multiplies by
  // its reciprocal)
  launch_elementwise("mean_backward_kernel", mn, ExpandMulScalar<Index>{b.r3, b.f0, cols, 1.0f / static_cast<float>(n)},
                     s);
  // PowBackward0: grad * (2 * self.pow(1)); pow(1) is a copy
  launch_elementwise("pow1_copy_kernel", mn, Copy{xf, b.f2}, s);
  launch_elementwise("mul_scalar_kernel", mn, MulScalar{b.f2, b.f3, 2.0f}, s);
  launch_elementwise("mul_grad_pow_kernel", mn, MulF32{b.f0, b.f3, b.f2}, s);
  // the two gradients of xf, accumulated in place
  launch_elementwise("add_inplace_kernel", mn, AddInPlace{b.f2, g_xf}, s);
  // ToCopyBackward0 of xf = x.float()
  if constexpr (!kF32)
    launch_elementwise("cast_grad_to_dtype_kernel", mn, CastFromFloat<T>{g_xf, static_cast<T*>(p.dx)}, s);
}

}  // namespace

void unfused_backward_cuda(const UnfusedBackwardProblem& p, Stream stream) {
  if (p.rows <= 0 || p.cols <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  with_type_and_index(p.dtype, p.rows * p.cols, "unfused_backward_cuda",
                      [&](auto t, auto index) { run<decltype(t), decltype(index)>(p, s); });
}

UnfusedSaved unfused_save_for_backward_cuda(const UnfusedProblem& forward, void* saved, Stream stream) {
  unfused_forward_cuda(forward, stream);
  const auto s = static_cast<cudaStream_t>(stream);
  return unfused_save_for_backward(forward, saved, [s](void* dst, const void* src, std::size_t bytes) {
    const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s);
    if (e != cudaSuccess)
      throw Error(Code::cuda_error, std::string("unfused_save_for_backward_cuda: ") + cudaGetErrorString(e));
  });
}

}  // namespace rmsnorm::bench
