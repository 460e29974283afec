// Runs the cases of check_cases.cpp: for each, host inputs are made (poisoned buffers,
// random normal elements), the oracle's answer is computed, the buffers are copied to the
// device poison and all, rmsnorm::forward runs there, and everything is copied back and
// judged with the shared tolerance table and stray-write counter.
#include "check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iostream>

#include "check_cases.h"
#include "harness.h"
#include "oracle.h"
#include "table.h"
#include "tolerances.h"

namespace rmsnorm::cli {
namespace {

namespace ref = rmsnorm::reference;

// Poison bytes past the end of every buffer: a write one element beyond the view lands
// here and is counted as a stray write.
constexpr std::size_t kGuardBytes = 64;

struct HostBuffer {
  std::vector<unsigned char> bytes;
  TensorView view;  // points into bytes
};

HostBuffer make_buffer(DType t, const CheckCase& c, const Placement& p) {
  const std::int64_t rs = p.row_stride < 0 ? c.cols : p.row_stride;
  const std::int64_t bs = p.batch_stride < 0 ? c.rows * rs : p.batch_stride;
  HostBuffer b;
  b.view = TensorView::batched(nullptr, t, Device::cpu(), c.batch, c.rows, c.cols, bs, rs);
  const std::int64_t elements = std::max(p.buffer_elements, p.offset + ref::span_elements(b.view));
  const std::size_t es = dtype_size(t);
  b.bytes.assign(static_cast<std::size_t>(elements) * es + kGuardBytes, ref::kPoisonByte);
  b.view.data = b.bytes.data() + static_cast<std::size_t>(p.offset) * es;
  return b;
}

HostBuffer make_vector(DType t, std::int64_t n) {
  HostBuffer b;
  b.bytes.assign(static_cast<std::size_t>(n) * dtype_size(t) + kGuardBytes, ref::kPoisonByte);
  b.view = TensorView::vector(b.bytes.data(), t, Device::cpu(), n);
  return b;
}

// A host buffer's twin on the run device, with the view re-pointed at it.
struct Mirror {
  DeviceBuffer memory;
  TensorView view;
};

Mirror mirror(const HostBuffer& h, const RunDevice& dev) {
  Mirror m{DeviceBuffer(dev.device, h.bytes.size()), h.view};
  m.memory.upload(h.bytes.data(), h.bytes.size());
  const std::ptrdiff_t offset = static_cast<const unsigned char*>(h.view.data) - h.bytes.data();
  m.view.data = static_cast<unsigned char*>(m.memory.data()) + offset;
  m.view.device = dev.device;
  return m;
}

struct CaseResult {
  bool skipped = false;
  bool failed = false;
  ref::Comparison cmp;
  std::string problem;  // why it failed
};

CaseResult run_case(const CheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  CaseResult r;
  HostBuffer x = make_buffer(c.x, c, c.x_at);
  ref::fill_normal(x.view, seed, 0.0, c.x_scale);
  std::optional<HostBuffer> w;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 1, c.w_mean, c.w_std);
  }
  std::optional<HostBuffer> y;
  if (!c.in_place) y = make_buffer(c.y, c, c.y_at);
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
    forward(dx.view, dw ? std::optional<TensorView>(dw->view) : std::nullopt, dy ? dy->view : dx.view,
            c.params, dr ? std::optional<TensorView>(dr->view) : std::nullopt, nullptr);
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
  if (!r.cmp.passed()) r.problem = what;
  else if (stray) r.problem = std::to_string(stray) + " bytes written outside the output view";
  else if (x_changed) r.problem = "x was modified by an out-of-place call";
  return r;
}

std::string ratio_text(double v) { return std::isfinite(v) ? format("%.3g", v) : "inf"; }

}  // namespace

int run_check(const CheckOptions& options, const RunDevice& dev) {
  const auto start = std::chrono::steady_clock::now();
  const std::vector<CheckGroup> groups = build_check_groups(options.quick, dev.is_cuda());
  std::size_t total_cases = 0, name_width = 5;
  for (const CheckGroup& g : groups) {
    total_cases += g.cases.size();
    name_width = std::max(name_width, g.name.size());
  }
  std::cout << "rmsnorm check: " << total_cases << " cases in " << groups.size() << " groups, seed "
            << options.seed << (options.quick ? " (--quick sweep)" : " (full sweep)") << "\n\n";

  TextTable table(std::cout, {{"group", static_cast<int>(name_width), true},
                              {"cases", 5},
                              {"skipped", 7},
                              {"worst/tol", 9},
                              {"result", 6, true}});
  table.print_header();

  std::uint64_t case_index = 0;
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
    for (const CheckCase& c : g.cases) {
      // Each case's inputs depend only on the seed and the case's place in the sweep.
      const CaseResult r = run_case(c, dev, options.seed * 1000003u + 2 * case_index++);
      if (r.skipped) {
        ++skipped;
        continue;
      }
      ++run;
      group_worst = std::max(group_worst, r.cmp.worst_ratio);
      if (r.failed) {
        ++failed;
        if (failures.size() < 3) failures.push_back(describe(c) + ": " + r.problem);
      }
    }
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

  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << '\n'
            << cases_run << " cases run, " << cases_failed << " failed, " << cases_skipped
            << " skipped (a forced strategy that cannot serve the shape), " << format("%.1f", seconds)
            << " s on " << (dev.is_cuda() ? "CUDA" : "the CPU") << '\n';
  if (failed_groups.empty()) {
    std::cout << "Correctness check PASSED (worst error " << ratio_text(worst) << " of tolerance)\n";
    return 0;
  }
  std::string names;
  for (const std::string& n : failed_groups) names += (names.empty() ? "" : ", ") + n;
  std::cout << "Correctness check FAILED (" << failed_groups.size() << " of " << groups.size()
            << " groups: " << names << "; " << cases_failed << " failing cases; worst error "
            << ratio_text(worst) << " of tolerance)\n";
  return 1;
}

}  // namespace rmsnorm::cli
