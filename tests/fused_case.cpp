#include "fused_case.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "support.h"
#include "tolerances.h"

namespace rmsnorm::testing {

std::string FusedCase::describe() const {
  char buf[768];
  std::string q = "none";
  if (quant) {
    q = std::string(quant_scale_name(quant->kind)) + "/" + dtype_name(quant->q);
    if (quant->kind == QuantScale::per_group) q += "/g" + std::to_string(quant->group_size);
    if (quant->column_major) q += "/colmajor";
    if (quant->scale_pad) q += "/spad" + std::to_string(quant->scale_pad);
    if (quant->pow2) q += "/pow2";
    if (quant->scale_ub) q += "/ub" + std::to_string(*quant->scale_ub);
    if (quant->division != QuantDivision::exact) q += std::string("/") + quant_division_name(quant->division);
  }
  std::snprintf(buf, sizeof buf,
                "x=%s r=%s w=%s y=%s quant=%s cast=%s offset=%g rstd=%s (%lldx%lldx%lld) gap=%lld "
                "pads(x,r,r_out,y)=(%lld,%lld,%lld,%lld) leads(x,r,r_out,y,w)=(%lld,%lld,%lld,%lld,%lld)%s%s "
                "eps=%g scale=%g zero_rows=%zu%s%s",
                dtype_name(x), residual ? dtype_name(*residual) : "none", w ? dtype_name(*w) : "none", dtype_name(y),
                q.c_str(), cast == Cast::fp32 ? "fp32" : "llama", offset, rstd ? "yes" : "no",
                static_cast<long long>(batch), static_cast<long long>(rows), static_cast<long long>(cols),
                static_cast<long long>(batch_gap), static_cast<long long>(x_pad), static_cast<long long>(r_pad),
                static_cast<long long>(r_out_pad), static_cast<long long>(y_pad), static_cast<long long>(x_lead),
                static_cast<long long>(r_lead), static_cast<long long>(r_out_lead), static_cast<long long>(y_lead),
                static_cast<long long>(w_lead), y_in_place ? " y-in-place" : "",
                residual_in_place ? " residual-in-place" : "", eps, scale, zero_rows.size(),
                strategy == Strategy::automatic ? "" : " strategy=",
                strategy == Strategy::automatic ? "" : strategy_name(strategy));
  return buf;
}

std::vector<FusedCase> residual_combos(Backend b) {
  std::vector<FusedCase> out;
  for (const Combo& combo : allowed_combos(b)) {
    std::vector<DType> residuals = {combo.x};
    if (combo.x == DType::f16 || combo.x == DType::bf16) residuals.push_back(DType::f32);
    for (DType r : residuals) {
      FusedCase c;
      c.x = combo.x;
      c.w = combo.w;
      c.y = combo.y;
      c.residual = r;
      out.push_back(c);
    }
  }
  return out;
}

std::vector<double> gather_scales(const FusedCase& c, const HostTensor& scales) {
  const std::int64_t m = c.batch * c.rows;
  std::vector<double> out;
  const QuantCase& q = *c.quant;
  const TensorView& v = scales.view;
  if (q.kind != QuantScale::per_group) {
    for (std::int64_t i = 0; i < m; ++i)
      out.push_back(load_as_double(v.data, DType::f32, q.kind == QuantScale::per_row ? i : 0));
    return out;
  }
  const std::int64_t groups = c.cols / q.group_size;
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t g = 0; g < groups; ++g)
      out.push_back(load_as_double(v.data, DType::f32, q.column_major ? g * v.row_stride + i : i * v.row_stride + g));
  return out;
}

namespace {

constexpr std::int64_t kTrail = 3;

std::uint64_t seed_for(const FusedCase& c) {
  return seed_of({static_cast<int>(c.x), c.w ? static_cast<int>(*c.w) : -1, static_cast<int>(c.y),
                  c.residual ? static_cast<int>(*c.residual) : -1, c.quant ? static_cast<int>(c.quant->kind) : -1,
                  c.quant ? static_cast<int>(c.quant->q) : -1, static_cast<int>(c.cast),
                  static_cast<std::int64_t>(c.offset), c.batch, c.rows, c.cols, c.x_pad, c.r_pad, c.x_lead,
                  static_cast<std::int64_t>(c.scale * 1e3), static_cast<std::int64_t>(c.eps * 1e9)});
}

// A (batch, rows, cols) tensor with row_stride cols + pad and batch_gap between batches.
HostTensor make_view(const FusedCase& c, DType t, std::int64_t pad, std::int64_t lead) {
  const std::int64_t rs = c.cols + pad;
  return make_tensor(t, c.batch, c.rows, c.cols, c.rows * rs + c.batch_gap, rs, lead, kTrail);
}

// A copy of `from` whose view points into the copy's own bytes.
HostTensor alias_copy(const HostTensor& from) {
  HostTensor t = from;
  t.view.data = t.bytes.data() + (static_cast<const unsigned char*>(from.view.data) - from.bytes.data());
  return t;
}

void zero_rows(const TensorView& v, const std::vector<std::int64_t>& rows) {
  for (std::int64_t row : rows) {
    const std::int64_t b = row / v.rows, r = row % v.rows;
    for (std::int64_t j = 0; j < v.cols; ++j)
      store_from_double(v.data, v.dtype, b * v.batch_stride + r * v.row_stride + j, 0.0);
  }
}

struct Views {
  TensorView x;
  std::optional<TensorView> r, r_out, w, rstd;
  TensorView y;
  std::optional<Quant> quant;
};

void call(const Views& v, const Params& p, FusedOutcome& out) {
  try {
    if (v.r && v.quant)
      fused_add_quant_forward(v.x, *v.r, v.w, v.y, *v.r_out, *v.quant, p, v.rstd);
    else if (v.r)
      fused_add_forward(v.x, *v.r, v.w, v.y, *v.r_out, p, v.rstd);
    else if (v.quant)
      quant_forward(v.x, v.w, v.y, *v.quant, p, v.rstd);
    else
      forward(v.x, v.w, v.y, p, v.rstd);
    out.ran = true;
  } catch (const Error& e) {
    out.refused = true;
    out.code = e.code();
    out.message = e.what();
  }
}

}  // namespace

FusedOutcome run_fused_case(Backend b, const FusedCase& c) {
  FusedOutcome out;
  const std::uint64_t seed = seed_for(c);
  const std::int64_t m = c.batch * c.rows;
  out.x = make_view(c, c.x, c.x_pad, c.x_lead);
  reference::fill_normal(out.x.view, seed, 0.0, c.scale);
  zero_rows(out.x.view, c.zero_rows);
  const bool add = c.residual.has_value();
  if (add) {
    out.r = make_view(c, *c.residual, c.r_pad, c.r_lead);
    reference::fill_normal(out.r.view, seed + 2);
    zero_rows(out.r.view, c.zero_rows);
  }
  std::optional<HostTensor> w;
  if (c.w) {
    w = make_vector(*c.w, c.cols, c.w_lead, kTrail);
    // As in forward_case: Llama-style weights near 1, Gemma-style ones near 0.
    if (c.offset == 0.0)
      reference::fill_normal(w->view, seed + 1, 1.0, 0.5);
    else
      reference::fill_normal(w->view, seed + 1, 0.0, 0.25);
  }
  Params p;
  p.eps = c.eps;
  p.weight_offset = c.offset;
  p.cast = c.cast;
  p.strategy = c.strategy;
  const std::optional<TensorView> wv = w ? std::optional<TensorView>(w->view) : std::nullopt;
  if (add) {
    out.ref = reference::fused_add_forward(out.x.view, out.r.view, wv, p);
  } else {
    out.ref.norm = reference::forward(out.x.view, wv, c.y, p);
  }

  const DType out_dtype = c.quant ? c.quant->q : c.y;
  const bool y_in_place = c.y_in_place && !c.quant;
  if (!y_in_place) out.y = make_view(c, out_dtype, c.y_pad, c.y_lead);
  if (add && !c.residual_in_place) out.r_out = make_view(c, *c.residual, c.r_out_pad, c.r_out_lead);
  const DType rstd_dtype = c.x == DType::f64 ? DType::f64 : DType::f32;
  if (c.rstd) out.rstd = make_vector(rstd_dtype, m, 16 / dtype_size(rstd_dtype), kTrail);

  std::optional<Quant> quant;
  if (c.quant) {
    const QuantCase& qc = *c.quant;
    const double qmax = quant_max(qc.q);
    Quant q;
    q.kind = qc.kind;
    q.group_size = qc.group_size;
    q.column_major_scales = qc.column_major;
    q.pow2_scales = qc.pow2;
    q.division = qc.division;
    if (qc.kind == QuantScale::static_tensor) {
      double amax = 0.0;
      for (double v : out.ref.norm.y) amax = std::max(amax, std::fabs(v));
      out.scales = make_vector(DType::f32, 1, 0, kTrail);
      store_from_double(out.scales.view.data, DType::f32, 0, amax > 0 ? qc.static_fraction * amax / qmax : 1.0);
    } else if (qc.kind == QuantScale::per_row) {
      out.scales = make_vector(DType::f32, m, 1, kTrail);
    } else {
      const std::int64_t groups = c.cols / qc.group_size;
      out.scales = qc.column_major ? make_tensor(DType::f32, 1, groups, m, -1, m + qc.scale_pad, 0, kTrail)
                                   : make_tensor(DType::f32, 1, m, groups, -1, groups + qc.scale_pad, 0, kTrail);
    }
    q.scales = out.scales.view;
    if (qc.scale_ub) {
      out.scale_ub = make_vector(DType::f32, 1, 0, kTrail);
      store_from_double(out.scale_ub.view.data, DType::f32, 0, *qc.scale_ub);
      q.scale_ub = out.scale_ub.view;
    }
    quant = q;
  }

  const std::vector<unsigned char> x_before = out.x.bytes, r_before = out.r.bytes;
  const std::vector<unsigned char> w_before = w ? w->bytes : std::vector<unsigned char>{};
  const std::vector<unsigned char> scales_before = out.scales.bytes, ub_before = out.scale_ub.bytes;

  if (b == Backend::cpu) {
    Views v{out.x.view, std::nullopt, std::nullopt, wv, std::nullopt, y_in_place ? out.x.view : out.y.view, quant};
    if (add) {
      v.r = out.r.view;
      v.r_out = c.residual_in_place ? out.r.view : out.r_out.view;
    }
    if (c.rstd) v.rstd = out.rstd.view;
    call(v, p, out);
  } else {
    DeviceMirror dx(out.x);
    std::optional<DeviceMirror> dr, dro, dw, dy, drs, dsc, dub;
    if (add) dr.emplace(out.r);
    if (add && !c.residual_in_place) dro.emplace(out.r_out);
    if (w) dw.emplace(*w);
    if (!y_in_place) dy.emplace(out.y);
    if (c.rstd) drs.emplace(out.rstd);
    std::optional<Quant> dq = quant;
    if (quant) {
      dsc.emplace(out.scales);
      dq->scales = dsc->view;
      if (quant->scale_ub) {
        dub.emplace(out.scale_ub);
        dq->scale_ub = dub->view;
      }
    }
    Views v{dx.view,
            std::nullopt,
            std::nullopt,
            dw ? std::optional<TensorView>(dw->view) : std::nullopt,
            std::nullopt,
            dy ? dy->view : dx.view,
            dq};
    if (add) {
      v.r = dr->view;
      v.r_out = dro ? dro->view : dr->view;
    }
    if (drs) v.rstd = drs->view;
    call(v, p, out);
    device_synchronize();
    dx.download_into(out.x);
    if (dr) dr->download_into(out.r);
    if (dro) dro->download_into(out.r_out);
    if (dy) dy->download_into(out.y);
    if (drs) drs->download_into(out.rstd);
    if (dsc) dsc->download_into(out.scales);
  }
  if (y_in_place) out.y = alias_copy(out.x);
  if (add && c.residual_in_place) out.r_out = alias_copy(out.r);

  if (out.refused) {
    const bool untouched = out.x.bytes == x_before && out.r.bytes == r_before && out.scales.bytes == scales_before &&
                           (y_in_place || all_poisoned(out.y.bytes)) &&
                           (!add || c.residual_in_place || all_poisoned(out.r_out.bytes)) &&
                           (!c.rstd || all_poisoned(out.rstd.bytes));
    if (!untouched) out.changed = "a buffer (the call was refused)";
    return out;
  }

  if (add) {
    // Rounded once from the same exact sum: bit for bit.
    out.r_out_cmp = reference::compare(out.r_out.view, out.ref.r_out, reference::Tolerance{0.0, 1e-300});
    out.stray += reference::count_stray_writes(out.r_out.bytes, out.r_out.view);
  }
  if (!c.quant) {
    out.y_cmp = reference::compare(out.y.view, out.ref.norm.y, reference::forward_tolerance(c.x, c.y, c.cast, c.cols));
  } else {
    const QuantCase& qc = *c.quant;
    const reference::Tolerance y_tol = reference::quant_y_tolerance(c.x, c.w, c.cast, c.cols);
    const std::int64_t group = qc.kind == QuantScale::per_group ? qc.group_size : c.cols;
    out.used_scales = gather_scales(c, out.scales);
    if (qc.kind != QuantScale::static_tensor) {
      reference::QuantSpec spec;
      spec.kind = qc.kind;
      spec.q = qc.q;
      spec.group_size = group;
      spec.scale_ub = qc.scale_ub;
      out.ref_scales = reference::quant_scales(out.ref.norm.y, m, c.cols, spec);  // unrounded (pow2 off)
      out.scales_cmp =
          reference::compare_scales(out.used_scales, out.ref_scales, reference::quant_scale_tolerance(y_tol), qc.pow2);
      out.stray += reference::count_stray_writes(out.scales.bytes, out.scales.view);
    }
    out.y_cmp = reference::compare_quantized(out.y.view, out.ref.norm.y, out.used_scales, group, y_tol, qc.division);
  }
  out.stray += reference::count_stray_writes(out.y.bytes, out.y.view);
  if (c.rstd) {
    out.rstd_cmp = reference::compare_vector(out.rstd.view.data, rstd_dtype, out.ref.norm.rstd,
                                             reference::rstd_tolerance(c.x, c.cols));
    out.stray += reference::count_stray_writes(out.rstd.bytes, out.rstd.view);
  }
  if (!y_in_place && out.x.bytes != x_before) out.changed = "x";
  if (add && !c.residual_in_place && out.r.bytes != r_before) out.changed = "the residual";
  if (w && w->bytes != w_before) out.changed = "the weight";
  if (c.quant && c.quant->kind == QuantScale::static_tensor && out.scales.bytes != scales_before)
    out.changed = "the static scale";
  if (out.scale_ub.bytes != ub_before) out.changed = "scale_ub";
  return out;
}

bool check_fused_case(Backend b, const FusedCase& c, bool* skipped) {
  const FusedOutcome o = run_fused_case(b, c);
  const std::string where = std::string(backend_name(b)) + " " + c.describe();
  // CUDA takes one max and one scale per 16-byte chunk of the row the norm reads (x, or r_out
  // with the residual add): per-group scales need groups of whole chunks there (8 columns of
  // a 16-bit row, 4 of an f32 one); other sizes are refused by name.
  const std::int64_t chunk = 16 / static_cast<std::int64_t>(dtype_size(c.residual ? *c.residual : c.x));
  if (b == Backend::cuda && c.quant && c.quant->kind == QuantScale::per_group && c.quant->group_size < c.cols &&
      c.quant->group_size % chunk != 0) {
    EXPECT_TRUE(o.refused && o.code == Code::unsupported && o.message.find("group_size: on CUDA") == 0)
        << where << ": expected CUDA to refuse the group size, got "
        << (o.refused ? code_name(o.code) + std::string(": ") + o.message : std::string("a result"));
    EXPECT_TRUE(o.changed.empty()) << where << ": a refused call wrote " << o.changed;
    return o.refused && o.code == Code::unsupported && o.changed.empty();
  }
  if (o.refused && b == Backend::cuda && o.code == Code::unsupported &&
      (o.message.find("not yet implemented on CUDA") != std::string::npos ||
       (c.strategy != Strategy::automatic && o.message.find("strategy: ") == 0))) {
    if (skipped) *skipped = true;
    EXPECT_TRUE(o.changed.empty()) << where << ": a refused call wrote " << o.changed;
    return o.changed.empty();
  }
  if (o.refused) {
    ADD_FAILURE() << where << ": refused with " << code_name(o.code) << ": " << o.message;
    return false;
  }
  bool ok = true;
  const auto expect = [&](bool good, const std::string& what) {
    if (!good) ADD_FAILURE() << where << ": " << what;
    ok = ok && good;
  };
  expect(o.y_cmp.passed(),
         std::string(c.quant ? "q " : "y ") + o.y_cmp.describe() + " of " + std::to_string(o.y_cmp.checked));
  if (c.residual) expect(o.r_out_cmp.passed(), "r_out not bit-identical to the oracle's: " + o.r_out_cmp.describe());
  if (c.quant && c.quant->kind != QuantScale::static_tensor)
    expect(o.scales_cmp.passed(), "scales " + o.scales_cmp.describe());
  if (c.rstd) expect(o.rstd_cmp.passed(), "rstd " + o.rstd_cmp.describe());
  expect(o.stray == 0, std::to_string(o.stray) + " bytes written outside the outputs' elements");
  expect(o.changed.empty(), o.changed + " changed");
  return ok;
}

}  // namespace rmsnorm::testing
