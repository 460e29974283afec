// Runs one backward case of `rmsnorm check` (check_backward_cases.cpp): poisoned buffers,
// random normal x, dy and weight, the fp64 oracle's dx and dw (reference::backward), the
// buffers copied to the device poison and all, rmsnorm::backward with a workspace full of
// stale bytes, everything copied back and judged: dx with compare_scaled under
// dx_tolerance, dw with compare_vector_scaled under dw_tolerance (rows = total rows), no
// byte outside dx's and dw's views written, the inputs unchanged; with `twice`, a second
// run (outputs poisoned again, other stale workspace bytes) must give the same bytes.
#include <cmath>
#include <optional>
#include <string>

#include "check_run.h"
#include "harness.h"
#include "oracle.h"
#include "tolerances.h"

namespace rmsnorm::cli {
namespace {

namespace ref = rmsnorm::reference;

// A copy whose view points into the copy's own bytes.
HostBuffer copy_of(const HostBuffer& b) {
  HostBuffer c = b;
  c.view.data = c.bytes.data() + (static_cast<const unsigned char*>(b.view.data) - b.bytes.data());
  return c;
}
std::optional<HostBuffer> copy_of(const std::optional<HostBuffer>& b) {
  return b ? std::optional<HostBuffer>(copy_of(*b)) : std::nullopt;
}

// Every buffer of a call, on the host. Before the call: inputs filled, outputs poisoned.
struct Buffers {
  HostBuffer x, dy;
  std::optional<HostBuffer> dx, w, dw, rstd;  // dx: none when dx is dy
  Buffers copy() const { return {copy_of(x), copy_of(dy), copy_of(dx), copy_of(w), copy_of(dw), copy_of(rstd)}; }
};

struct Run {
  bool unsupported = false;  // a forced strategy that cannot serve the case
  std::string error;         // anything else that was thrown
  Buffers after;             // every buffer, downloaded after the call
};

// One call on the run device with the buffers as they are in `before` and a workspace
// whose every byte is `stale`.
Run run_once(const BackwardCheckCase& c, const Buffers& before, const RunDevice& dev, unsigned char stale) {
  Run out{false, {}, before.copy()};
  const auto up = [&](const std::optional<HostBuffer>& h) {
    return h ? std::optional<Mirror>(mirror(*h, dev)) : std::nullopt;
  };
  const auto view = [](const std::optional<Mirror>& m) {
    return m ? std::optional<TensorView>(m->view) : std::nullopt;
  };
  Mirror x = mirror(before.x, dev), dy = mirror(before.dy, dev);
  std::optional<Mirror> dx = up(before.dx), w = up(before.w), dw = up(before.dw), rstd = up(before.rstd);
  try {
    const std::size_t ws_bytes = backward_workspace_size(x.view, view(dw), c.params);
    DeviceBuffer ws(dev.device, ws_bytes);
    const std::vector<unsigned char> stale_bytes(ws_bytes, stale);
    ws.upload(stale_bytes.data(), ws_bytes);
    backward(dy.view, x.view, view(w), view(rstd), c.in_place ? dy.view : dx->view, view(dw), c.params, ws.data(),
             ws_bytes, nullptr);
    synchronize(dev.device, "rmsnorm::backward");
  } catch (const Error& e) {
    if (e.code() == Code::unsupported && c.skip_if_unsupported)
      out.unsupported = true;
    else
      out.error = std::string("threw ") + code_name(e.code()) + ": " + e.what();
    return out;
  }
  download(x, out.after.x);
  download(dy, out.after.dy);
  if (dx) download(*dx, *out.after.dx);
  if (w) download(*w, *out.after.w);
  if (dw) download(*dw, *out.after.dw);
  if (rstd) download(*rstd, *out.after.rstd);
  return out;
}

}  // namespace

CaseResult run_backward_case(const BackwardCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  if (c.residual) return run_fused_backward_case(c, dev, seed);
  CaseResult r;
  Buffers in{make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at),
             make_buffer(c.x, c.batch, c.rows, c.cols, c.dy_at),
             {},
             {},
             {},
             {}};
  ref::fill_normal(in.x.view, seed, 0.0, c.x_scale);
  ref::fill_normal(in.dy.view, seed + 1);
  if (!c.in_place) in.dx = make_buffer(c.x, c.batch, c.rows, c.cols, c.dx_at);
  if (c.weight) {
    in.w = make_vector(*c.weight, c.cols);
    ref::fill_normal(in.w->view, seed + 2, c.w_mean, c.w_std);
  }
  if (c.weight && c.dw) in.dw = make_vector(*c.dw, c.cols);
  const std::int64_t total_rows = c.batch * c.rows;
  const ref::BackwardResult expected =
      ref::backward(in.dy.view, in.x.view, in.w ? std::optional<TensorView>(in.w->view) : std::nullopt, c.params);
  if (c.saved_rstd) {
    // What the forward saved: the exact rstd rounded once to fp32 (fp64 for f64).
    in.rstd = make_vector(c.x == DType::f64 ? DType::f64 : DType::f32, total_rows);
    for (std::int64_t i = 0; i < total_rows; ++i)
      store_from_double(in.rstd->view.data, in.rstd->view.dtype, i, expected.rstd[static_cast<std::size_t>(i)]);
  }

  const Run a = run_once(c, in, dev, 0xFF);
  if (a.unsupported) {
    r.skipped = true;
    return r;
  }
  if (!a.error.empty()) {
    r.failed = true;
    r.cmp.worst_ratio = INFINITY;  // nothing to compare: as bad as it gets
    r.problem = a.error;
    return r;
  }

  const HostBuffer& got = c.in_place ? a.after.dy : *a.after.dx;
  bool values_ok = true;
  std::string what;
  if (total_rows > 0) {  // an empty batch has no dx to compare
    r.cmp = ref::compare_scaled(got.view, expected.dx, expected.dx_scale, ref::dx_tolerance(c.x, c.cols));
    if (!r.cmp.passed()) {
      values_ok = false;
      what = "dx " + r.cmp.describe();
    }
  }
  if (a.after.dw) {
    const ref::Comparison dwc = ref::compare_vector_scaled(a.after.dw->view.data, *c.dw, expected.dw, expected.dw_scale,
                                                           ref::dw_tolerance(c.x, *c.dw, total_rows, c.cols));
    if (!dwc.passed()) {
      if (values_ok) what = "dw " + dwc.describe();
      values_ok = false;
    }
    ref::merge(r.cmp, dwc);
  }

  std::int64_t stray = ref::count_stray_writes(got.bytes, got.view);
  if (a.after.dw) stray += ref::count_stray_writes(a.after.dw->bytes, a.after.dw->view);
  std::string changed;  // an input the call must not write
  if (a.after.x.bytes != in.x.bytes)
    changed = "x";
  else if (!c.in_place && a.after.dy.bytes != in.dy.bytes)
    changed = "dy";
  else if (in.w && a.after.w->bytes != in.w->bytes)
    changed = "the weight";
  else if (in.rstd && a.after.rstd->bytes != in.rstd->bytes)
    changed = "rstd";

  std::string differs;  // a second run that gave other bytes
  if (c.twice) {
    const Run b = run_once(c, in, dev, 0x00);
    if (!b.error.empty())
      differs = "the second run " + b.error;
    else if ((c.in_place ? b.after.dy : *b.after.dx).bytes != got.bytes)
      differs = "dx differs between two runs";
    else if (a.after.dw && b.after.dw->bytes != a.after.dw->bytes)
      differs = "dw differs between two runs";
  }

  r.failed = !values_ok || stray != 0 || !changed.empty() || !differs.empty();
  if (!values_ok)
    r.problem = what;
  else if (stray)
    r.problem = std::to_string(stray) + " bytes written outside the dx and dw views";
  else if (!changed.empty())
    r.problem = changed + " was modified by the backward";
  else
    r.problem = differs;
  return r;
}

}  // namespace rmsnorm::cli
