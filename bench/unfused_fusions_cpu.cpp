// The unfused baselines of the fused forms on the CPU (bench/unfused_fusions.h): one
// parallel loop per PyTorch op, each streaming whole tensors through memory.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "host_elements.h"
#include "unfused_fusions.h"

namespace rmsnorm::bench {

void unfused_add_forward_cpu(const UnfusedProblem& norm, const void* residual, void* residual_out) {
  const std::int64_t mn = norm.rows * norm.cols;
  const DType t = norm.dtype;
  // r_out = x + residual: PyTorch adds 16-bit tensors in fp32 and rounds once.
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i)
    store_float(residual_out, t, i, load_float(norm.x, t, i) + load_float(residual, t, i));
  UnfusedProblem p = norm;
  p.x = residual_out;
  unfused_forward_cpu(p);
}

std::size_t unfused_quant_scratch_bytes(std::int64_t rows, std::int64_t cols) {
  // yf and a (then t), fp32; amax and its quotient, at most one per element each
  return static_cast<std::size_t>(rows * cols) * 4 * 4;
}

void unfused_quant_forward_cpu(const UnfusedQuantProblem& p) {
  unfused_forward_cpu(p.norm);
  const std::int64_t m = p.norm.rows, n = p.norm.cols, mn = m * n;
  const DType t = p.norm.dtype;
  const float qmax = quant_max(p.qdtype);
  float* yf = static_cast<float*>(p.scratch);
  float* tq = yf + mn;
  float* amax = tq + mn;
  // yf = y.float()
  if (t != DType::f32) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) yf[i] = load_float(p.norm.y, t, i);
  } else {
    yf = static_cast<float*>(p.norm.y);
  }
  const std::int64_t g = p.kind == QuantScale::per_group ? p.group_size : n;
  const std::int64_t groups = m * (n / g);
  if (p.kind == QuantScale::static_tensor) {
    const float s = *p.static_scale;
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) tq[i] = yf[i] / s;
  } else {
    // a = yf.abs(); amax = a.amax(-1); s = amax / qmax; s = s.clamp(min=...); t = yf / s
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) tq[i] = std::fabs(yf[i]);
#pragma omp parallel for schedule(static)
    for (std::int64_t k = 0; k < groups; ++k) {
      float a = 0.0f;
      for (std::int64_t j = 0; j < g; ++j) a = std::max(a, tq[k * g + j]);
      amax[k] = a;
    }
    for (std::int64_t k = 0; k < groups; ++k) amax[groups + k] = amax[k] / qmax;
    const float min_scale = quant_min_scale(p.qdtype);
    for (std::int64_t k = 0; k < groups; ++k) p.scales[k] = std::max(amax[groups + k], min_scale);
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) tq[i] = yf[i] / p.scales[i / g];
  }
  if (p.qdtype == DType::i8) {  // torch.round: half to even
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < mn; ++i) tq[i] = std::nearbyint(tq[i]);
  }
  // t.clamp(-qmax, qmax), then .to(qdtype)
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) tq[i] = std::min(qmax, std::max(-qmax, tq[i]));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < mn; ++i) store_float(p.q, p.qdtype, i, tq[i]);
}

}  // namespace rmsnorm::bench
