// CPU timing of the backward: std::chrono around passes over rotating buffer sets, as the
// forward's (bench_cpu.cpp). These figures describe the CPU backend on the machine at hand
// and are never to be quoted as GPU numbers.
//
// A set is one allocation laid out [x | dy | dx | rstd] (each part 256-byte aligned), so
// that the copy ceiling can move exactly the backward's bytes inside it: it copies the
// first 1.5*M*N*s bytes of the set (x and the start of dy) over its last 1.5*M*N*s bytes
// of matrix (the rest of dy and dx), reading 1.5 and writing 1.5 = 3*M*N*s.
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
#include "unfused_backward.h"

namespace rmsnorm::cli {
namespace {

using Clock = std::chrono::steady_clock;

}  // namespace

ShapeResult bench_backward_shape_cpu(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const DType t = ctx.dtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const BackwardSetLayout layout(t, m, n);
  const std::size_t buf = layout.matrix, pitch = layout.pitch, set_bytes = layout.bytes, copy_bytes = layout.copy;
  const std::size_t saved_bytes = layout.saved, scratch_bytes = layout.scratch,
                    forward_scratch_bytes = layout.forward_scratch;
  Params params;
  params.strategy = ctx.strategy;  // the CPU backend has one strategy; accepted, not used
  const Device cpu = Device::cpu();
  const TensorView dw_shape = TensorView::vector(nullptr, t, cpu, n);
  const std::size_t ws_bytes = backward_workspace_size(TensorView::matrix(nullptr, t, cpu, m, n), dw_shape, params);

  // Sets so that a pass moves >= 4x the last-level cache (at most kMaxPassBytes), each with
  // its own copy of the unfused baseline's saved tensors; within a quarter of the memory.
  const std::size_t llc = last_level_cache();
  const std::size_t target = std::min(4 * llc, kMaxPassBytes);
  const std::size_t want = (target + 3 * buf - 1) / (3 * buf);
  const std::size_t room = physical_memory() / 4;
  const std::size_t shared = scratch_bytes + forward_scratch_bytes + ws_bytes + 2 * row_bytes;
  if (set_bytes + saved_bytes + shared > room)
    throw Error(Code::unsupported, format("needs %.1f GiB, more than a quarter of this machine's memory",
                                          static_cast<double>(set_bytes + saved_bytes + shared) / (1 << 30)));
  const std::size_t sets = std::max<std::size_t>(1, std::min(want, (room - shared) / (set_bytes + saved_bytes)));
  if (3 * buf * sets < 4 * llc)
    result.notes.push_back(format("working set %.0f MB (< 4x LLC, %.0f MB)", 3e-6 * buf * sets, 1e-6 * llc));

  HostMemory sets_mem = allocate(sets * set_bytes), saved_mem = allocate(sets * saved_bytes), w = allocate(row_bytes),
             dw = allocate(row_bytes), ws = allocate(ws_bytes), scratch = allocate(scratch_bytes);
  const auto set_of = [&](std::size_t i) { return sets_mem.get() + (i % sets) * set_bytes; };
  const auto x_of = [&](std::size_t i) { return set_of(i); };
  const auto dy_of = [&](std::size_t i) { return set_of(i) + pitch; };
  const auto dx_of = [&](std::size_t i) { return set_of(i) + 2 * pitch; };
  const auto rstd_of = [&](std::size_t i) { return reinterpret_cast<float*>(set_of(i) + 3 * pitch); };
  const auto matrix = [&](unsigned char* p) { return TensorView::matrix(p, t, cpu, m, n); };
  const TensorView wv = TensorView::vector(w.get(), t, cpu, n), dwv = TensorView::vector(dw.get(), t, cpu, n);

  // Inputs: one random x and dy, copied to every set (the sets exist for their addresses,
  // not their values). The saved rstd comes from a forward run on each set (eps as the
  // backward's), the unfused baseline's saved tensors from its own forward.
  bench::fill_normal_host(x_of(0), t, m * n, ctx.seed);
  bench::fill_normal_host(dy_of(0), t, m * n, ctx.seed * 31 + 0xd1);
  bench::fill_normal_host(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f);
  std::vector<bench::UnfusedSaved> saved(sets);
  {
    HostMemory forward_scratch = allocate(forward_scratch_bytes);
    for (std::size_t i = 0; i < sets; ++i) {
      if (i) parallel_copy(x_of(i), x_of(0), 2 * pitch);  // x and dy
      forward(matrix(x_of(i)), wv, matrix(dx_of(i)), Params{}, TensorView::vector(rstd_of(i), DType::f32, cpu, m));
      saved[i] = bench::unfused_save_for_backward_cpu(
          {t, m, n, params.eps, x_of(i), w.get(), dx_of(i), forward_scratch.get()}, saved_mem.get() + i * saved_bytes);
    }
  }

  const auto fused = [&](std::size_t i) {
    backward(matrix(dy_of(i)), matrix(x_of(i)), wv, TensorView::vector(rstd_of(i), DType::f32, cpu, m),
             matrix(dx_of(i)), dwv, params, ws.get(), ws_bytes);
  };
  const auto unfused = [&](std::size_t i) {
    bench::unfused_backward_cpu({t, m, n, saved[i % sets], w.get(), dy_of(i), dx_of(i), dw.get(), scratch.get()});
  };
  const auto copy = [&](std::size_t i) { parallel_copy(dx_of(i) + buf - copy_bytes, x_of(i), copy_bytes); };

  // Check each implementation's dx (checked rows) and dw on set 0 before timing it.
  const BackwardExpected expected = backward_expected(x_of(0), dy_of(0), w.get(), t, m, n, params);
  const auto check = [&](const char* impl, auto&& run, int eager_roundings) {
    std::memset(dx_of(0), 0xFF, buf);
    std::memset(dw.get(), 0xFF, row_bytes);
    run(0);
    std::string bad;
    if (std::string(impl) == "copy") {
      if (std::memcmp(dx_of(0) + buf - copy_bytes, x_of(0), copy_bytes) != 0) bad = "output differs from the input";
    } else {
      const std::vector<unsigned char> dx_rows = gather_rows(dx_of(0), m, row_bytes);
      bad = check_backward(expected, dx_rows.data(), dw.get(), t, m, n, eager_roundings);
    }
    if (!bad.empty()) {
      result.failed = true;
      result.notes.push_back(std::string(impl) + " FAILED its oracle check: " + bad);
    }
    return bad.empty();
  };

  // Passes over the sets, the implementations' passes interleaved (see bench_cpu.cpp). The
  // copy's passes overwrite the second half of dy: the timings do not depend on the values
  // (finite either way).
  const bool fused_ok = check("fused", fused, 0), unfused_ok = check("unfused", unfused, 2);
  const bool copy_ok = check("copy", copy, 0);  // last: the copy overwrites the second half of dy
  std::vector<std::pair<const char*, std::function<void(std::size_t)>>> passed;
  if (fused_ok) passed.emplace_back("fused", fused);
  if (copy_ok) passed.emplace_back("copy", copy);
  if (unfused_ok) passed.emplace_back("unfused", unfused);
  std::vector<std::vector<double>> us(passed.size());
  for (const auto& impl : passed)
    for (std::size_t i = 0; i < sets; ++i) impl.second(i);  // warm-up pass
  for (int r = 0; r < ctx.reps; ++r)
    for (std::size_t k = 0; k < passed.size(); ++k) {
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < sets; ++i) passed[k].second(i);
      us[k].push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / sets);
    }
  for (std::size_t k = 0; k < passed.size(); ++k) {
    result.records.push_back(make_record(ctx, shape, passed[k].first, "loop", median(us[k]), sets, sets, ctx.reps));
    if (std::string(passed[k].first) == "fused") result.records.back().strategy = "cpu";
  }
  return result;
}

}  // namespace rmsnorm::cli
