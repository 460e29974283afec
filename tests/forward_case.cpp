#include "forward_case.h"

#include <gtest/gtest.h>

#include <cstdio>

#include "support.h"

namespace rmsnorm::testing {

const char* backend_name(Backend b) { return b == Backend::cpu ? "cpu" : "cuda"; }

std::string Combo::name() const {
  return std::string(dtype_name(x)) + "_" + (w ? dtype_name(*w) : "none") + "_" + dtype_name(y);
}

std::vector<Combo> allowed_combos(Backend b) {
  using D = DType;
  std::vector<Combo> out = {
      {D::f32, D::f32, D::f32},         {D::f32, std::nullopt, D::f32}, {D::f16, D::f16, D::f16},
      {D::f16, D::f32, D::f16},         {D::f16, D::f32, D::f32},       {D::f16, std::nullopt, D::f16},
      {D::bf16, D::bf16, D::bf16},      {D::bf16, D::f32, D::bf16},     {D::bf16, D::f32, D::f32},
      {D::bf16, std::nullopt, D::bf16},
  };
  if (b == Backend::cpu) {
    out.push_back({D::f64, D::f64, D::f64});
    out.push_back({D::f64, std::nullopt, D::f64});
  }
  return out;
}

std::string Case::describe() const {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "x=%s w=%s y=%s cast=%s offset=%g rstd=%s batch=%lld rows=%lld cols=%lld "
                "batch_stride=%lld row_stride=%lld lead(x,y,w)=(%lld,%lld,%lld)%s eps=%g scale=%g "
                "strategy=%s",
                dtype_name(combo.x), combo.w ? dtype_name(*combo.w) : "none", dtype_name(combo.y),
                cast == Cast::fp32 ? "fp32" : "llama", offset, rstd ? "yes" : "no", static_cast<long long>(batch),
                static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(batch_stride),
                static_cast<long long>(row_stride), static_cast<long long>(x_lead), static_cast<long long>(y_lead),
                static_cast<long long>(w_lead), in_place ? " in-place" : "", eps, scale, strategy_name(strategy));
  return buf;
}

namespace {

std::uint64_t seed_for(const Case& c) {
  return seed_of({static_cast<int>(c.combo.x), c.combo.w ? static_cast<int>(*c.combo.w) : -1,
                  static_cast<int>(c.combo.y), static_cast<int>(c.cast), static_cast<std::int64_t>(c.offset), c.batch,
                  c.rows, c.cols, c.batch_stride, c.row_stride, c.x_lead, static_cast<std::int64_t>(c.scale * 1e3),
                  static_cast<std::int64_t>(c.eps * 1e9)});
}

// Runs forward on the backend; the host tensors receive what the call wrote.
void run_backend(Backend b, const Case& c, HostTensor& x, const HostTensor* w, HostTensor* y, HostTensor* rstd,
                 const Params& p, Outcome& out) {
  auto call = [&](const TensorView& xv, const std::optional<TensorView>& wv, const TensorView& yv,
                  const std::optional<TensorView>& rv) {
    try {
      forward(xv, wv, yv, p, rv);
      out.ran = true;
    } catch (const Error& e) {
      out.refused = true;
      out.code = e.code();
      out.message = e.what();
    }
  };
  if (b == Backend::cpu) {
    call(x.view, w ? std::optional<TensorView>(w->view) : std::nullopt, y ? y->view : x.view,
         rstd ? std::optional<TensorView>(rstd->view) : std::nullopt);
    return;
  }
  DeviceMirror dx(x);
  std::optional<DeviceMirror> dw, dy, dr;
  if (w) dw.emplace(*w);
  if (y) dy.emplace(*y);
  if (rstd) dr.emplace(*rstd);
  const TensorView yv = dy ? dy->view : dx.view;
  if (c.strategy != Strategy::automatic) {
    try {
      const Plan plan = plan_forward(dx.view, dw ? std::optional<TensorView>(dw->view) : std::nullopt, yv, c.strategy);
      EXPECT_EQ(plan.strategy, c.strategy) << "plan_forward did not keep the forced strategy";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Code::unsupported) << e.what();
      out.plan_refused = true;
    }
  }
  call(dx.view, dw ? std::optional<TensorView>(dw->view) : std::nullopt, yv,
       dr ? std::optional<TensorView>(dr->view) : std::nullopt);
  device_synchronize();
  dx.download_into(x);
  if (dy) dy->download_into(*y);
  if (dr) dr->download_into(*rstd);
}

}  // namespace

Outcome run_case(Backend b, const Case& c) {
  Outcome out;
  const std::uint64_t seed = seed_for(c);
  out.x = make_tensor(c.combo.x, c.batch, c.rows, c.cols, c.batch_stride, c.row_stride, c.x_lead, c.trail);
  reference::fill_normal(out.x.view, seed, 0.0, c.scale);

  std::optional<HostTensor> w;
  if (c.combo.w) {
    w = make_vector(*c.combo.w, c.cols, c.w_lead, c.trail);
    // Llama-style weights scatter around 1; Gemma-style ones (used as 1 + w) around 0,
    // kept away from -1 where w + 1 would cancel (the oracle adds in fp64, the backends
    // in fp32, and the table has no term for that cancellation).
    if (c.offset == 0.0)
      reference::fill_normal(w->view, seed + 1, 1.0, 0.5);
    else
      reference::fill_normal(w->view, seed + 1, 0.0, 0.25);
  }
  const DType rstd_dtype = c.combo.x == DType::f64 ? DType::f64 : DType::f32;
  if (c.rstd) out.rstd = make_vector(rstd_dtype, c.batch * c.rows, 16 / dtype_size(rstd_dtype), c.trail);

  Params p;
  p.eps = c.eps;
  p.weight_offset = c.offset;
  p.cast = c.cast;
  p.strategy = c.strategy;

  out.ref = reference::forward(out.x.view, w ? std::optional<TensorView>(w->view) : std::nullopt, c.combo.y, p);
  const std::vector<unsigned char> x_before = out.x.bytes;
  if (!c.in_place) {
    const TensorView& xv = out.x.view;
    out.y = make_tensor(c.combo.y, c.batch, c.rows, c.cols, xv.batch_stride, xv.row_stride, c.y_lead, c.trail);
  }

  run_backend(b, c, out.x, w ? &*w : nullptr, c.in_place ? nullptr : &out.y, c.rstd ? &out.rstd : nullptr, p, out);

  if (c.in_place) {  // the result lives in x's buffer: y is a copy of it, same layout
    out.y = out.x;
    out.y.view.data = out.y.bytes.data() + (static_cast<unsigned char*>(out.x.view.data) - out.x.bytes.data());
  }
  out.x_unchanged = c.in_place || out.x.bytes == x_before;
  if (out.refused) {
    out.buffers_untouched =
        (c.in_place ? out.x.bytes == x_before : all_poisoned(out.y.bytes)) && (!c.rstd || all_poisoned(out.rstd.bytes));
    return out;
  }
  out.y_cmp =
      reference::compare(out.y.view, out.ref.y, reference::forward_tolerance(c.combo.x, c.combo.y, c.cast, c.cols));
  out.y_stray = reference::count_stray_writes(out.y.bytes, out.y.view);
  if (c.rstd) {
    out.rstd_cmp = reference::compare_vector(out.rstd.view.data, rstd_dtype, out.ref.rstd,
                                             reference::rstd_tolerance(c.combo.x, c.cols));
    out.rstd_stray = reference::count_stray_writes(out.rstd.bytes, out.rstd.view);
  }
  return out;
}

bool check_case(Backend b, const Case& c) { return check_outcome(b, c, run_case(b, c)); }

bool check_outcome(Backend b, const Case& c, const Outcome& o) {
  const std::string where = std::string(backend_name(b)) + " " + c.describe();
  if (b == Backend::cuda && o.plan_refused && o.refused) {
    // A forced strategy that cannot serve the shape: refused as unsupported, nothing written.
    EXPECT_EQ(o.code, Code::unsupported) << where << ": " << o.message;
    EXPECT_TRUE(o.buffers_untouched) << where << ": a refused call wrote to y or rstd";
    return o.code == Code::unsupported && o.buffers_untouched;
  }
  if (o.refused) {
    ADD_FAILURE() << where << ": refused with " << code_name(o.code) << ": " << o.message;
    return false;
  }
  if (b == Backend::cuda && o.plan_refused) {
    ADD_FAILURE() << where << ": plan_forward refused the forced strategy but forward ran it";
    return false;
  }
  bool ok = true;
  if (!o.y_cmp.passed()) {
    ok = false;
    ADD_FAILURE() << where << ": y " << o.y_cmp.describe() << " of " << o.y_cmp.checked;
  }
  if (o.y_stray != 0) {
    ok = false;
    ADD_FAILURE() << where << ": " << o.y_stray << " bytes written outside y's elements";
  }
  if (!o.x_unchanged) {
    ok = false;
    ADD_FAILURE() << where << ": x changed (out of place)";
  }
  if (c.rstd) {
    if (!o.rstd_cmp.passed()) {
      ok = false;
      ADD_FAILURE() << where << ": rstd " << o.rstd_cmp.describe() << " of " << o.rstd_cmp.checked;
    }
    if (o.rstd_stray != 0) {
      ok = false;
      ADD_FAILURE() << where << ": " << o.rstd_stray << " bytes written outside rstd's elements";
    }
  }
  return ok;
}

bool Sweep::run(const Case& c) {
  if (failed_ >= kMaxFailingCases) return false;
  return judge(c, run_case(backend_, c));
}

bool Sweep::judge(const Case& c, const Outcome& o) {
  if (failed_ >= kMaxFailingCases) return false;
  ++cases_;
  if (!check_outcome(backend_, c, o)) ++failed_;
  return failed_ < kMaxFailingCases;
}

Sweep::~Sweep() {
  if (failed_ >= kMaxFailingCases)
    ADD_FAILURE() << "stopped after " << failed_ << " failing cases (of " << cases_ << " run)";
}

}  // namespace rmsnorm::testing
