// CPU timing of the forward: std::chrono around passes over rotating buffer sets. These
// figures describe the CPU backend on the machine at hand and are never to be quoted as
// GPU numbers.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "bench.h"
#include "bench_host.h"
#include "normal_fill.h"
#include "table.h"
#include "unfused.h"

namespace rmsnorm::cli {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

ShapeResult bench_shape_cpu(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const DType t = ctx.dtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const std::size_t buf = static_cast<std::size_t>(m) * row_bytes;
  const std::size_t pitch = (buf + 255) / 256 * 256;
  const std::size_t scratch_bytes = bench::unfused_scratch_bytes(t, m, n);

  // Enough x/y sets that one pass over them is >= 4x the last-level cache, but at most
  // kMaxPassBytes (a VM often reports its host's whole L3, hundreds of MB, and passes of
  // gigabytes would make the default table take minutes) and a quarter of the memory.
  const std::size_t llc = last_level_cache();
  const std::size_t target = std::min(4 * llc, kMaxPassBytes);
  const std::size_t want = (target + 2 * buf - 1) / (2 * buf);
  const std::size_t room = physical_memory() / 4;
  if (2 * pitch + scratch_bytes > room)
    throw Error(Code::unsupported, format("needs %.1f GiB, more than a quarter of this machine's memory",
                                          (2.0 * pitch + scratch_bytes) / (1 << 30)));
  const std::size_t sets = std::max<std::size_t>(1, std::min(want, (room - scratch_bytes) / (2 * pitch)));
  if (2 * buf * sets < 4 * llc)
    result.notes.push_back(format("working set %.0f MB (< 4x LLC, %.0f MB)", 2e-6 * buf * sets, 1e-6 * llc));

  HostMemory xs = allocate(sets * pitch), ys = allocate(sets * pitch), w = allocate(row_bytes),
             scratch = allocate(scratch_bytes);
  // One random set, copied to the others: the sets exist for their addresses (no cache
  // reuse), not their values, and generating gigabytes of normals would dominate the run.
  bench::fill_normal_host(xs.get(), t, m * n, ctx.seed);
  for (std::size_t i = 1; i < sets; ++i) parallel_copy(xs.get() + i * pitch, xs.get(), buf);
  bench::fill_normal_host(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f);
  std::memset(ys.get(), 0xFF, sets * pitch);  // NaN: an unwritten element fails the check

  Params params;
  params.strategy = ctx.strategy;  // the CPU backend has one strategy; accepted, not used
  const auto x_of = [&](std::size_t i) { return xs.get() + (i % sets) * pitch; };
  const auto y_of = [&](std::size_t i) { return ys.get() + (i % sets) * pitch; };
  const TensorView wv = TensorView::vector(w.get(), t, Device::cpu(), n);
  const auto fused = [&](std::size_t i) {
    forward(TensorView::matrix(x_of(i), t, Device::cpu(), m, n), wv,
            TensorView::matrix(y_of(i), t, Device::cpu(), m, n), params);
  };
  const auto unfused = [&](std::size_t i) {
    bench::unfused_forward_cpu({t, m, n, params.eps, x_of(i), w.get(), y_of(i), scratch.get()});
  };
  const auto copy = [&](std::size_t i) { parallel_copy(y_of(i), x_of(i), buf); };

  // Check each implementation's output on set 0 before timing it.
  const std::vector<unsigned char> x_rows = gather_rows(x_of(0), m, row_bytes);
  const auto check = [&](const char* impl, auto&& run, Cast cast) {
    std::memset(y_of(0), 0xFF, buf);
    run(0);
    const std::vector<unsigned char> y_rows = gather_rows(y_of(0), m, row_bytes);
    std::string bad;
    if (std::string(impl) == "copy") {
      if (y_rows != x_rows) bad = "output differs from the input";
    } else {
      Params p = params;
      p.cast = cast;
      bad = check_rows(x_rows.data(), y_rows.data(), w.get(), t, checked_row_count(m), n, p);
    }
    if (!bad.empty()) {
      result.failed = true;
      result.notes.push_back(std::string(impl) + " FAILED its oracle check: " + bad);
    }
    return bad.empty();
  };

  // One call at a time: what a single decode step costs on this CPU.
  const auto time_latency = [&](const char* impl, const std::function<void(std::size_t)>& run) {
    const int reps = std::max(4 * ctx.reps, 200);
    std::vector<double> us;
    for (int i = 0; i < 10; ++i) run(i);
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      run(static_cast<std::size_t>(i));
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    result.records.push_back(make_record(ctx, shape, impl, "plain", median(us), sets, 1, reps));
  };
  // Passes over the sets, the implementations' passes interleaved (fused, copy, unfused,
  // fused, ...): on a shared machine the load changes from second to second, and blocks of
  // one implementation's passes after another's compared them under different loads.
  const auto time_passes = [&](const std::vector<std::pair<const char*, std::function<void(std::size_t)>>>& impls) {
    std::vector<std::vector<double>> us(impls.size());
    for (const auto& impl : impls)
      for (std::size_t i = 0; i < sets; ++i) impl.second(i);  // warm-up pass
    for (int r = 0; r < ctx.reps; ++r)
      for (std::size_t k = 0; k < impls.size(); ++k) {
        const auto t0 = Clock::now();
        for (std::size_t i = 0; i < sets; ++i) impls[k].second(i);
        us[k].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / sets);
      }
    for (std::size_t k = 0; k < impls.size(); ++k) {
      result.records.push_back(make_record(ctx, shape, impls[k].first, "loop", median(us[k]), sets, sets, ctx.reps));
      if (std::string(impls[k].first) == "fused") result.records.back().strategy = "cpu";
    }
  };

  std::vector<std::pair<const char*, std::function<void(std::size_t)>>> passed;
  if (check("fused", fused, Cast::fp32)) passed.emplace_back("fused", fused);
  if (check("copy", copy, Cast::fp32)) passed.emplace_back("copy", copy);
  if (check("unfused", unfused, Cast::llama)) passed.emplace_back("unfused", unfused);
  if (shape.latency) {
    for (const auto& impl : passed) {
      time_latency(impl.first, impl.second);
      if (std::string(impl.first) == "fused") result.records.back().strategy = "cpu";
    }
  } else {
    time_passes(passed);
  }
  return result;
}

}  // namespace rmsnorm::cli
