// Argument checking of forward / forward_status: every bad argument is refused with the
// right code and a message that names it, and a refused call writes nothing (every buffer
// is byte-for-byte what it was). Each refusal starts from a call that is accepted (see
// ValidCallIsAccepted), changed in one respect.
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "oracle.h"
#include "rmsnorm/rmsnorm.h"
#include "support.h"

namespace rmsnorm {
namespace {

using reference::HostTensor;
using testing::make_tensor;
using testing::make_vector;

constexpr std::int64_t kRows = 4, kCols = 64;
// Every buffer has this many poisoned elements after its span, so that a view changed by a
// test (one element further, a longer vector, a wider stride) stays inside it even if the
// library wrongly accepts it.
constexpr std::int64_t kGuard = 4 * kCols;

// The arguments of one forward call on host buffers.
struct Call {
  HostTensor xb, yb, wb, rb;  // buffers
  TensorView x, y;
  std::optional<TensorView> weight, rstd;
  Params params;

  Call(DType xd, DType wd, DType yd, DType rd)
      : xb(make_tensor(xd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        yb(make_tensor(yd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        wb(make_vector(wd, kCols, 0, kGuard)),
        rb(make_vector(rd, kRows, 0, kGuard)),
        x(xb.view),
        y(yb.view),
        weight(wb.view),
        rstd(rb.view) {
    reference::fill_normal(x, 1);
    reference::fill_normal(*weight, 2, 1.0, 0.5);
  }
  Call(const Call&) = delete;

  void run() const { forward(x, weight, y, params, rstd); }
  Status run_status() const { return forward_status(x, weight, y, params, rstd); }
  std::vector<std::vector<unsigned char>> snapshot() const { return {xb.bytes, yb.bytes, wb.bytes, rb.bytes}; }

  unsigned char* x_bytes(std::int64_t elements = 0) const {
    return static_cast<unsigned char*>(x.data) + elements * static_cast<std::int64_t>(dtype_size(x.dtype));
  }
};

struct Refusal {
  std::string name;
  std::function<void(Call&)> change;
  std::vector<std::string> names;  // the message must name one of these
  // invalid_argument; dtype combinations may also be called unsupported.
  bool may_be_unsupported = false;
  DType xd = DType::f32, wd = DType::f32, yd = DType::f32, rd = DType::f32;
};

std::string listing(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "\"" : " or \"") + n + "\"";
  return out;
}

void check_code(Code got, const Refusal& r, const std::string& msg) {
  const bool ok = got == Code::invalid_argument || (r.may_be_unsupported && got == Code::unsupported);
  EXPECT_TRUE(ok) << "code " << code_name(got) << " (" << static_cast<int>(got) << "), expected invalid_argument"
                  << (r.may_be_unsupported ? " or unsupported" : "") << "; message: " << msg;
  EXPECT_TRUE(testing::names_any(msg, r.names)) << "message does not name " << listing(r.names) << ": " << msg;
}

// Runs a refused call through both entry points.
void expect_refused(const Call& call, const Refusal& r) {
  const auto before = call.snapshot();
  try {
    call.run();
    ADD_FAILURE() << "forward accepted the call";
  } catch (const Error& e) {
    check_code(e.code(), r, e.what());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "forward threw something other than rmsnorm::Error: " << e.what();
  }
  EXPECT_TRUE(call.snapshot() == before) << "forward wrote to a buffer before refusing";

  const Status s = call.run_status();
  EXPECT_FALSE(s.ok()) << "forward_status accepted the call";
  if (!s.ok()) check_code(s.code, r, s.message);
  EXPECT_TRUE(call.snapshot() == before) << "forward_status wrote to a buffer before refusing";
}

std::vector<Refusal> refusals() {
  using D = DType;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<Refusal> r = {
      // Null data.
      {"null_x", [](Call& c) { c.x.data = nullptr; }, {"x"}},
      {"null_y", [](Call& c) { c.y.data = nullptr; }, {"y"}},
      {"null_weight", [](Call& c) { c.weight->data = nullptr; }, {"weight"}},
      {"null_rstd", [](Call& c) { c.rstd->data = nullptr; }, {"rstd"}},
      // Shapes.
      {"zero_cols",
       [](Call& c) {
         c.x.cols = c.y.cols = 0;
         *c.weight = TensorView::vector(c.weight->data, c.weight->dtype, c.weight->device, 0);
       },
       {"cols", "x"}},
      {"negative_cols", [](Call& c) { c.x.cols = c.y.cols = -3; }, {"cols", "x"}},
      {"negative_rows", [](Call& c) { c.x.rows = c.y.rows = -1; }, {"rows", "x"}},
      {"negative_batch", [](Call& c) { c.x.batch = c.y.batch = -2; }, {"batch", "x"}},
      {"y_fewer_rows", [](Call& c) { c.y.rows = kRows - 1; }, {"y"}},
      {"y_more_rows", [](Call& c) { c.y.rows = kRows + 1; }, {"y"}},
      {"y_fewer_cols",
       [](Call& c) {
         c.y.cols = kCols / 2;
         c.y.row_stride = kCols;
       },
       {"y"}},
      {"y_other_batching",  // same total rows, other (batch, rows)
       [](Call& c) {
         c.y.batch = 2;
         c.y.rows = kRows / 2;
         c.y.batch_stride = kRows / 2 * kCols;
       },
       {"y"}},
      {"weight_too_short",
       [](Call& c) { *c.weight = TensorView::vector(c.weight->data, c.weight->dtype, c.weight->device, kCols - 1); },
       {"weight"}},
      {"weight_too_long",
       [](Call& c) { *c.weight = TensorView::vector(c.weight->data, c.weight->dtype, c.weight->device, kCols + 1); },
       {"weight"}},
      {"rstd_too_short",
       [](Call& c) { *c.rstd = TensorView::vector(c.rstd->data, c.rstd->dtype, c.rstd->device, kRows - 1); },
       {"rstd"}},
      {"rstd_too_long",
       [](Call& c) { *c.rstd = TensorView::vector(c.rstd->data, c.rstd->dtype, c.rstd->device, kRows + 1); },
       {"rstd"}},
      {"rstd_counts_rows_not_batch_rows",  // x is (2, 2, cols): rstd needs 4, not 2
       [](Call& c) {
         c.x = TensorView::batched(c.x.data, c.x.dtype, c.x.device, 2, kRows / 2, kCols, kRows / 2 * kCols, kCols);
         c.y = TensorView::batched(c.y.data, c.y.dtype, c.y.device, 2, kRows / 2, kCols, kRows / 2 * kCols, kCols);
         *c.rstd = TensorView::vector(c.rstd->data, c.rstd->dtype, c.rstd->device, kRows / 2);
       },
       {"rstd"}},
      // Strides.
      {"x_row_stride_below_cols", [](Call& c) { c.x.row_stride = kCols - 1; }, {"row_stride"}},
      {"y_row_stride_below_cols", [](Call& c) { c.y.row_stride = kCols - 1; }, {"row_stride"}},
      {"x_row_stride_zero", [](Call& c) { c.x.row_stride = 0; }, {"row_stride"}},
      // Parameters.
      {"negative_eps", [](Call& c) { c.params.eps = -1e-6; }, {"eps"}},
      {"nan_eps", [nan](Call& c) { c.params.eps = nan; }, {"eps"}},
      {"inf_eps", [inf](Call& c) { c.params.eps = inf; }, {"eps"}},
      {"minus_inf_eps", [inf](Call& c) { c.params.eps = -inf; }, {"eps"}},
      {"offset_without_weight",
       [](Call& c) {
         c.weight.reset();
         c.params.weight_offset = 1.0;
       },
       {"weight_offset"}},
      {"nan_weight_offset", [nan](Call& c) { c.params.weight_offset = nan; }, {"weight_offset"}},
      {"unknown_split_few_rows",
       [](Call& c) { c.params.split_few_rows = static_cast<SplitFewRows>(3); },
       {"split_few_rows", "3"}},
      {"negative_batch_stride",
       [](Call& c) {
         c.x = TensorView::batched(c.x.data, c.x.dtype, c.x.device, 2, kRows / 2, kCols, -kCols, kCols);
         c.y = TensorView::batched(c.y.data, c.y.dtype, c.y.device, 2, kRows / 2, kCols, kRows / 2 * kCols, kCols);
       },
       {"batch_stride"}},
      // Overlap: only y == x exactly (same pointer, dtype and strides) is allowed.
      {"y_is_x_shifted_by_one", [](Call& c) { c.y.data = c.x_bytes(1); }, {"x", "y"}},
      {"y_is_x_shifted_by_one_row", [](Call& c) { c.y.data = c.x_bytes(kCols); }, {"x", "y"}},
      {"y_is_x_with_other_row_stride",
       [](Call& c) {
         c.y.data = c.x.data;
         c.y.row_stride = 2 * kCols;
       },
       {"x", "y"}},
      {"x_inside_y_span",  // x starts in y's last row
       [](Call& c) { c.x.data = static_cast<unsigned char*>(c.y.data) + (kRows - 1) * kCols * 4 + 8; },
       {"x", "y"}},
      {"y_rows_overlap_each_other",  // (2, 2, cols) with batch_stride = row_stride: row 1 of
                                     // batch 0 is row 0 of batch 1
       [](Call& c) {
         c.x = TensorView::batched(c.x.data, c.x.dtype, c.x.device, 2, kRows / 2, kCols, kRows / 2 * kCols, kCols);
         c.y = TensorView::batched(c.y.data, c.y.dtype, c.y.device, 2, kRows / 2, kCols, kCols, kCols);
       },
       {"y"}},
      {"weight_inside_y", [](Call& c) { c.weight->data = c.y.data; }, {"weight", "y"}},
      {"rstd_is_y", [](Call& c) { c.rstd->data = c.y.data; }, {"rstd"}},
      {"rstd_inside_x", [](Call& c) { c.rstd->data = c.x_bytes(kCols + 5); }, {"rstd"}},
      {"rstd_overlaps_end_of_y",
       [](Call& c) { c.rstd->data = static_cast<unsigned char*>(c.y.data) + (kRows * kCols - 2) * 4; },
       {"rstd"}},
      {"rstd_is_x_in_place",  // in place is fine for y, but rstd may not alias it
       [](Call& c) {
         c.y = c.x;
         c.rstd->data = c.x.data;
       },
       {"rstd"}},
  };
  auto dtypes = [&](const char* name, D x, D w, D y, D rd, std::vector<std::string> names) {
    Refusal ref{name, [](Call&) {}, std::move(names), true, x, w, y, rd};
    r.push_back(ref);
  };
  // Dtype combinations outside the contract (weight: x's dtype or f32; y: x's dtype, or
  // f32 for 16-bit x with an f32 weight; rstd: f32, f64 for f64 x).
  dtypes("f16_x_bf16_weight", D::f16, D::bf16, D::f16, D::f32, {"weight"});
  dtypes("bf16_x_f16_weight", D::bf16, D::f16, D::bf16, D::f32, {"weight"});
  dtypes("f32_x_f16_weight", D::f32, D::f16, D::f32, D::f32, {"weight"});
  dtypes("f32_x_bf16_weight", D::f32, D::bf16, D::f32, D::f32, {"weight"});
  dtypes("f64_x_f16_weight", D::f64, D::f16, D::f64, D::f64, {"weight"});
  dtypes("f16_x_bf16_y", D::f16, D::f16, D::bf16, D::f32, {"y"});
  dtypes("bf16_x_f16_y", D::bf16, D::bf16, D::f16, D::f32, {"y"});
  dtypes("f32_x_f16_y", D::f32, D::f32, D::f16, D::f32, {"y"});
  dtypes("bf16_x_bf16_weight_f32_y", D::bf16, D::bf16, D::f32, D::f32, {"y"});
  dtypes("bf16_x_f32_weight_f16_y", D::bf16, D::f32, D::f16, D::f32, {"y"});
  dtypes("f64_x_f32_y", D::f64, D::f64, D::f32, D::f64, {"y"});
  dtypes("f16_rstd", D::f16, D::f16, D::f16, D::f16, {"rstd"});
  dtypes("bf16_rstd", D::bf16, D::bf16, D::bf16, D::bf16, {"rstd"});
  dtypes("f64_x_f32_rstd", D::f64, D::f64, D::f64, D::f32, {"rstd"});
  dtypes("f32_x_f64_rstd", D::f32, D::f32, D::f32, D::f64, {"rstd"});
  {
    Refusal nw{"f16_x_no_weight_f32_y", [](Call& c) { c.weight.reset(); }, {"y"}, true, D::f16, D::f32, D::f32, D::f32};
    r.push_back(nw);
    Refusal in_place_dtype{"in_place_with_other_y_dtype",  // bf16 x, f32 y on x's memory
                           [](Call& c) { c.y.data = c.x.data; }, {"x", "y"}, false, D::bf16, D::f32, D::f32, D::f32};
    r.push_back(in_place_dtype);
  }
  return r;
}

class Refused : public ::testing::TestWithParam<Refusal> {};

TEST_P(Refused, WithCodeAndNameAndNothingWritten) {
  const Refusal& r = GetParam();
  Call call(r.xd, r.wd, r.yd, r.rd);
  r.change(call);
  expect_refused(call, r);
}

INSTANTIATE_TEST_SUITE_P(Validation, Refused, ::testing::ValuesIn(refusals()),
                         [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

// The call every refusal starts from is fine, and so are the neighbours of the refusals.
TEST(Validation, ValidCallIsAccepted) {
  Call call(DType::f32, DType::f32, DType::f32, DType::f32);
  ASSERT_NO_THROW(call.run());
  EXPECT_TRUE(reference::compare(call.y, reference::forward(call.x, call.weight, DType::f32, call.params).y,
                                 reference::forward_tolerance(DType::f32, DType::f32, Cast::fp32, kCols))
                  .passed());
  Call again(DType::f32, DType::f32, DType::f32, DType::f32);
  const Status s = again.run_status();
  EXPECT_TRUE(s.ok()) << code_name(s.code) << ": " << s.message;
  EXPECT_FALSE(testing::all_poisoned(again.yb.bytes)) << "forward_status did not write y";
}

TEST(Validation, NeighboursOfRefusalsAreAccepted) {
  auto accepted = [](const char* what, const std::function<void(Call&)>& change, DType xd = DType::f32,
                     DType wd = DType::f32, DType yd = DType::f32, DType rd = DType::f32) {
    Call call(xd, wd, yd, rd);
    change(call);
    const Status s = call.run_status();
    EXPECT_TRUE(s.ok()) << what << ": " << code_name(s.code) << ": " << s.message;
  };
  accepted("eps = 0", [](Call& c) { c.params.eps = 0.0; });
  accepted("eps = 1", [](Call& c) { c.params.eps = 1.0; });
  accepted("no weight, no rstd", [](Call& c) {
    c.weight.reset();
    c.rstd.reset();
  });
  accepted("offset 1 with a weight", [](Call& c) { c.params.weight_offset = 1.0; });
  accepted("in place (y == x) with rstd", [](Call& c) { c.y = c.x; });
  accepted("row_stride > cols", [](Call& c) {
    c.x.rows = c.y.rows = kRows / 2;
    c.x.row_stride = c.y.row_stride = 2 * kCols;
    *c.rstd = TensorView::vector(c.rstd->data, DType::f32, Device::cpu(), kRows / 2);
  });
  accepted("rows == 1 needs no row_stride >= cols", [](Call& c) {
    c.x.rows = c.y.rows = 1;
    c.x.row_stride = c.y.row_stride = 0;
    *c.rstd = TensorView::vector(c.rstd->data, DType::f32, Device::cpu(), 1);
  });
  accepted("rstd right after y",
           [](Call& c) { c.rstd->data = static_cast<unsigned char*>(c.y.data) + kRows * kCols * 4; });
  accepted(
      "bf16 x, f32 weight, f32 y", [](Call&) {}, DType::bf16, DType::f32, DType::f32);
  accepted(
      "f16 x, f32 weight, f16 y", [](Call&) {}, DType::f16, DType::f32, DType::f16);
  accepted(
      "f64 x, f64 weight, f64 y, f64 rstd", [](Call&) {}, DType::f64, DType::f64, DType::f64, DType::f64);
}

TEST(Validation, ZeroRowsIsANoOpEvenWithNullData) {
  const TensorView x = TensorView::matrix(nullptr, DType::bf16, Device::cpu(), 0, 4096);
  const TensorView y = TensorView::matrix(nullptr, DType::bf16, Device::cpu(), 0, 4096);
  EXPECT_NO_THROW(forward(x, std::nullopt, y));
  EXPECT_TRUE(forward_status(x, std::nullopt, y).ok());
  const TensorView xb = TensorView::batched(nullptr, DType::f32, Device::cpu(), 3, 0, 64, 0, 64);
  const TensorView yb = TensorView::batched(nullptr, DType::f32, Device::cpu(), 3, 0, 64, 0, 64);
  EXPECT_NO_THROW(forward(xb, std::nullopt, yb));
  const TensorView x0 = TensorView::batched(nullptr, DType::f16, Device::cpu(), 0, 5, 64, 320, 64);
  const TensorView y0 = TensorView::batched(nullptr, DType::f16, Device::cpu(), 0, 5, 64, 320, 64);
  EXPECT_NO_THROW(forward(x0, std::nullopt, y0));

  // With real, poisoned buffers: nothing is written.
  Call call(DType::f32, DType::f32, DType::f32, DType::f32);
  call.x.rows = call.y.rows = 0;
  *call.rstd = TensorView::vector(call.rstd->data, DType::f32, Device::cpu(), 0);
  const auto before = call.snapshot();
  EXPECT_NO_THROW(call.run());
  EXPECT_TRUE(call.snapshot() == before) << "a zero-row call wrote to a buffer";
}

TEST(Validation, CudaViewsInACpuOnlyBuild) {
  if (built_with_cuda()) GTEST_SKIP() << "this build has the CUDA backend";
  EXPECT_EQ(cuda_device_count(), 0);
  Call call(DType::f32, DType::f32, DType::f32, DType::f32);
  call.x.device = call.y.device = call.weight->device = call.rstd->device = Device::cuda(0);
  const auto before = call.snapshot();
  try {
    call.run();
    ADD_FAILURE() << "a CPU-only build accepted CUDA views";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Code::unsupported) << e.what();
  }
  EXPECT_TRUE(call.snapshot() == before);
}

// ---------------------------------------------------------------------------------------
// Pointers against their device tag (needs a CUDA device)
// ---------------------------------------------------------------------------------------

class CudaValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string reason = testing::cuda_unavailable_reason();
    if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
  }
};

// Like Call, with every buffer also on the device; `use_device` picks which views point
// at device memory (and say so, unless a test then lies about it).
struct CudaCall {
  Call host;
  testing::DeviceMirror dx, dy, dw, dr;
  TensorView x, y;
  std::optional<TensorView> weight, rstd;
  Params params;

  explicit CudaCall(DType xd = DType::f32, DType wd = DType::f32, DType yd = DType::f32, DType rd = DType::f32)
      : host(xd, wd, yd, rd),
        dx(host.xb),
        dy(host.yb),
        dw(host.wb),
        dr(host.rb),
        x(dx.view),
        y(dy.view),
        weight(dw.view),
        rstd(dr.view) {}

  std::vector<std::vector<unsigned char>> snapshot() const {
    auto out = host.snapshot();
    for (const auto* m : {&dx, &dy, &dw, &dr}) {
      std::vector<unsigned char> bytes(m->buffer.size());
      m->buffer.download(bytes.data(), bytes.size());
      out.push_back(std::move(bytes));
    }
    return out;
  }
};

void expect_cuda_refused(CudaCall& c, std::vector<std::string> names, bool may_be_unsupported = false) {
  Refusal r{"", [](Call&) {}, std::move(names), may_be_unsupported};
  const auto before = c.snapshot();
  try {
    forward(c.x, c.weight, c.y, c.params, c.rstd);
    testing::device_synchronize();
    ADD_FAILURE() << "forward accepted the call";
  } catch (const Error& e) {
    check_code(e.code(), r, e.what());
  }
  const Status s = forward_status(c.x, c.weight, c.y, c.params, c.rstd);
  EXPECT_FALSE(s.ok()) << "forward_status accepted the call";
  if (!s.ok()) check_code(s.code, r, s.message);
  testing::device_synchronize();
  EXPECT_TRUE(c.snapshot() == before) << "a refused call wrote to a buffer";
}

TEST_F(CudaValidation, DeviceCallIsAccepted) {
  CudaCall c;
  ASSERT_NO_THROW(forward(c.x, c.weight, c.y, c.params, c.rstd));
  testing::device_synchronize();
  c.dy.download_into(c.host.yb);
  EXPECT_FALSE(testing::all_poisoned(c.host.yb.bytes));
}

TEST_F(CudaValidation, HostPointerTaggedCuda) {
  {
    CudaCall c;
    c.x.data = c.host.x.data;
    SCOPED_TRACE("x");
    expect_cuda_refused(c, {"x"});
  }
  {
    CudaCall c;
    c.y.data = c.host.y.data;
    SCOPED_TRACE("y");
    expect_cuda_refused(c, {"y"});
  }
  {
    CudaCall c;
    c.weight->data = c.host.weight->data;
    SCOPED_TRACE("weight");
    expect_cuda_refused(c, {"weight"});
  }
  {
    CudaCall c;
    c.rstd->data = c.host.rstd->data;
    SCOPED_TRACE("rstd");
    expect_cuda_refused(c, {"rstd"});
  }
}

TEST_F(CudaValidation, DevicePointerTaggedCpu) {
  {
    CudaCall c;  // an all-CPU call whose x is device memory
    c.x = c.host.x;
    c.x.data = c.dx.view.data;
    c.y = c.host.y;
    c.weight = c.host.weight;
    c.rstd = c.host.rstd;
    SCOPED_TRACE("x");
    expect_cuda_refused(c, {"x"});
  }
  {
    CudaCall c;
    c.x = c.host.x;
    c.y = c.host.y;
    c.y.data = c.dy.view.data;
    c.weight = c.host.weight;
    c.rstd = c.host.rstd;
    SCOPED_TRACE("y");
    expect_cuda_refused(c, {"y"});
  }
}

TEST_F(CudaValidation, MixedDevices) {
  CudaCall c;
  c.y = c.host.y;  // x on the device, y on the host, each tagged truthfully
  SCOPED_TRACE("x on cuda, y on cpu");
  expect_cuda_refused(c, {"x", "y", "device"});
  CudaCall d;
  d.weight = d.host.weight;
  SCOPED_TRACE("weight on cpu");
  expect_cuda_refused(d, {"weight", "device"});
}

TEST_F(CudaValidation, F64IsCpuOnly) {
  CudaCall c(DType::f64, DType::f64, DType::f64, DType::f64);
  expect_cuda_refused(c, {"x", "f64"}, /*may_be_unsupported=*/true);
}

TEST_F(CudaValidation, OverlapOnTheDevice) {
  CudaCall c;
  c.y.data = static_cast<unsigned char*>(c.x.data) + 4;
  expect_cuda_refused(c, {"x", "y"});
}

}  // namespace
}  // namespace rmsnorm
