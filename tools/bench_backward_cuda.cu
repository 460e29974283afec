// CUDA timing of the backward, following docs/performance.md as the forward's
// (bench_cuda.cu): inputs generated on the device, every implementation checked against
// the fp64 oracle before it is timed, buffer sets rotated so that the working set is >= 4x
// L2, back-to-back calls captured in one CUDA graph, replays timed with CUDA events, median
// (cuda_timing.cuh).
//
// A buffer set is laid out as BackwardSetLayout (bench.h) says; the copy ceiling is one
// cudaMemcpyAsync inside it.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "bench.h"
#include "cuda_timing.cuh"
#include "forced_config.h"
#include "normal_fill.h"
#include "problem.h"
#include "table.h"
#include "unfused_backward.h"

namespace rmsnorm::cli {
namespace {

std::vector<unsigned char> download(const void* p, std::size_t bytes) {
  std::vector<unsigned char> out(bytes);
  ck(cudaMemcpy(out.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (to the host)");
  return out;
}

}  // namespace

ShapeResult bench_backward_shape_cuda(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const DType t = ctx.dtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const BackwardSetLayout layout(t, m, n);
  const std::size_t buf = layout.matrix, pitch = layout.pitch, set_bytes = layout.bytes, copy_bytes = layout.copy;
  const std::size_t saved_bytes = layout.saved, scratch_bytes = layout.scratch,
                    forward_scratch_bytes = layout.forward_scratch;
  const Device dev = ctx.device.device;
  Params params;
  params.strategy = ctx.strategy;
  params.pdl = ctx.pdl;
  const std::size_t ws_bytes = backward_workspace_size(TensorView::matrix(nullptr, t, dev, m, n),
                                                       TensorView::vector(nullptr, t, dev, n), params);

  cudaDeviceProp prop{};
  ck(cudaGetDeviceProperties(&prop, dev.index), "cudaGetDeviceProperties");
  std::size_t free_bytes = 0, total_bytes = 0;
  ck(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");

  // Sets so that one pass over them moves >= 4x L2 by the fused call's bytes (3*M*N*s),
  // each with its own copy of the unfused baseline's saved tensors; within 80% of free
  // memory (less the shared buffers and 256 MiB of headroom) and the graph size.
  const std::size_t l2 = static_cast<std::size_t>(std::max(prop.l2CacheSize, 1));
  const std::size_t want = (4 * l2 + 3 * buf - 1) / (3 * buf);
  const std::size_t shared = scratch_bytes + forward_scratch_bytes + ws_bytes + 2 * row_bytes;
  const double usable =
      0.8 * static_cast<double>(free_bytes) - static_cast<double>(shared) - static_cast<double>(256u << 20);
  const double per_set = static_cast<double>(set_bytes + saved_bytes);
  if (usable < per_set)
    throw Error(Code::unsupported, format("needs %.2f GiB of device memory, %.2f GiB free",
                                          (per_set + shared) / (1 << 30), free_bytes / double(1 << 30)));
  std::int64_t sets = static_cast<std::int64_t>(std::min<double>(static_cast<double>(want), usable / per_set));
  sets = std::max<std::int64_t>(1, std::min(sets, kMaxGraphNodes));
  if (static_cast<std::size_t>(sets) < want)
    result.notes.push_back(
        format("%lld sets = %.0f MB working set (< 4x L2)", static_cast<long long>(sets), sets * 3.0 * buf / 1e6));

  StreamOwner stream;
  DeviceMemory sets_mem(sets * set_bytes), saved_mem(sets * saved_bytes), w(row_bytes), dw(row_bytes), ws(ws_bytes),
      scratch(scratch_bytes);
  const auto set_of = [&](std::int64_t i) { return sets_mem.get() + static_cast<std::size_t>(i % sets) * set_bytes; };
  const auto x_of = [&](std::int64_t i) { return set_of(i); };
  const auto dy_of = [&](std::int64_t i) { return set_of(i) + pitch; };
  const auto dx_of = [&](std::int64_t i) { return set_of(i) + 2 * pitch; };
  const auto rstd_of = [&](std::int64_t i) { return reinterpret_cast<float*>(set_of(i) + 3 * pitch); };
  const auto matrix = [&](unsigned char* p) { return TensorView::matrix(p, t, dev, m, n); };
  const TensorView wv = TensorView::vector(w.get(), t, dev, n), dwv = TensorView::vector(dw.get(), t, dev, n);

  // Inputs: every set filled with random normals (x and dy of each set distinct; the dx
  // and rstd parts are overwritten below). The saved rstd comes from a forward run on each
  // set (automatic strategy, eps as the backward's), the unfused baseline's saved tensors from
  // its own forward.
  bench::fill_normal_device(sets_mem.get(), t, static_cast<std::int64_t>(sets * set_bytes / s), ctx.seed, 0.0f, 1.0f,
                            stream.s);
  bench::fill_normal_device(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f, stream.s);
  std::vector<bench::UnfusedSaved> saved(static_cast<std::size_t>(sets));
  {
    DeviceMemory forward_scratch(forward_scratch_bytes);
    for (std::int64_t i = 0; i < sets; ++i) {
      forward(matrix(x_of(i)), wv, matrix(dx_of(i)), Params{}, TensorView::vector(rstd_of(i), DType::f32, dev, m),
              stream.s);
      saved[static_cast<std::size_t>(i)] = bench::unfused_save_for_backward_cuda(
          {t, m, n, params.eps, x_of(i), w.get(), dx_of(i), forward_scratch.get()},
          saved_mem.get() + static_cast<std::size_t>(i) * saved_bytes, stream.s);
    }
    ck(cudaStreamSynchronize(stream.s), "making the inputs");
  }

  // --config: the library's own validation, then its dispatch with the given plan.
  std::optional<Plan> forced;
  // --leave-out: the fused call without dw and/or without the saved rstd.
  const auto rstd_view = [&](std::int64_t i) -> std::optional<TensorView> {
    if (ctx.leave_out_rstd) return std::nullopt;
    return TensorView::vector(rstd_of(i), DType::f32, dev, m);
  };
  const std::optional<TensorView> dw_out = ctx.leave_out_dw ? std::nullopt : std::optional<TensorView>(dwv);
  const Enqueue fused = [&](std::int64_t i, cudaStream_t st) {
    const std::optional<TensorView> rstd = rstd_view(i);
    if (!forced) {
      backward(matrix(dy_of(i)), matrix(x_of(i)), wv, rstd, matrix(dx_of(i)), dw_out, params, ws.get(), ws_bytes, st);
      return;
    }
    detail::BackwardProblem p =
        detail::validate_backward(matrix(dy_of(i)), matrix(x_of(i)), wv, rstd, matrix(dx_of(i)), dw_out, params);
    p.workspace = ws.get();
    p.workspace_bytes = ws_bytes;
    detail::cuda_backward(p, *forced, dev.index, st);
  };
  const Enqueue unfused = [&](std::int64_t i, cudaStream_t st) {
    bench::unfused_backward_cuda(
        {t, m, n, saved[static_cast<std::size_t>(i % sets)], w.get(), dy_of(i), dx_of(i), dw.get(), scratch.get()}, st);
  };
  const Enqueue copy = [&](std::int64_t i, cudaStream_t st) {
    ck(cudaMemcpyAsync(dx_of(i) + buf - copy_bytes, x_of(i), copy_bytes, cudaMemcpyDeviceToDevice, st),
       "cudaMemcpyAsync (copy)");
  };

  // Check on set 0 before timing: dx and dw poisoned (NaN), one call, dx on the checked
  // rows and dw against the oracle (dw over all rows: x and dy come to the host whole).
  const BackwardExpected expected = [&] {
    const std::vector<unsigned char> x_host = download(x_of(0), buf), dy_host = download(dy_of(0), buf),
                                     w_host = download(w.get(), row_bytes);
    return backward_expected(x_host.data(), dy_host.data(), w_host.data(), t, m, n, params);
  }();
  const auto check = [&](const char* impl, const Enqueue& run, int eager_roundings) {
    ck(cudaMemsetAsync(dx_of(0), 0xFF, buf, stream.s), "cudaMemsetAsync");
    ck(cudaMemsetAsync(dw.get(), 0xFF, row_bytes, stream.s), "cudaMemsetAsync");
    run(0, stream.s);
    ck(cudaStreamSynchronize(stream.s), impl);
    std::string bad;
    if (std::strcmp(impl, "copy") == 0) {
      // The ends of the copy (a wrong size or offset shows there).
      const std::size_t edge = std::min<std::size_t>(copy_bytes, 1 << 20);
      unsigned char* dst = dx_of(0) + buf - copy_bytes;
      if (download(dst, edge) != download(x_of(0), edge) ||
          download(dst + copy_bytes - edge, edge) != download(x_of(0) + copy_bytes - edge, edge))
        bad = "output differs from the input";
    } else {
      const std::vector<unsigned char> dx_rows = download_rows(dx_of(0), m, row_bytes);
      const std::vector<unsigned char> dw_host = download(dw.get(), row_bytes);
      const bool dw_written = std::strcmp(impl, "fused") != 0 || !ctx.leave_out_dw;
      bad = check_backward(expected, dx_rows.data(), dw_written ? dw_host.data() : nullptr, t, m, n, eager_roundings);
    }
    if (!bad.empty()) {
      result.failed = true;
      result.notes.push_back(std::string(impl) + " FAILED its oracle check: " + bad);
    }
    return bad.empty();
  };

  const auto measure = [&](const char* impl, const Enqueue& run, int ops_per_call) {
    time_implementation(result, ctx, shape, impl, run, ops_per_call, sets, stream.s);
  };

  bool fused_ok = false;
  std::string strategy = strategy_name(ctx.strategy);  // the backward's plan is not public
  try {
    if (ctx.config_threads) {
      const detail::BackwardProblem p = detail::validate_backward(matrix(dy_of(0)), matrix(x_of(0)), wv, rstd_view(0),
                                                                  matrix(dx_of(0)), dw_out, params);
      forced = forced_config(detail::plan_backward(p, Strategy::automatic, detail::cuda_cc_major(dev.index)),
                             ctx.config_threads, ctx.config_items, n, detail::kBackwardWarpRowsConfigs,
                             detail::kBackwardBlockRowConfigs, detail::kBackwardClusterRowConfigs,
                             ctx.strategy == Strategy::cluster_row, detail::cuda_cc_major(dev.index),
                             detail::kBackwardClusterPieces);
      strategy = forced_name(*forced);
    }
    fused_ok = check("fused", fused, 0);
  } catch (const Error& e) {
    if (e.code() != Code::unsupported) throw;
    result.notes.push_back(std::string("fused n/a: ") + e.what());  // a forced strategy that cannot serve N
  }
  if (fused_ok) {
    // The main kernel and dw's finalisation: two graph nodes per call (one without dw).
    measure("fused", fused, ctx.leave_out_dw ? 1 : 2);
    result.records.back().strategy =
        strategy + (ctx.leave_out_dw ? ", without dw" : "") + (ctx.leave_out_rstd ? ", rstd recomputed" : "");
  }
  if (check("unfused", unfused, 2)) measure("unfused", unfused, bench::unfused_backward_op_count(t));
  // Last: the copy overwrites the second half of dy.
  if (check("copy", copy, 0)) measure("copy", copy, 1);
  return result;
}

}  // namespace rmsnorm::cli
