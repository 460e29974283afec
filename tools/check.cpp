// Runs the cases of check_cases.cpp and check_backward_cases.cpp: for each, host inputs are
// made (poisoned buffers, random normal elements), the oracle's answer is computed, the
// buffers are copied to the device poison and all, rmsnorm::forward (here) or
// rmsnorm::backward (check_backward.cpp; the sharded-row steps: check_sharded.cpp; the fused
// forms: check_fused.cpp; the ranks' sum: check_allreduce.cpp) runs there, and everything is
// copied back and judged with the shared tolerance table and stray-write counter.
#include "check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "check_cases.h"
#include "check_run.h"
#include "harness.h"
#include "oracle.h"
#include "table.h"
#include "tolerances.h"

namespace rmsnorm::cli {
namespace {

namespace ref = rmsnorm::reference;

std::string ratio_text(double v) { return std::isfinite(v) ? format("%.3g", v) : "inf"; }

}  // namespace

CaseResult run_forward_case(const CheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  if (c.residual || c.quant) return run_fused_forward_case(c, dev, seed);
  CaseResult r;
  HostBuffer x = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  ref::fill_normal(x.view, seed, 0.0, c.x_scale);
  std::optional<HostBuffer> w;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 1, c.w_mean, c.w_std);
  }
  std::optional<HostBuffer> y;
  if (!c.in_place) y = make_buffer(c.y, c.batch, c.rows, c.cols, c.y_at);
  const DType rstd_type = c.x == DType::f64 ? DType::f64 : DType::f32;
  std::optional<HostBuffer> rstd;
  if (c.rstd) rstd = make_vector(rstd_type, c.batch * c.rows);

  // Before the call: an in-place call overwrites x.
  const ref::ForwardResult expected =
      ref::forward(x.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.y, c.params);
  const std::vector<unsigned char> x_before = x.bytes;

  Mirror dx = mirror(x, dev);
  std::optional<Mirror> dw, dy, dr;
  if (w) dw = mirror(*w, dev);
  if (y) dy = mirror(*y, dev);
  if (rstd) dr = mirror(*rstd, dev);
  try {
    forward(dx.view, dw ? std::optional<TensorView>(dw->view) : std::nullopt, dy ? dy->view : dx.view, c.params,
            dr ? std::optional<TensorView>(dr->view) : std::nullopt, nullptr);
    synchronize(dev.device, "rmsnorm::forward");
  } catch (const Error& e) {
    if (e.code() == Code::unsupported && c.skip_if_unsupported) {
      r.skipped = true;
      return r;
    }
    r.failed = true;
    r.cmp.worst_ratio = INFINITY;  // nothing to compare: as bad as it gets
    r.problem = std::string("threw ") + code_name(e.code()) + ": " + e.what();
    return r;
  }
  dx.memory.download(x.bytes.data(), x.bytes.size());
  if (y) dy->memory.download(y->bytes.data(), y->bytes.size());
  if (rstd) dr->memory.download(rstd->bytes.data(), rstd->bytes.size());

  HostBuffer& out = y ? *y : x;
  r.cmp = ref::compare(out.view, expected.y, ref::forward_tolerance(c.x, c.y, c.params.cast, c.cols));
  std::string what = "y " + r.cmp.describe();
  if (rstd) {
    const ref::Comparison rc =
        ref::compare_vector(rstd->view.data, rstd_type, expected.rstd, ref::rstd_tolerance(c.x, c.cols));
    if (!rc.passed()) what = "rstd " + rc.describe();
    ref::merge(r.cmp, rc);
  }
  std::int64_t stray = ref::count_stray_writes(out.bytes, out.view);
  if (rstd) stray += ref::count_stray_writes(rstd->bytes, rstd->view);
  const bool x_changed = y && x.bytes != x_before;

  r.failed = !r.cmp.passed() || stray != 0 || x_changed;
  if (!r.cmp.passed())
    r.problem = what;
  else if (stray)
    r.problem = std::to_string(stray) + " bytes written outside the output view";
  else if (x_changed)
    r.problem = "x was modified by an out-of-place call";
  return r;
}

int run_check(const CheckOptions& options, const RunDevice& dev) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<CheckGroup> groups = build_check_groups(options.quick, dev.is_cuda(), options.op);
  std::size_t total_cases = 0, name_width = 5;
  for (const CheckGroup& g : groups) {
    total_cases += g.size();
    name_width = std::max(name_width, g.name.size());
  }
  std::cout << "rmsnorm check: " << total_cases << " cases in " << groups.size() << " groups, seed " << options.seed
            << (options.quick ? " (--quick sweep" : " (full sweep")
            << (options.op == "all" ? ", forward and backward" : ", " + options.op + " only") << ")\n\n";

  TextTable table(std::cout, {{"group", static_cast<int>(name_width), true},
                              {"cases", 5},
                              {"skipped", 7},
                              {"worst/tol", 9},
                              {"result", 6, true}});
  table.print_header();

  std::uint64_t forward_index = 0, backward_index = 0, sharded_index = 0, allreduce_index = 0;
  std::size_t cases_run = 0, cases_failed = 0, cases_skipped = 0;
  double worst = 0.0;
  std::vector<std::string> failed_groups;
  for (const CheckGroup& g : groups) {
    if (!g.skipped_why.empty()) {
      table.print_row({g.name, "-", "-", "-", "SKIP (" + g.skipped_why + ")"});
      continue;
    }
    std::size_t run = 0, skipped = 0;
    double group_worst = 0.0;
    std::vector<std::string> failures;
    std::size_t failed = 0;
    const auto tally = [&](const CaseResult& r, const auto& c) {
      if (r.skipped) {
        ++skipped;
        return;
      }
      ++run;
      group_worst = std::max(group_worst, r.cmp.worst_ratio);
      if (r.failed) {
        ++failed;
        if (failures.size() < 3) failures.push_back(describe(c) + ": " + r.problem);
      }
    };
    // Each case's inputs depend only on the seed and the case's place among the cases of
    // its op (so --op gives the same inputs as the full sweep). A forward case draws from
    // seeds s and s+1, a backward one from s, s+1, s+2, in a range of its own, as are a
    // sharded-row case's s, s+1, s+2 and an all-reduce case's s .. s+17.
    for (const CheckCase& c : g.cases)
      tally(run_forward_case(c, dev, options.seed * 1000003u + 2 * forward_index++), c);
    for (const BackwardCheckCase& c : g.backward_cases)
      tally(run_backward_case(c, dev, options.seed * 1000003u + (std::uint64_t(1) << 40) + 3 * backward_index++), c);
    for (const ShardedCheckCase& c : g.sharded_cases)
      tally(run_sharded_case(c, dev, options.seed * 1000003u + (std::uint64_t(1) << 41) + 3 * sharded_index++), c);
    for (const AllReduceCheckCase& c : g.allreduce_cases)  // up to 16 partials, a weight and a residual
      tally(run_allreduce_case(c, dev, options.seed * 1000003u + (std::uint64_t(1) << 42) + 18 * allreduce_index++), c);
    const bool pass = failed == 0 && run > 0;
    table.print_row({g.name, std::to_string(run), std::to_string(skipped), ratio_text(group_worst),
                     pass ? "PASS" : (run == 0 ? "FAIL (every case skipped)" : "FAIL")});
    for (const std::string& f : failures) std::cout << "    failed: " << f << '\n';
    if (failed > failures.size()) std::cout << "    ... and " << failed - failures.size() << " more\n";
    if (!pass) failed_groups.push_back(g.name);
    cases_run += run;
    cases_failed += failed;
    cases_skipped += skipped;
    worst = std::max(worst, group_worst);
  }

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << '\n'
            << cases_run << " cases run, " << cases_failed << " failed, " << cases_skipped
            << " skipped (a forced strategy that cannot serve the shape), " << format("%.1f", seconds) << " s on "
            << (dev.is_cuda() ? "CUDA" : "the CPU") << '\n';
  if (failed_groups.empty()) {
    std::cout << "Correctness check PASSED (worst error " << ratio_text(worst) << " of tolerance)\n";
    return 0;
  }
  std::string names;
  for (const std::string& n : failed_groups) names += (names.empty() ? "" : ", ") + n;
  std::cout << "Correctness check FAILED (" << failed_groups.size() << " of " << groups.size() << " groups: " << names
            << "; " << cases_failed << " failing cases; worst error " << ratio_text(worst) << " of tolerance)\n";
  return 1;
}

}  // namespace rmsnorm::cli
