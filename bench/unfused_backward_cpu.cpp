// The unfused backward on the CPU: one parallel loop per op of unfused_backward.h, each
// streaming whole tensors through memory, as eager PyTorch's CPU kernels do.
#include <algorithm>
#include <cstdint>

#include "host_elements.h"
#include "unfused_backward.h"

namespace rmsnorm::bench {

void unfused_backward_cpu(const UnfusedBackwardProblem& p) {
  const std::int64_t m = p.rows, n = p.cols, mn = m * n;
  if (m <= 0 || n <= 0) return;
  const DType t = p.dtype;
  const bool f32 = t == DType::f32;
  const UnfusedBackwardScratch s = carve_unfused_backward_scratch(p.scratch, t, m, n);
  const float* xf = p.saved.xf;
  const float* rstd = p.saved.rstd;

  // MulBackward0 of y = w * hc: both products rounded to the dtype
  void* g_hc = f32 ? static_cast<void*>(s.f0) : s.g_hc;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i)
    store_float(g_hc, t, i, load_float(p.dy, t, i) * load_float(p.weight, t, i % n));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i)
    store_float(s.gw, t, i, load_float(p.dy, t, i) * load_float(p.saved.h_cast, t, i));
  // dw = gw.sum(0): fp32 partial sums per chunk of rows, then their total in chunk order
  const ColumnChunks cc = unfused_dw_chunks(m, n);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < cc.chunks; ++c) {
    float* part = s.dw_partial + c * n;
    for (std::int64_t j = 0; j < n; ++j) part[j] = 0.0f;
    const std::int64_t end = std::min(m, (c + 1) * cc.rows_per_chunk);
    for (std::int64_t r = c * cc.rows_per_chunk; r < end; ++r)
      for (std::int64_t j = 0; j < n; ++j) part[j] += load_float(s.gw, t, r * n + j);
  }
#pragma omp parallel for schedule(static)
  for (std::int64_t j = 0; j < n; ++j) {
    float sum = 0.0f;
    for (std::int64_t c = 0; c < cc.chunks; ++c) sum += s.dw_partial[c * n + j];
    store_float(p.dw, t, j, sum);
  }
  // ToCopyBackward0 of hc = h.to(dtype)
  float* g_h = s.f0;
  if (!f32) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) g_h[i] = load_float(g_hc, t, i);
  }
  // MulBackward0 of h = xf * rstd
  float* g_xf = f32 ? static_cast<float*>(p.dx) : s.f1;
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) g_xf[i] = g_h[i] * rstd[i / n];
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.f2[i] = g_h[i] * xf[i];
    // sum_to rstd's shape: row sums, eight partial sums per row like a vectorised reduction
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < m; ++r) {
    const float* row = s.f2 + r * n;
    float part[8] = {};
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
      for (int k = 0; k < 8; ++k) part[k] += row[j + k];
    for (int k = 0; j < n; ++j, ++k) part[k] += row[j];
    s.r0[r] = (part[0] + part[4]) + (part[1] + part[5]) + (part[2] + part[6]) + (part[3] + part[7]);
  }
  // RsqrtBackward0: -0.5 * grad * result.pow(3), three ops over M
  for (std::int64_t r = 0; r < m; ++r) s.r1[r] = -0.5f * s.r0[r];
  for (std::int64_t r = 0; r < m; ++r) s.r2[r] = rstd[r] * rstd[r] * rstd[r];
  for (std::int64_t r = 0; r < m; ++r) s.r3[r] = s.r1[r] * s.r2[r];
  // MeanBackward1: grad.expand(M, N) / N (PyTorch multiplies by the reciprocal)
  const float inv_n = 1.0f / static_cast<float>(n);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.f0[i] = s.r3[i / n] * inv_n;
    // PowBackward0: grad * (2 * xf.pow(1)), pow(1) being a copy
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.f2[i] = xf[i];
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.f3[i] = 2.0f * s.f2[i];
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) s.f2[i] = s.f0[i] * s.f3[i];
    // the two gradients of xf, accumulated in place
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) g_xf[i] += s.f2[i];
  // ToCopyBackward0 of xf = x.float()
  if (!f32) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) store_float(p.dx, t, i, g_xf[i]);
  }
}

}  // namespace rmsnorm::bench
