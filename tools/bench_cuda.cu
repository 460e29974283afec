// CUDA timing of the forward, following docs/performance.md: inputs on the device, every
// implementation checked against the fp64 oracle before it is timed, x/y buffer sets
// rotated so that the working set is >= 4x L2 (no L2 reuse between calls), back-to-back
// calls captured in one CUDA graph (no launch overhead in the figure), replays timed with
// CUDA events, median (cuda_timing.cuh).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>

#include "bench.h"
#include "cuda_timing.cuh"
#include "forced_config.h"
#include "normal_fill.h"
#include "problem.h"
#include "table.h"
#include "unfused.h"

namespace rmsnorm::cli {

ShapeResult bench_shape_cuda(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const DType t = ctx.dtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const std::size_t buf = static_cast<std::size_t>(m) * row_bytes;
  const std::size_t pitch = (buf + 255) / 256 * 256;  // every set as aligned as a fresh cudaMalloc
  const std::size_t scratch_bytes = bench::unfused_scratch_bytes(t, m, n);

  cudaDeviceProp prop{};
  ck(cudaGetDeviceProperties(&prop, ctx.device.device.index), "cudaGetDeviceProperties");
  std::size_t free_bytes = 0, total_bytes = 0;
  ck(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");

  // Sets so that one pass over them moves >= 4x L2, within 80% of free memory (less the
  // unfused intermediates and 256 MiB of headroom) and the graph size.
  const std::size_t l2 = static_cast<std::size_t>(std::max(prop.l2CacheSize, 1));
  const std::size_t want = (4 * l2 + 2 * buf - 1) / (2 * buf);
  const double usable = 0.8 * static_cast<double>(free_bytes) - static_cast<double>(scratch_bytes) -
                        static_cast<double>(row_bytes) - static_cast<double>(256u << 20);
  if (usable < 2.0 * pitch)
    throw Error(Code::unsupported, format("needs %.2f GiB of device memory, %.2f GiB free",
                                          (2.0 * pitch + scratch_bytes) / (1 << 30), free_bytes / double(1 << 30)));
  std::int64_t sets = static_cast<std::int64_t>(std::min<double>(want, usable / (2.0 * pitch)));
  sets = std::max<std::int64_t>(1, std::min(sets, kMaxGraphNodes));
  if (static_cast<std::size_t>(sets) < want)
    result.notes.push_back(
        format("%lld sets = %.0f MB working set (< 4x L2)", static_cast<long long>(sets), sets * 2.0 * buf / 1e6));

  StreamOwner stream;
  DeviceMemory xs(sets * pitch), ys(sets * pitch), w(row_bytes), scratch(scratch_bytes);
  bench::fill_normal_device(xs.get(), t, static_cast<std::int64_t>(sets * pitch / s), ctx.seed, 0.0f, 1.0f, stream.s);
  bench::fill_normal_device(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f, stream.s);
  ck(cudaStreamSynchronize(stream.s), "filling the inputs");
  std::vector<unsigned char> w_host(row_bytes);
  ck(cudaMemcpy(w_host.data(), w.get(), row_bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (weight)");

  const Device dev = ctx.device.device;
  const auto x_of = [&](std::int64_t i) { return xs.get() + static_cast<std::size_t>(i % sets) * pitch; };
  const auto y_of = [&](std::int64_t i) { return ys.get() + static_cast<std::size_t>(i % sets) * pitch; };
  const TensorView wv = TensorView::vector(w.get(), t, dev, n);
  Params params;
  params.strategy = ctx.strategy;
  params.pdl = ctx.pdl;
  params.split_few_rows = ctx.split;

  // --config: the library's own validation, then its dispatch with the given plan.
  std::optional<Plan> forced;
  const Enqueue fused = [&](std::int64_t i, cudaStream_t st) {
    const TensorView x = TensorView::matrix(x_of(i), t, dev, m, n), y = TensorView::matrix(y_of(i), t, dev, m, n);
    if (forced)
      detail::cuda_forward(detail::validate_forward(x, wv, y, params, std::nullopt), *forced, dev.index, st);
    else
      forward(x, wv, y, params, std::nullopt, st);
  };
  const Enqueue unfused = [&](std::int64_t i, cudaStream_t st) {
    bench::unfused_forward_cuda({t, m, n, params.eps, x_of(i), w.get(), y_of(i), scratch.get()}, st);
  };
  const Enqueue copy = [&](std::int64_t i, cudaStream_t st) {
    ck(cudaMemcpyAsync(y_of(i), x_of(i), buf, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync (copy)");
  };

  // Check on set 0 before timing: y poisoned (NaN), one call, checked rows against the oracle.
  const std::vector<unsigned char> x_rows = download_rows(x_of(0), m, row_bytes);
  std::int64_t checked = 0;
  for (auto [b, e] : rows_to_check(m)) checked += e - b;
  const auto check = [&](const char* impl, const Enqueue& run, Cast cast) {
    ck(cudaMemsetAsync(y_of(0), 0xFF, buf, stream.s), "cudaMemsetAsync");
    run(0, stream.s);
    ck(cudaStreamSynchronize(stream.s), impl);
    const std::vector<unsigned char> y_rows = download_rows(y_of(0), m, row_bytes);
    std::string bad;
    if (std::strcmp(impl, "copy") == 0) {
      if (y_rows != x_rows) bad = "output differs from the input";
    } else {
      Params p = params;
      p.cast = cast;
      bad = check_rows(x_rows.data(), y_rows.data(), w_host.data(), t, checked, n, p);
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

  std::string strategy;
  try {
    const TensorView x0 = TensorView::matrix(x_of(0), t, dev, m, n), y0 = TensorView::matrix(y_of(0), t, dev, m, n);
    if (ctx.config_threads) {
      forced = forced_config(plan_forward(x0, wv, y0), ctx.config_threads, ctx.config_items, n,
                             detail::kWarpRowsConfigs, detail::kBlockRowConfigs, detail::kPlainClusterRowConfigs,
                             ctx.strategy == Strategy::cluster_row, detail::cuda_cc_major(dev.index),
                             detail::forward_cluster_pieces(false), ctx.max_cluster);
      forced->cluster_grid = ctx.cluster_grid;
      forced->shared_slices = ctx.shared_slices;
      if (forced->shared_slices && (forced->pieces > 1 || forced->load_width != forced->vector_width))
        throw Error(Code::unsupported,
                    "--slices shared: a block's slice in shared memory is one piece of an aligned "
                    "row; this one takes " +
                        std::to_string(forced->pieces) + " piece(s), " +
                        (forced->load_width == forced->vector_width ? "aligned" : "unaligned"));
      strategy = forced_name(*forced);
    } else {
      strategy = strategy_name(plan_forward(x0, wv, y0, ctx.strategy).strategy);
    }
  } catch (const Error& e) {
    if (e.code() != Code::unsupported) throw;
    result.notes.push_back(std::string("fused n/a: ") + e.what());
  }
  // A forced plan the device cannot launch (a non-portable cluster size without room for
  // one: Code::unsupported from the launcher) is n/a, as one that cannot hold the row.
  bool fused_ok = false;
  if (!strategy.empty()) {
    try {
      fused_ok = check("fused", fused, Cast::fp32);
    } catch (const Error& e) {
      if (e.code() != Code::unsupported) throw;
      result.notes.push_back(std::string("fused n/a: ") + e.what());
    }
  }
  if (fused_ok) {
    const std::size_t first = result.records.size();
    measure("fused", fused, 1);
    for (std::size_t i = first; i < result.records.size(); ++i) result.records[i].strategy = strategy;
  }
  if (check("unfused", unfused, Cast::llama)) measure("unfused", unfused, bench::unfused_op_count(t));
  if (check("copy", copy, Cast::fp32)) measure("copy", copy, 1);
  return result;
}

}  // namespace rmsnorm::cli
