// Runs the fused cases of `rmsnorm check` (check_fused_cases.cpp): the residual add, the
// quantised output and the residual add's backward, each against the fp64 oracle
// (reference::fused_add_forward, quant_scales / compare_quantized, fused_add_backward) with
// the same poisoned buffers, device round trip and stray-write count as the plain cases.
//
//   r_out    bit for bit (the exact sum rounded once, as the library rounds its fp32 sum)
//   y        forward_tolerance;  q: compare_quantized against the scales the call used
//   scales   compare_scales under quant_scale_tolerance (pow2: the power of two of a scale
//            within the tolerance)
//   dx, dr   compare_scaled under dx_tolerance of their dtypes;  dw: dw_tolerance
#include <algorithm>
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

// A third stream of inputs for a case (the residual, dr_out), apart from the seeds s, s+1
// (and s+2) its plain counterpart draws from.
std::uint64_t third_seed(std::uint64_t seed) { return seed ^ 0x9e3779b97f4a7c15ull; }

std::optional<TensorView> view_of(const std::optional<Mirror>& m) {
  return m ? std::optional<TensorView>(m->view) : std::nullopt;
}

// The scales a quantised call used, (rows, groups) row-major.
std::vector<double> used_scales(const QuantCheck& q, const HostBuffer& s, std::int64_t rows, std::int64_t cols) {
  std::vector<double> out;
  if (q.kind != QuantScale::per_group) {
    for (std::int64_t i = 0; i < rows; ++i)
      out.push_back(load_as_double(s.view.data, DType::f32, q.kind == QuantScale::per_row ? i : 0));
    return out;
  }
  const std::int64_t groups = cols / q.group_size;
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t g = 0; g < groups; ++g)
      out.push_back(load_as_double(s.view.data, DType::f32,
                                   q.column_major ? g * s.view.row_stride + i : i * s.view.row_stride + g));
  return out;
}

}  // namespace

CaseResult run_fused_forward_case(const CheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  CaseResult r;
  const std::int64_t m = c.batch * c.rows;
  HostBuffer x = make_buffer(c.x, c.batch, c.rows, c.cols, c.x_at);
  ref::fill_normal(x.view, seed, 0.0, c.x_scale);
  std::optional<HostBuffer> w, res, r_out, y, rstd, scales, ub;
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 1, c.w_mean, c.w_std);
  }
  if (c.residual) {
    res = make_buffer(c.residual->dtype, c.batch, c.rows, c.cols, c.residual->at);
    ref::fill_normal(res->view, third_seed(seed));
    if (!c.residual->in_place) r_out = make_buffer(c.residual->dtype, c.batch, c.rows, c.cols, c.residual->out_at);
  }
  const std::optional<TensorView> wv = w ? std::optional<TensorView>(w->view) : std::nullopt;
  ref::FusedAddResult expected;
  if (res)
    expected = ref::fused_add_forward(x.view, res->view, wv, c.params);
  else
    expected.norm = ref::forward(x.view, wv, c.y, c.params);

  const bool y_in_place = c.in_place && !c.quant;
  if (!y_in_place) y = make_buffer(c.quant ? c.quant->dtype : c.y, c.batch, c.rows, c.cols, c.y_at);
  const DType rstd_type = c.x == DType::f64 ? DType::f64 : DType::f32;
  if (c.rstd) rstd = make_vector(rstd_type, m);
  if (c.quant) {
    const QuantCheck& q = *c.quant;
    if (q.kind == QuantScale::static_tensor) {
      double amax = 0.0;
      for (double v : expected.norm.y) amax = std::max(amax, std::fabs(v));
      scales = make_vector(DType::f32, 1);
      store_from_double(scales->view.data, DType::f32, 0,
                        amax > 0 ? q.static_fraction * amax / quant_max(q.dtype) : 1.0);
    } else if (q.kind == QuantScale::per_row) {
      scales = make_vector(DType::f32, m);
    } else {
      const std::int64_t groups = c.cols / q.group_size;
      scales = q.column_major ? make_buffer(DType::f32, 1, groups, m, {}) : make_buffer(DType::f32, 1, m, groups, {});
    }
    if (q.scale_ub) {
      ub = make_vector(DType::f32, 1);
      store_from_double(ub->view.data, DType::f32, 0, *q.scale_ub);
    }
  }
  const std::vector<unsigned char> x_before = x.bytes;
  const std::vector<unsigned char> res_before = res ? res->bytes : std::vector<unsigned char>{};

  const auto up = [&](const std::optional<HostBuffer>& h) {
    return h ? std::optional<Mirror>(mirror(*h, dev)) : std::nullopt;
  };
  Mirror dx = mirror(x, dev);
  std::optional<Mirror> dw = up(w), dres = up(res), drout = up(r_out), dy = up(y), drstd = up(rstd),
                        dscales = up(scales), dub = up(ub);
  try {
    const TensorView out = dy ? dy->view : dx.view;
    const TensorView rout = drout ? drout->view : (dres ? dres->view : TensorView{});
    if (c.quant) {
      Quant q;
      q.kind = c.quant->kind;
      q.scales = dscales->view;
      q.group_size = c.quant->group_size;
      q.column_major_scales = c.quant->column_major;
      q.pow2_scales = c.quant->pow2;
      q.division = c.quant->division;
      q.scale_ub = view_of(dub);
      if (dres)
        fused_add_quant_forward(dx.view, dres->view, view_of(dw), out, rout, q, c.params, view_of(drstd));
      else
        quant_forward(dx.view, view_of(dw), out, q, c.params, view_of(drstd));
    } else {
      fused_add_forward(dx.view, dres->view, view_of(dw), out, rout, c.params, view_of(drstd));
    }
    synchronize(dev.device, "rmsnorm fused forward");
  } catch (const Error& e) {
    r.cmp.worst_ratio = INFINITY;
    fail_with(r, std::string("threw ") + code_name(e.code()) + ": " + e.what());
    return r;
  }
  download(dx, x);
  for (auto [m_, h_] : {std::pair{&dres, &res}, {&drout, &r_out}, {&dy, &y}, {&drstd, &rstd}, {&dscales, &scales}})
    if (*m_) download(**m_, **h_);

  std::int64_t stray = 0;
  if (res) {  // r_out: the exact sum rounded once, bit for bit
    const HostBuffer& got = r_out ? *r_out : *res;
    const ref::Comparison rc = ref::compare(got.view, expected.r_out, ref::Tolerance{0.0, 1e-300});
    if (!rc.passed()) fail_with(r, "r_out not bit-identical to the oracle's: " + rc.describe());
    ref::merge(r.cmp, rc);
    stray += ref::count_stray_writes(got.bytes, got.view);
  }
  const HostBuffer& out = y ? *y : x;
  if (!c.quant) {
    const ref::Comparison yc =
        ref::compare(out.view, expected.norm.y, ref::forward_tolerance(c.x, c.y, c.params.cast, c.cols));
    if (!yc.passed()) fail_with(r, "y " + yc.describe());
    ref::merge(r.cmp, yc);
  } else {
    const QuantCheck& q = *c.quant;
    const ref::Tolerance y_tol = ref::quant_y_tolerance(c.x, c.weight, c.params.cast, c.cols);
    const std::int64_t group = q.kind == QuantScale::per_group ? q.group_size : c.cols;
    const std::vector<double> used = used_scales(q, *scales, m, c.cols);
    if (q.kind != QuantScale::static_tensor) {
      ref::QuantSpec spec;
      spec.kind = q.kind;
      spec.q = q.dtype;
      spec.group_size = group;
      spec.scale_ub = q.scale_ub;  // pow2 off: compare_scales rounds the tolerance interval
      const ref::Comparison sc = ref::compare_scales(used, ref::quant_scales(expected.norm.y, m, c.cols, spec),
                                                     ref::quant_scale_tolerance(y_tol), q.pow2);
      if (!sc.passed()) fail_with(r, "scales " + sc.describe());
      ref::merge(r.cmp, sc);
      stray += ref::count_stray_writes(scales->bytes, scales->view);
    }
    const ref::Comparison qc = ref::compare_quantized(out.view, expected.norm.y, used, group, y_tol, q.division);
    if (!qc.passed()) fail_with(r, "q " + qc.describe());
    ref::merge(r.cmp, qc);
  }
  stray += ref::count_stray_writes(out.bytes, out.view);
  if (rstd) stray += check_rstd(r, *rstd, rstd_type, expected.norm.rstd, c.x, c.cols);
  if (stray) fail_with(r, std::to_string(stray) + " bytes written outside the outputs' views");
  if (!y_in_place && x.bytes != x_before) fail_with(r, "x was modified");
  if (res && !c.residual->in_place && res->bytes != res_before) fail_with(r, "the residual was modified");
  return r;
}

CaseResult run_fused_backward_case(const BackwardCheckCase& c, const RunDevice& dev, std::uint64_t seed) {
  CaseResult r;
  const DType rt = *c.residual;
  const std::int64_t m = c.batch * c.rows;
  HostBuffer r_out = make_buffer(rt, c.batch, c.rows, c.cols, c.x_at);
  HostBuffer dy = make_buffer(c.x, c.batch, c.rows, c.cols, c.dy_at);
  HostBuffer dr_out = make_buffer(rt, c.batch, c.rows, c.cols, {});
  ref::fill_normal(r_out.view, seed, 0.0, c.x_scale);
  ref::fill_normal(dy.view, seed + 1);
  ref::fill_normal(dr_out.view, third_seed(seed), 0.0, 0.5);
  std::optional<HostBuffer> dx, dr, w, dw, rstd;
  if (!c.in_place) dx = make_buffer(c.x, c.batch, c.rows, c.cols, c.dx_at);
  if (c.want_dr) dr = make_buffer(rt, c.batch, c.rows, c.cols, {});
  if (c.weight) {
    w = make_vector(*c.weight, c.cols);
    ref::fill_normal(w->view, seed + 2, c.w_mean, c.w_std);
    if (c.dw) dw = make_vector(*c.dw, c.cols);
  }
  const ref::BackwardResult expected = ref::fused_add_backward(
      dy.view, dr_out.view, r_out.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.params);
  if (c.saved_rstd) {
    rstd = make_vector(rt == DType::f64 ? DType::f64 : DType::f32, m);
    for (std::int64_t i = 0; i < m; ++i)
      store_from_double(rstd->view.data, rstd->view.dtype, i, expected.rstd[static_cast<std::size_t>(i)]);
  }
  const std::vector<unsigned char> r_before = r_out.bytes, dy_before = dy.bytes, dr_out_before = dr_out.bytes;

  // One call with every output poisoned and a workspace of stale bytes.
  struct Run {
    std::optional<HostBuffer> dx, dr, dw, dr_out, r_out, dy;
  };
  const auto run_once = [&](unsigned char stale) -> Run {
    const auto up = [&](const std::optional<HostBuffer>& h) {
      return h ? std::optional<Mirror>(mirror(*h, dev)) : std::nullopt;
    };
    Mirror mr = mirror(r_out, dev), mdy = mirror(dy, dev), mdro = mirror(dr_out, dev);
    std::optional<Mirror> mdx = up(dx), mdr = up(dr), mw = up(w), mdw = up(dw), mrs = up(rstd);
    const std::size_t bytes = backward_workspace_size(mr.view, view_of(mdw), c.params);
    DeviceBuffer ws(dev.device, bytes);
    const std::vector<unsigned char> stale_bytes(bytes, stale);
    ws.upload(stale_bytes.data(), bytes);
    fused_add_backward(mdy.view, mdro.view, mr.view, view_of(mw), view_of(mrs), c.in_place ? mdro.view : mdx->view,
                       view_of(mdr), view_of(mdw), c.params, ws.data(), bytes, nullptr);
    synchronize(dev.device, "rmsnorm::fused_add_backward");
    Run out{dx, dr, dw, dr_out, r_out, dy};
    if (mdx) download(*mdx, *out.dx);
    if (mdr) download(*mdr, *out.dr);
    if (mdw) download(*mdw, *out.dw);
    download(mdro, *out.dr_out);
    download(mr, *out.r_out);
    download(mdy, *out.dy);
    return out;
  };
  Run a;
  try {
    a = run_once(0xFF);
  } catch (const Error& e) {
    r.cmp.worst_ratio = INFINITY;
    fail_with(r, std::string("threw ") + code_name(e.code()) + ": " + e.what());
    return r;
  }
  // Copies re-point their views into their own bytes.
  const auto rebase = [](HostBuffer& b, const HostBuffer& like) {
    b.view.data = b.bytes.data() + (static_cast<const unsigned char*>(like.view.data) - like.bytes.data());
  };
  for (auto [got, like] : {std::pair{&a.dx, &dx}, {&a.dr, &dr}, {&a.dw, &dw}})
    if (*got) rebase(**got, **like);
  rebase(*a.dr_out, dr_out);

  const HostBuffer& got_dx = c.in_place ? *a.dr_out : *a.dx;
  std::int64_t stray = 0;
  if (m > 0) {
    const ref::Comparison dxc =
        ref::compare_scaled(got_dx.view, expected.dx, expected.dx_scale, ref::dx_tolerance(c.x, c.cols));
    if (!dxc.passed()) fail_with(r, "dx " + dxc.describe());
    ref::merge(r.cmp, dxc);
    stray += ref::count_stray_writes(got_dx.bytes, got_dx.view);
    if (a.dr) {
      const ref::Comparison drc =
          ref::compare_scaled(a.dr->view, expected.dx, expected.dx_scale, ref::dx_tolerance(rt, c.cols));
      if (!drc.passed()) fail_with(r, "dr " + drc.describe());
      ref::merge(r.cmp, drc);
      stray += ref::count_stray_writes(a.dr->bytes, a.dr->view);
    }
  }
  if (a.dw) {
    const ref::Comparison dwc = ref::compare_vector_scaled(a.dw->view.data, *c.dw, expected.dw, expected.dw_scale,
                                                           ref::dw_tolerance(rt, *c.dw, m, c.cols));
    if (!dwc.passed()) fail_with(r, "dw " + dwc.describe());
    ref::merge(r.cmp, dwc);
    stray += ref::count_stray_writes(a.dw->bytes, a.dw->view);
  }
  if (stray) fail_with(r, std::to_string(stray) + " bytes written outside the dx, dr and dw views");
  if (a.r_out->bytes != r_before) fail_with(r, "r_out was modified");
  if (a.dy->bytes != dy_before) fail_with(r, "dy was modified");
  if (!c.in_place && a.dr_out->bytes != dr_out_before) fail_with(r, "dr_out was modified");
  if (c.twice) {
    const Run b = run_once(0x00);
    if ((c.in_place ? b.dr_out->bytes : b.dx->bytes) != got_dx.bytes) fail_with(r, "dx differs between two runs");
    if (a.dw && b.dw->bytes != a.dw->bytes) fail_with(r, "dw differs between two runs");
  }
  return r;
}

}  // namespace rmsnorm::cli
