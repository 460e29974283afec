// The unfused baseline on the GPU: one simple kernel per PyTorch op (see unfused.h), with
// PyTorch's elementwise launch shape (256 threads, 4 elements per thread, unrolled) and
// every intermediate written to and re-read from device memory. It moves ~36 bytes per
// element for 16-bit inputs where the fused kernel moves 4; that is the point of fusing.
#include <cstdint>
#include <type_traits>

#include "unfused.h"
#include "unfused_kernels.cuh"

namespace rmsnorm::bench {
namespace {

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
  launch_row_sum("row_mean_kernel", t.sq, t.var, m, n, static_cast<float>(n), s);
  launch_elementwise("add_eps_kernel", m, AddScalar{t.var, t.var_eps, static_cast<float>(p.eps)}, s);
  launch_elementwise("rsqrt_kernel", m, Rsqrt{t.var_eps, t.rstd}, s);
  launch_elementwise("mul_rstd_kernel", mn, MulRowScalar<Index>{xf, t.rstd, t.h, static_cast<Index>(n)}, s);
  const T* hc = reinterpret_cast<const T*>(t.h);  // f32: .to(float32) is a no-op
  if constexpr (!std::is_same_v<T, float>) {
    launch_elementwise("cast_from_float_kernel", mn, CastFromFloat<T>{t.h, static_cast<T*>(t.h_cast)}, s);
    hc = static_cast<const T*>(t.h_cast);
  }
  launch_elementwise(
      "mul_weight_kernel", mn,
      MulWeight<T, Index>{static_cast<const T*>(p.weight), hc, static_cast<T*>(p.y), static_cast<Index>(n)}, s);
}

}  // namespace

void unfused_forward_cuda(const UnfusedProblem& p, Stream stream) {
  if (p.rows <= 0 || p.cols <= 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  with_type_and_index(p.dtype, p.rows * p.cols, "unfused_forward_cuda",
                      [&](auto t, auto index) { run<decltype(t), decltype(index)>(p, s); });
}

}  // namespace rmsnorm::bench
