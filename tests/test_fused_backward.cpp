// fused_add_backward against the fp64 oracle (reference::fused_add_backward), on the CPU
// and, when a device is there, on CUDA (skipped while its kernel is not written): dx and dr
// over dtypes (an f32 residual with 16-bit x included), weights, saved or recomputed rstd,
// layouts, in place (dx == dy, dx == dr_out, dr == dr_out); dw deterministic; and the bits
// it shares with the plain backward.
#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "backend_test.h"
#include "forward_case.h"
#include "harness.h"
#include "oracle.h"
#include "support.h"
#include "tolerances.h"

namespace rmsnorm::testing {
namespace {

using reference::Comparison;

struct AddBackwardCase {
  DType r = DType::f32;                  // r_out, dr_out, dr
  DType x = DType::bf16;                 // dy, dx
  std::optional<DType> w = DType::bf16;  // none: no weight
  std::optional<DType> dw = DType::f32;  // none: not asked for
  bool want_dr = true;
  std::int64_t batch = 1, rows = 5, cols = 256;
  std::int64_t pad = 0;  // row_stride = cols + pad, different per argument below
  std::int64_t lead = 0;
  bool saved_rstd = false;
  enum class Alias { none, dx_is_dy, dx_is_dr_out, dr_is_dr_out } alias = Alias::none;
  double offset = 0.0;
  bool zero_dr_out = false;  // dr_out all zeros (then dx is the plain backward's dx)
  std::string describe() const {
    static const char* aliases[] = {"", " dx=dy", " dx=dr_out", " dr=dr_out"};
    return std::string("r=") + dtype_name(r) + " x=" + dtype_name(x) + " w=" + (w ? dtype_name(*w) : "none") +
           " dw=" + (dw ? dtype_name(*dw) : "none") + (want_dr ? " dr" : "") + " (" + std::to_string(batch) + "x" +
           std::to_string(rows) + "x" + std::to_string(cols) + ") pad=" + std::to_string(pad) +
           " lead=" + std::to_string(lead) + (saved_rstd ? " rstd" : "") + aliases[static_cast<int>(alias)] +
           " offset=" + std::to_string(offset);
  }
};

struct AddBackwardOutcome {
  bool skipped = false;        // CUDA without the kernel
  bool dtype_refused = false;  // refused an r_out dtype other than dy's, naming r_out (a failure)
  Comparison dx, dr, dw;
  std::int64_t stray = 0;
  bool inputs_unchanged = true;
  HostTensor dx_t, dr_t, dw_t;
  reference::BackwardResult ref;
};

// A copy whose view points into the copy's own bytes.
HostTensor rebased(const HostTensor& from) {
  HostTensor t = from;
  t.view.data = t.bytes.data() + (static_cast<const unsigned char*>(from.view.data) - from.bytes.data());
  return t;
}

HostTensor tensor(const AddBackwardCase& c, DType t, std::int64_t extra_pad) {
  const std::int64_t rs = c.cols + c.pad + extra_pad;
  return make_tensor(t, c.batch, c.rows, c.cols, c.rows * rs + 7 * (c.batch > 1), rs, c.lead, 2);
}

AddBackwardOutcome run(Backend b, const AddBackwardCase& c, std::uint64_t seed) {
  using Alias = AddBackwardCase::Alias;
  // r_out and dr_out in r's dtype; dy and dx in x's; each with its own pitch (pads 0..3).
  HostTensor r_out = tensor(c, c.r, 0), dr_out = tensor(c, c.r, 1), dy = tensor(c, c.x, 2);
  HostTensor dx = tensor(c, c.x, 3), dr = tensor(c, c.r, 1);
  reference::fill_normal(r_out.view, seed);
  reference::fill_normal(dy.view, seed + 1);
  reference::fill_normal(dr_out.view, seed + 2, 0.0, 0.5);
  if (c.zero_dr_out)
    for (std::int64_t i = 0; i < c.batch * c.rows; ++i)
      for (std::int64_t j = 0; j < c.cols; ++j)
        store_from_double(dr_out.view.data, c.r,
                          (i / c.rows) * dr_out.view.batch_stride + (i % c.rows) * dr_out.view.row_stride + j, 0.0);
  std::optional<HostTensor> w, dw;
  if (c.w) {
    w = make_vector(*c.w, c.cols);
    reference::fill_normal(w->view, seed + 3, c.offset == 0.0 ? 1.0 : 0.0, 0.2);
    if (c.dw) dw = make_vector(*c.dw, c.cols, 0, 2);
  }
  Params params;
  params.weight_offset = c.offset;
  const auto opt = [](const std::optional<HostTensor>& t) {
    return t ? std::optional<TensorView>(t->view) : std::nullopt;
  };
  AddBackwardOutcome out;
  out.ref = reference::fused_add_backward(dy.view, dr_out.view, r_out.view, opt(w), params);
  std::optional<HostTensor> rstd;
  if (c.saved_rstd) {
    rstd = make_vector(c.r == DType::f64 ? DType::f64 : DType::f32, c.batch * c.rows);
    for (std::size_t i = 0; i < out.ref.rstd.size(); ++i)
      store_from_double(rstd->view.data, rstd->view.dtype, static_cast<std::int64_t>(i), out.ref.rstd[i]);
  }
  // Aliased outputs share their input's buffer (a dx aliasing dr_out needs dx's dtype == r's).
  const std::vector<unsigned char> r_before = r_out.bytes, dy_before = dy.bytes, dr_out_before = dr_out.bytes;
  const bool want_dr = c.want_dr || c.alias == Alias::dr_is_dr_out;

  const auto call = [&](const TensorView& dyv, const TensorView& drov, const TensorView& rv,
                        const std::optional<TensorView>& wv, const std::optional<TensorView>& rsv,
                        const TensorView& dxv, const std::optional<TensorView>& drv,
                        const std::optional<TensorView>& dwv, void* ws, std::size_t bytes) {
    fused_add_backward(dyv, drov, rv, wv, rsv, dxv, drv, dwv, params, ws, bytes);
  };
  if (b == Backend::cpu) {
    std::vector<unsigned char> ws(backward_workspace_size(r_out.view, opt(dw), params) + 1, 0xFF);
    const TensorView dxv = c.alias == Alias::dx_is_dy       ? dy.view
                           : c.alias == Alias::dx_is_dr_out ? dr_out.view
                                                            : dx.view;
    std::optional<TensorView> drv;
    if (want_dr) drv = c.alias == Alias::dr_is_dr_out ? dr_out.view : dr.view;
    call(dy.view, dr_out.view, r_out.view, opt(w), opt(rstd), dxv, drv, opt(dw), ws.data(), ws.size() - 1);
  } else {
    DeviceMirror r_d(r_out), dro_d(dr_out), dy_d(dy), dx_d(dx), dr_d(dr);
    std::optional<DeviceMirror> w_d, dw_d, rs_d;
    if (w) w_d.emplace(*w);
    if (dw) dw_d.emplace(*dw);
    if (rstd) rs_d.emplace(*rstd);
    const auto dopt = [](const std::optional<DeviceMirror>& m) {
      return m ? std::optional<TensorView>(m->view) : std::nullopt;
    };
    const std::size_t bytes = backward_workspace_size(r_d.view, dopt(dw_d), params);
    DeviceBuffer ws(bytes + 1);
    ws.fill(0xFF);
    const TensorView dxv = c.alias == Alias::dx_is_dy       ? dy_d.view
                           : c.alias == Alias::dx_is_dr_out ? dro_d.view
                                                            : dx_d.view;
    std::optional<TensorView> drv;
    if (want_dr) drv = c.alias == Alias::dr_is_dr_out ? dro_d.view : dr_d.view;
    try {
      call(dy_d.view, dro_d.view, r_d.view, dopt(w_d), dopt(rs_d), dxv, drv, dopt(dw_d), ws.data(), bytes);
    } catch (const Error& e) {
      if (e.code() == Code::unsupported &&
          std::string(e.what()).find("not yet implemented on CUDA") != std::string::npos) {
        out.skipped = true;
        return out;
      }
      if (c.r != c.x && e.code() == Code::unsupported && std::string(e.what()).find("r_out: dtype") == 0) {
        out.dtype_refused = true;
        return out;
      }
      throw;
    }
    device_synchronize();
    r_d.download_into(r_out);
    dro_d.download_into(dr_out);
    dy_d.download_into(dy);
    dx_d.download_into(dx);
    dr_d.download_into(dr);
    if (dw) dw_d->download_into(*dw);
  }
  const HostTensor& got_dx = c.alias == Alias::dx_is_dy ? dy : c.alias == Alias::dx_is_dr_out ? dr_out : dx;
  const HostTensor& got_dr = c.alias == Alias::dr_is_dr_out ? dr_out : dr;
  out.dx = reference::compare_scaled(got_dx.view, out.ref.dx, out.ref.dx_scale, reference::dx_tolerance(c.x, c.cols));
  out.stray += reference::count_stray_writes(got_dx.bytes, got_dx.view);
  if (want_dr) {
    out.dr = reference::compare_scaled(got_dr.view, out.ref.dx, out.ref.dx_scale, reference::dx_tolerance(c.r, c.cols));
    out.stray += reference::count_stray_writes(got_dr.bytes, got_dr.view);
    out.dr_t = rebased(got_dr);
  }
  out.dx_t = rebased(got_dx);
  if (dw) {
    out.dw = reference::compare_vector_scaled(dw->view.data, *c.dw, out.ref.dw, out.ref.dw_scale,
                                              reference::dw_tolerance(c.r, *c.dw, c.batch * c.rows, c.cols));
    out.stray += reference::count_stray_writes(dw->bytes, dw->view);
    out.dw_t = rebased(*dw);
  }
  out.inputs_unchanged =
      r_out.bytes == r_before && (c.alias == Alias::dx_is_dy || dy.bytes == dy_before) &&
      (c.alias == Alias::dx_is_dr_out || c.alias == Alias::dr_is_dr_out || dr_out.bytes == dr_out_before);
  return out;
}

void expect_good(Backend b, const AddBackwardCase& c, std::uint64_t seed, int* ran = nullptr) {
  const AddBackwardOutcome o = run(b, c, seed);
  if (o.skipped) return;
  // Every backend serves every pair, the f32 r_out with 16-bit gradients included.
  EXPECT_FALSE(o.dtype_refused) << c.describe() << ": refused r_out's dtype";
  if (o.dtype_refused) return;
  if (ran) ++*ran;
  EXPECT_TRUE(o.dx.passed()) << c.describe() << ": dx " << o.dx.describe();
  if (c.want_dr) {
    EXPECT_TRUE(o.dr.passed()) << c.describe() << ": dr " << o.dr.describe();
    // One fp32 value rounded twice: dx is dr rounded to x's dtype when dr is f32.
    if (c.r == DType::f32)
      for (std::int64_t i = 0; i < c.batch * c.rows; ++i)
        for (std::int64_t j = 0; j < c.cols; ++j) {
          const TensorView &dxv = o.dx_t.view, &drv = o.dr_t.view;
          const double a =
              load_as_double(dxv.data, c.x, (i / c.rows) * dxv.batch_stride + (i % c.rows) * dxv.row_stride + j);
          const double d =
              load_as_double(drv.data, c.r, (i / c.rows) * drv.batch_stride + (i % c.rows) * drv.row_stride + j);
          ASSERT_EQ(a, reference::round_to(c.x, d))
              << c.describe() << ": dx is not dr rounded, row " << i << " col " << j;
        }
  }
  if (c.w && c.dw) {
    EXPECT_TRUE(o.dw.passed()) << c.describe() << ": dw " << o.dw.describe();
  }
  EXPECT_EQ(o.stray, 0) << c.describe() << ": bytes written outside the outputs";
  EXPECT_TRUE(o.inputs_unchanged) << c.describe() << ": an input changed";
}

using FusedBackward = testing::BackendTest;

// Every (r_out, dx) pair with every weight and dw dtype the API takes, dr or not.
TEST_P(FusedBackward, Dtypes) {
  struct Pair {
    DType r, x;
  };
  std::vector<Pair> pairs = {{DType::f32, DType::f32},
                             {DType::f16, DType::f16},
                             {DType::bf16, DType::bf16},
                             {DType::f32, DType::f16},
                             {DType::f32, DType::bf16}};
  if (GetParam() == Backend::cpu) pairs.push_back({DType::f64, DType::f64});
  int ran = 0;
  std::size_t k = 0;
  for (const Pair& pr : pairs) {
    std::vector<std::optional<DType>> weights = {pr.x, std::nullopt};
    if (pr.x == DType::f16 || pr.x == DType::bf16) weights.push_back(DType::f32);
    for (std::optional<DType> w : weights)
      for (std::int64_t cols : {1, 7, 64, 1000, 4096}) {
        AddBackwardCase c;
        c.r = pr.r;
        c.x = pr.x;
        c.w = w;
        c.dw = w ? std::optional<DType>(k % 2 && *w != DType::f64 ? DType::f32 : *w) : std::nullopt;
        c.want_dr = k % 3 != 0;
        c.saved_rstd = k % 2 == 0;
        c.cols = cols;
        c.rows = cols > 1000 ? 5 : 23;
        expect_good(GetParam(), c,
                    seed_of({static_cast<int>(pr.r), static_cast<int>(pr.x), cols, static_cast<std::int64_t>(k++)}),
                    &ran);
      }
  }
  if (ran == 0) GTEST_SKIP() << "the CUDA backend does not serve fused_add_backward yet";
}

TEST_P(FusedBackward, LayoutsAliasingAndOffset) {
  using Alias = AddBackwardCase::Alias;
  int ran = 0;
  std::size_t k = 0;
  for (Alias alias : {Alias::none, Alias::dx_is_dy, Alias::dx_is_dr_out, Alias::dr_is_dr_out})
    for (std::int64_t pad : {0, 3})
      for (std::int64_t lead : {0, 1})
        for (std::int64_t batch : {1, 3}) {
          AddBackwardCase c;
          // dx may be dr_out only with the same dtype
          c.r = alias == Alias::dx_is_dr_out || k % 2 ? DType::bf16 : DType::f32;
          c.x = DType::bf16;
          c.alias = alias;
          c.want_dr = alias == Alias::dr_is_dr_out || (alias == Alias::none && k % 2 == 0);
          c.pad = pad;
          c.lead = lead;
          c.batch = batch;
          c.rows = 4;
          c.cols = 520;
          c.offset = k % 3 == 1 ? 1.0 : 0.0;
          c.saved_rstd = k % 2 == 1;
          expect_good(GetParam(), c, seed_of({static_cast<int>(alias), pad, lead, batch}), &ran);
          ++k;
        }
  if (ran == 0) GTEST_SKIP() << "the CUDA backend does not serve fused_add_backward yet";
}

TEST_P(FusedBackward, LongRowsAndManyRows) {
  int ran = 0;
  for (DType r : {DType::f32, DType::bf16}) {
    for (std::int64_t cols : {8191, 65536, 140000, 270000}) {
      AddBackwardCase c;
      c.r = r;
      c.cols = cols;
      c.rows = 3;
      expect_good(GetParam(), c, seed_of({cols, static_cast<int>(r)}), &ran);
      // On CUDA, bf16 rows past 8 blocks' registers (140000) take cluster rows of two pieces,
      // with the saved rstd too; past two pieces (270000), with the saved rstd, column shards
      // (an r_out of x's dtype; an f32 r_out with 16-bit gradients streams them).
      c.saved_rstd = true;
      if (cols >= 140000) expect_good(GetParam(), c, seed_of({cols, static_cast<int>(r), 1}), &ran);
    }
    AddBackwardCase c;
    c.r = r;
    c.cols = 128;
    c.rows = 5000;
    expect_good(GetParam(), c, 91, &ran);
  }
  if (ran == 0) GTEST_SKIP() << "the CUDA backend does not serve fused_add_backward yet";
}

// dw is bit-identical from run to run, and to the plain backward's dw on r_out (it does not
// depend on dr_out); with dr_out all zeros dx is the plain backward's dx bit for bit (dnorm
// + 0 rounds like dnorm), so the fused form changes what is added, not how dnorm is computed.
TEST_P(FusedBackward, SharesTheBitsOfThePlainBackward) {
  for (DType t : {DType::bf16, DType::f32}) {
    AddBackwardCase c;
    c.r = c.x = t;
    c.w = t;
    c.dw = DType::f32;
    c.want_dr = false;
    c.rows = 300;
    c.cols = 640;
    c.zero_dr_out = true;
    const AddBackwardOutcome a = run(GetParam(), c, 5), again = run(GetParam(), c, 5);
    if (a.skipped) GTEST_SKIP() << "the CUDA backend does not serve fused_add_backward yet";
    EXPECT_EQ(a.dw_t.bytes, again.dw_t.bytes) << "dw differs between two runs";

    // The plain backward on the same inputs (same seed: same r_out, dy, weight).
    HostTensor x = tensor(c, t, 0), dy = tensor(c, t, 2), dx = tensor(c, t, 3);
    reference::fill_normal(x.view, 5);
    reference::fill_normal(dy.view, 6);
    HostTensor w = make_vector(t, c.cols), dw = make_vector(DType::f32, c.cols, 0, 2);
    reference::fill_normal(w.view, 8, 1.0, 0.2);
    Params params;
    if (GetParam() == Backend::cpu) {
      std::vector<unsigned char> ws(backward_workspace_size(x.view, dw.view, params));
      backward(dy.view, x.view, w.view, std::nullopt, dx.view, dw.view, params, ws.data(), ws.size());
    } else {
      DeviceMirror x_d(x), dy_d(dy), dx_d(dx), w_d(w), dw_d(dw);
      const std::size_t bytes = backward_workspace_size(x_d.view, dw_d.view, params);
      DeviceBuffer ws(bytes + 1);
      backward(dy_d.view, x_d.view, w_d.view, std::nullopt, dx_d.view, dw_d.view, params, ws.data(), bytes);
      device_synchronize();
      dx_d.download_into(dx);
      dw_d.download_into(dw);
    }
    EXPECT_EQ(a.dw_t.bytes, dw.bytes) << dtype_name(t) << ": dw differs from the plain backward's";
    EXPECT_EQ(a.dx_t.bytes, dx.bytes) << dtype_name(t) << ": dx with dr_out = 0 differs from the plain backward's";
  }
}

INSTANTIATE_TEST_SUITE_P(, FusedBackward, ::testing::Values(Backend::cpu, Backend::cuda),
                         [](const ::testing::TestParamInfo<Backend>& i) { return backend_name(i.param); });

}  // namespace
}  // namespace rmsnorm::testing
