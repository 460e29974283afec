// CPU timing of the fused forms (--op add, --op quant): std::chrono around passes over
// rotating buffer sets, as bench_cpu.cpp does for the plain forward. The figures describe
// the CPU backend on the machine at hand and are never to be quoted as GPU numbers.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "bench.h"
#include "bench_host.h"
#include "harness.h"
#include "normal_fill.h"
#include "oracle.h"
#include "table.h"
#include "tolerances.h"
#include "unfused_fusions.h"

namespace rmsnorm::cli {
namespace {

using Clock = std::chrono::steady_clock;
namespace ref = rmsnorm::reference;

std::size_t round_up(std::size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

ShapeResult bench_fused_shape_cpu(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const bool add = ctx.op == "add";
  const DType t = ctx.dtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  if (!add && ctx.quant == QuantScale::per_group && n % kBenchGroupSize != 0)
    throw Error(Code::unsupported, "group scales need N divisible by 128");
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const std::size_t mn = static_cast<std::size_t>(m * n), buf = static_cast<std::size_t>(m) * row_bytes;
  // One set: add: x | r (inputs) and y | r_out (outputs); quant: x, q, scales.
  const std::size_t scale_bytes = add ? 0 : quant_scale_bytes(ctx.quant, m, n);
  const double model = model_bytes(ctx, m, n);
  // The copy ceiling reads half the model bytes from the set's inputs and writes them over
  // its outputs (read + write = the model bytes); the output space holds that much.
  const std::size_t copy_bytes = static_cast<std::size_t>(model / 2);
  const std::size_t in_bytes = add ? 2 * round_up(buf) : round_up(buf);
  const std::size_t out_bytes =
      std::max(add ? 2 * round_up(buf) : round_up(mn) + round_up(scale_bytes), round_up(copy_bytes));
  const std::size_t set_bytes = in_bytes + out_bytes;
  const std::size_t scratch_bytes =
      bench::unfused_scratch_bytes(t, m, n) + (add ? 0 : bench::unfused_quant_scratch_bytes(m, n)) + 256;

  const std::size_t llc = last_level_cache();
  const std::size_t target = std::min(4 * llc, kMaxPassBytes);
  const std::size_t want = (target + static_cast<std::size_t>(model) - 1) / static_cast<std::size_t>(model);
  const std::size_t room = physical_memory() / 4;
  if (set_bytes + scratch_bytes + buf > room)
    throw Error(Code::unsupported, format("needs %.1f GiB, more than a quarter of this machine's memory",
                                          (1.0 * set_bytes + scratch_bytes) / (1 << 30)));
  const std::size_t sets = std::max<std::size_t>(1, std::min(want, (room - scratch_bytes - buf) / set_bytes));
  if (model * sets < 4.0 * llc)
    result.notes.push_back(format("working set %.0f MB (< 4x LLC, %.0f MB)", 1e-6 * model * sets, 1e-6 * llc));

  HostMemory sets_mem = allocate(sets * set_bytes), w = allocate(row_bytes), scratch = allocate(scratch_bytes),
             unfused_y = allocate(round_up(buf)), static_scale = allocate(256);
  const auto in_of = [&](std::size_t i) { return sets_mem.get() + (i % sets) * set_bytes; };
  const auto out_of = [&](std::size_t i) { return in_of(i) + in_bytes; };
  const auto x_of = [&](std::size_t i) { return in_of(i); };
  const auto r_of = [&](std::size_t i) { return in_of(i) + round_up(buf); };  // add
  const auto y_of = [&](std::size_t i) { return out_of(i); };                 // add: y; quant: q
  const auto r_out_of = [&](std::size_t i) { return out_of(i) + round_up(buf); };
  const auto scales_of = [&](std::size_t i) { return reinterpret_cast<float*>(out_of(i) + round_up(mn)); };
  // One random set (x, and r), copied to the others: the sets exist for their addresses.
  bench::fill_normal_host(x_of(0), t, m * n, ctx.seed);
  if (add) bench::fill_normal_host(r_of(0), t, m * n, ctx.seed * 31 + 7);
  for (std::size_t i = 1; i < sets; ++i) parallel_copy(in_of(i), in_of(0), in_bytes);
  bench::fill_normal_host(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f);
  for (std::size_t i = 0; i < sets; ++i) std::memset(out_of(i), 0xFF, out_bytes);

  Params params;
  const TensorView wv = TensorView::vector(w.get(), t, Device::cpu(), n);
  const auto matrix = [&](void* p, DType d) { return TensorView::matrix(p, d, Device::cpu(), m, n); };
  {
    // The static scale: max |x| / qmax (y's values are of x's size: a few saturate).
    float amax = 0;
    for (std::int64_t i = 0; i < m * n; ++i)
      amax = std::max(amax, std::fabs(static_cast<float>(load_as_double(x_of(0), t, i))));
    const float sc = std::max(amax, 1.0f) / quant_max(ctx.qdtype);
    std::memcpy(static_scale.get(), &sc, 4);
  }
  const auto quant_of = [&](std::size_t i) {
    Quant q;
    q.kind = ctx.quant;
    q.group_size = kBenchGroupSize;
    q.division = ctx.division;
    if (ctx.quant == QuantScale::static_tensor)
      q.scales = TensorView::vector(static_scale.get(), DType::f32, Device::cpu(), 1);
    else if (ctx.quant == QuantScale::per_row)
      q.scales = TensorView::vector(scales_of(i), DType::f32, Device::cpu(), m);
    else
      q.scales = TensorView::matrix(scales_of(i), DType::f32, Device::cpu(), m, n / kBenchGroupSize);
    return q;
  };
  const auto fused = [&](std::size_t i) {
    if (add)
      fused_add_forward(matrix(x_of(i), t), matrix(r_of(i), t), wv, matrix(y_of(i), t), matrix(r_out_of(i), t), params);
    else
      quant_forward(matrix(x_of(i), t), wv, matrix(y_of(i), ctx.qdtype), quant_of(i), params);
  };
  const auto unfused = [&](std::size_t i) {
    bench::UnfusedProblem norm{t, m, n, params.eps, x_of(i), w.get(), add ? y_of(i) : unfused_y.get(), scratch.get()};
    if (add) {
      bench::unfused_add_forward_cpu(norm, r_of(i), r_out_of(i));
      return;
    }
    bench::UnfusedQuantProblem q;
    q.norm = norm;
    q.kind = ctx.quant;
    q.qdtype = ctx.qdtype;
    q.group_size = kBenchGroupSize;
    q.static_scale = reinterpret_cast<const float*>(static_scale.get());
    q.q = y_of(i);
    q.scales = scales_of(i);
    q.scratch = scratch.get() + bench::unfused_scratch_bytes(t, m, n);
    bench::unfused_quant_forward_cpu(q);
  };
  const auto copy = [&](std::size_t i) { parallel_copy(out_of(i), in_of(i), copy_bytes); };

  // Checks on set 0 before timing: r_out bit for bit, y under forward_tolerance; q of the
  // fused call with compare_quantized (its scales against the oracle's), of the unfused one
  // within one code step (its y was rounded to x's dtype first, as eager PyTorch's is).
  const auto check = [&](const char* impl, auto&& run, Cast cast) {
    std::memset(out_of(0), 0xFF, out_bytes);
    run(0);
    std::string bad;
    const std::string name = impl;
    if (name == "copy") {
      if (std::memcmp(out_of(0), in_of(0), copy_bytes) != 0) bad = "output differs from the input";
    } else {
      Params p = params;
      p.cast = cast;
      // the first and last rows (up to 64 each), as the plain benchmarks check
      for (auto [b, e] : rows_to_check(m)) {
        const std::int64_t rows = e - b;
        const auto at = [&](unsigned char* base, std::size_t es) {
          return base + static_cast<std::size_t>(b * n) * es;
        };
        const TensorView xv = TensorView::matrix(at(x_of(0), s), t, Device::cpu(), rows, n);
        if (add) {
          const TensorView rv = TensorView::matrix(at(r_of(0), s), t, Device::cpu(), rows, n);
          const ref::FusedAddResult want = ref::fused_add_forward(xv, rv, wv, p);
          const ref::Comparison rc = ref::compare(TensorView::matrix(at(r_out_of(0), s), t, Device::cpu(), rows, n),
                                                  want.r_out, ref::Tolerance{0.0, 1e-300});
          const ref::Comparison yc = ref::compare(TensorView::matrix(at(y_of(0), s), t, Device::cpu(), rows, n),
                                                  want.norm.y, ref::forward_tolerance(t, t, cast, n));
          if (!rc.passed()) bad = "r_out " + rc.describe();
          if (!yc.passed()) bad = "y " + yc.describe();
        } else {
          const ref::ForwardResult want = ref::forward(xv, wv, t, p);
          const std::int64_t group = ctx.quant == QuantScale::per_group ? kBenchGroupSize : n;
          std::vector<double> used;
          for (std::int64_t r = b; r < e; ++r)
            for (std::int64_t g = 0; g < n / group; ++g)
              used.push_back(ctx.quant == QuantScale::static_tensor
                                 ? load_as_double(static_scale.get(), DType::f32, 0)
                                 : load_as_double(scales_of(0), DType::f32, r * (n / group) + g));
          ref::Tolerance y_tol = ref::quant_y_tolerance(t, t, cast, n);
          if (name == "unfused") y_tol.rtol += 2 * ref::unit_roundoff(t);  // y rounded to x's dtype, twice
          const ref::Comparison qc =
              ref::compare_quantized(TensorView::matrix(at(y_of(0), 1), ctx.qdtype, Device::cpu(), rows, n), want.y,
                                     used, group, y_tol, ctx.division);
          if (!qc.passed()) bad = "q " + qc.describe();
          if (ctx.quant != QuantScale::static_tensor && name == "fused") {
            ref::QuantSpec spec;
            spec.kind = ctx.quant;
            spec.q = ctx.qdtype;
            spec.group_size = group;
            std::vector<double> want_s = ref::quant_scales(want.y, rows, n, spec);
            const ref::Comparison sc = ref::compare_scales(used, want_s, ref::quant_scale_tolerance(y_tol), false);
            if (!sc.passed()) bad = "scales " + sc.describe();
          }
        }
        if (!bad.empty()) break;
      }
    }
    if (!bad.empty()) {
      result.failed = true;
      result.notes.push_back(std::string(impl) + " FAILED its oracle check: " + bad);
    }
    return bad.empty();
  };

  const auto time_it = [&](const char* impl, auto&& run) {
    if (shape.latency) {
      const int reps = std::max(4 * ctx.reps, 200);
      std::vector<double> us;
      for (int i = 0; i < 10; ++i) run(i);
      for (int i = 0; i < reps; ++i) {
        const auto t0 = Clock::now();
        run(static_cast<std::size_t>(i));
        us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
      }
      result.records.push_back(make_record(ctx, shape, impl, "plain", median(us), sets, 1, reps));
      return;
    }
    for (std::size_t i = 0; i < sets; ++i) run(i);  // warm-up pass
    std::vector<double> us;
    for (int r = 0; r < ctx.reps; ++r) {
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < sets; ++i) run(i);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / sets);
    }
    result.records.push_back(make_record(ctx, shape, impl, "loop", median(us), sets, sets, ctx.reps));
  };

  if (check("fused", fused, Cast::fp32)) {
    time_it("fused", fused);
    result.records.back().strategy = "cpu";
  }
  if (check("unfused", unfused, Cast::llama)) time_it("unfused", unfused);
  if (check("copy", copy, Cast::fp32)) time_it("copy", copy);
  return result;
}

}  // namespace rmsnorm::cli
