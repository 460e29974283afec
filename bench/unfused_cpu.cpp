// The unfused baseline on the CPU: one parallel loop per PyTorch op, each streaming whole
// tensors through memory, as eager PyTorch's CPU kernels do.
#include <cmath>
#include <cstdint>

#include "host_elements.h"
#include "unfused.h"

namespace rmsnorm::bench {

void unfused_forward_cpu(const UnfusedProblem& p) {
  const std::int64_t m = p.rows, n = p.cols, mn = m * n;
  const DType t = p.dtype;
  const UnfusedScratch s = carve_unfused_scratch(p.scratch, t, m, n);
  const float eps = static_cast<float>(p.eps);

  // xf = x.float()
  const float* xf = static_cast<const float*>(p.x);
  if (t != DType::f32) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) s.xf[i] = load_float(p.x, t, i);
    xf = s.xf;
  }
  // sq = xf.pow(2)
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.sq[i] = xf[i] * xf[i];
    // var = sq.mean(-1): eight partial sums per row, like a vectorised reduction
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < m; ++r) {
    const float* row = s.sq + r * n;
    float part[8] = {};
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      for (int k = 0; k < 8; ++k) part[k] += row[j + k];
    for (int k = 0; j < n; ++j, ++k) part[k] += row[j];
    s.var[r] =
        ((part[0] + part[4]) + (part[1] + part[5]) + (part[2] + part[6]) + (part[3] + part[7])) / static_cast<float>(n);
  }
  // var + eps, then rsqrt: two ops, two loops
  for (std::int64_t r = 0; r < m; ++r) s.var_eps[r] = s.var[r] + eps;
  for (std::int64_t r = 0; r < m; ++r) s.rstd[r] = 1.0f / std::sqrt(s.var_eps[r]);
    // h = xf * rstd
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.h[i] = xf[i] * s.rstd[i / n];
  // h.to(dtype)
  const void* hc = s.h;
  if (t != DType::f32) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) store_float(s.h_cast, t, i, s.h[i]);
    hc = s.h_cast;
  }
  // y = w * h: computed in fp32, rounded once to the dtype (PyTorch's opmath for 16-bit)
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) store_float(p.y, t, i, load_float(p.weight, t, i % n) * load_float(hc, t, i));
}

}  // namespace rmsnorm::bench
