// Argument checking of the fused entry points: every new argument refused with the right
// code and a message that names it, through the throwing and the Status entry points, with
// every buffer byte-for-byte what it was. Each refusal starts from an accepted call (see
// FusedValidation.ValidCallsAreAccepted) changed in one respect.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "harness.h"
#include "rmsnorm/rmsnorm.h"
#include "support.h"

namespace rmsnorm {
namespace {

using reference::HostTensor;
using testing::make_tensor;
using testing::make_vector;

constexpr std::int64_t kRows = 4, kCols = 256, kGroup = 128;
constexpr std::int64_t kGuard = 4 * kCols;  // room for views a test makes longer or wider

enum class Op { add, quant, add_quant };

// The arguments of one fused forward call on host buffers.
struct Call {
  Op op;
  HostTensor xb, rb, rob, wb, yb, qb, rsb, sb, ub;
  TensorView x, residual, residual_out, y, q;
  std::optional<TensorView> weight, rstd;
  Quant quant;
  Params params;

  Call(Op o, DType xd = DType::bf16, DType rd = DType::bf16, DType qd = DType::f8e4m3,
       QuantScale kind = QuantScale::per_group)
      : op(o),
        xb(make_tensor(xd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        rb(make_tensor(rd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        rob(make_tensor(rd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        wb(make_vector(xd, kCols, 0, kGuard)),
        yb(make_tensor(xd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        qb(make_tensor(qd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        rsb(make_vector(DType::f32, kRows, 0, kGuard)),
        sb(make_vector(DType::f32, kRows * kCols / kGroup, 0, kGuard)),
        ub(make_vector(DType::f32, 1, 0, kGuard)),
        x(xb.view),
        residual(rb.view),
        residual_out(rob.view),
        y(yb.view),
        q(qb.view),
        weight(wb.view),
        rstd(rsb.view) {
    reference::fill_normal(x, 1);
    reference::fill_normal(residual, 2);
    reference::fill_normal(*weight, 3, 1.0, 0.5);
    const float one = 1.0f, three = 3.0f;
    std::memcpy(ub.view.data, &three, 4);
    quant.kind = kind;
    quant.group_size = kGroup;
    if (kind == QuantScale::static_tensor) {
      quant.scales = TensorView::vector(sb.view.data, DType::f32, Device::cpu(), 1);
      std::memcpy(sb.view.data, &one, 4);
    } else if (kind == QuantScale::per_row) {
      quant.scales = TensorView::vector(sb.view.data, DType::f32, Device::cpu(), kRows);
    } else {
      quant.scales = TensorView::matrix(sb.view.data, DType::f32, Device::cpu(), kRows, kCols / kGroup);
    }
  }
  Call(const Call&) = delete;

  void run() const {
    if (op == Op::add) fused_add_forward(x, residual, weight, y, residual_out, params, rstd);
    if (op == Op::quant) quant_forward(x, weight, q, quant, params, rstd);
    if (op == Op::add_quant) fused_add_quant_forward(x, residual, weight, q, residual_out, quant, params, rstd);
  }
  Status run_status() const {
    if (op == Op::add) return fused_add_forward_status(x, residual, weight, y, residual_out, params, rstd);
    if (op == Op::quant) return quant_forward_status(x, weight, q, quant, params, rstd);
    return fused_add_quant_forward_status(x, residual, weight, q, residual_out, quant, params, rstd);
  }
  std::vector<std::vector<unsigned char>> snapshot() const {
    return {xb.bytes, rb.bytes, rob.bytes, wb.bytes, yb.bytes, qb.bytes, rsb.bytes, sb.bytes, ub.bytes};
  }
  unsigned char* at(const TensorView& v, std::int64_t elements) const {
    return static_cast<unsigned char*>(v.data) + elements * static_cast<std::int64_t>(dtype_size(v.dtype));
  }
};

struct Refusal {
  std::string name;
  Op op;
  std::function<void(Call&)> change;
  std::vector<std::string> names;  // the message must name one of these
  Code code = Code::invalid_argument;
  DType xd = DType::bf16, rd = DType::bf16, qd = DType::f8e4m3;
  QuantScale kind = QuantScale::per_group;
};

void check_error(Code got, const std::string& msg, const Refusal& r) {
  EXPECT_EQ(got, r.code) << code_name(got) << ": " << msg;
  EXPECT_TRUE(testing::names_any(msg, r.names)) << "message does not name " << r.names.front() << ": " << msg;
}

std::vector<Refusal> refusals() {
  using D = DType;
  const Code unsup = Code::unsupported;
  std::vector<Refusal> r = {
      // The residual and residual_out.
      {"null_residual", Op::add, [](Call& c) { c.residual.data = nullptr; }, {"residual"}},
      {"null_residual_out", Op::add, [](Call& c) { c.residual_out.data = nullptr; }, {"residual_out"}},
      {"residual_fewer_rows", Op::add, [](Call& c) { c.residual.rows = kRows - 1; }, {"residual"}},
      {"residual_out_fewer_cols",
       Op::add,
       [](Call& c) {
         c.residual_out.cols = kCols / 2;
         c.residual_out.row_stride = kCols;
       },
       {"residual_out"}},
      {"residual_row_stride_below_cols", Op::add, [](Call& c) { c.residual.row_stride = kCols - 1; }, {"residual"}},
      {"residual_out_rows_overlap",
       Op::add,
       [](Call& c) {
         for (TensorView* v : {&c.x, &c.residual, &c.y})
           *v = TensorView::batched(v->data, v->dtype, v->device, 2, 2, kCols, 2 * kCols, kCols);
         c.residual_out = TensorView::batched(c.residual_out.data, c.residual_out.dtype, c.residual_out.device, 2, 2,
                                              kCols, kCols, kCols);
       },
       {"residual_out"}},
      {"f16_residual_with_bf16_x", Op::add, [](Call&) {}, {"residual"}, unsup, D::bf16, D::f16},
      {"bf16_residual_with_f32_x", Op::add, [](Call&) {}, {"residual"}, unsup, D::f32, D::bf16},
      {"f8_residual", Op::add, [](Call&) {}, {"residual"}, unsup, D::bf16, D::f8e4m3},
      {"residual_out_other_dtype",
       Op::add,
       [](Call& c) { c.residual_out.dtype = DType::bf16; },
       {"residual_out"},
       unsup,
       D::bf16,
       D::f32},
      // Aliasing of the residual add: only residual_out == residual and y == x exactly.
      {"residual_out_is_residual_shifted",
       Op::add,
       [](Call& c) { c.residual_out.data = c.at(c.residual, 1); },
       {"residual_out", "residual"}},
      {"residual_out_is_x", Op::add, [](Call& c) { c.residual_out.data = c.x.data; }, {"residual_out", "x"}},
      {"residual_out_overlaps_y",
       Op::add,
       [](Call& c) { c.residual_out.data = c.at(c.y, kCols); },
       {"residual_out", "y"}},
      {"y_is_residual", Op::add, [](Call& c) { c.y.data = c.residual.data; }, {"y", "residual"}},
      {"in_place_residual_is_x",
       Op::add,
       [](Call& c) { c.residual.data = c.residual_out.data = c.x.data; },
       {"residual", "x"}},
      {"rstd_inside_residual_out",
       Op::add,
       [](Call& c) { c.rstd->data = c.at(c.residual_out, 8); },
       {"rstd", "residual_out"}},
      {"weight_inside_residual_out",
       Op::add,
       [](Call& c) { c.weight->data = c.residual_out.data; },
       {"weight", "residual_out"}},
      {"x_is_f8", Op::add, [](Call& c) { c.x.dtype = c.y.dtype = DType::f8e4m3; }, {"x"}},
      // The quantised output q.
      {"q_of_x_dtype", Op::quant, [](Call& c) { c.q = c.y; }, {"q"}, unsup},
      {"q_shape", Op::quant, [](Call& c) { c.q.rows = kRows - 1; }, {"q"}},
      {"q_null", Op::quant, [](Call& c) { c.q.data = nullptr; }, {"q"}},
      {"q_overlaps_x", Op::quant, [](Call& c) { c.q.data = c.x.data; }, {"q", "x"}},
      {"q_overlaps_residual", Op::add_quant, [](Call& c) { c.q.data = c.at(c.residual, 3); }, {"q", "residual"}},
      {"q_overlaps_scales", Op::quant, [](Call& c) { c.quant.scales.data = c.at(c.q, 16); }, {"q", "scales"}},
      {"f64_x", Op::quant, [](Call&) {}, {"x"}, unsup, D::f64, D::f64},
      // Scales.
      {"scales_dtype", Op::quant, [](Call& c) { c.quant.scales.dtype = DType::bf16; }, {"scales"}},
      {"scales_null", Op::quant, [](Call& c) { c.quant.scales.data = nullptr; }, {"scales"}},
      {"group_scales_wrong_shape", Op::quant, [](Call& c) { c.quant.scales.cols = 1; }, {"scales"}},
      {"group_scales_too_few_rows", Op::quant, [](Call& c) { c.quant.scales.rows = kRows - 1; }, {"scales"}},
      {"group_scales_given_column_major",  // (groups, rows) for a row-major request
       Op::quant,
       [](Call& c) {
         c.quant.scales = TensorView::matrix(c.quant.scales.data, DType::f32, Device::cpu(), kCols / kGroup, kRows);
       },
       {"scales"}},
      {"column_major_scales_given_row_major",
       Op::quant,
       [](Call& c) { c.quant.column_major_scales = true; },
       {"scales"}},
      {"column_major_row_stride_below_rows",
       Op::quant,
       [](Call& c) {
         c.quant.column_major_scales = true;
         c.quant.scales =
             TensorView::matrix(c.quant.scales.data, DType::f32, Device::cpu(), kCols / kGroup, kRows, kRows - 1);
       },
       {"scales"}},
      {"group_size_not_dividing", Op::quant, [](Call& c) { c.quant.group_size = 96; }, {"group_size"}},
      {"group_size_zero", Op::quant, [](Call& c) { c.quant.group_size = 0; }, {"group_size"}},
      {"group_size_negative", Op::quant, [](Call& c) { c.quant.group_size = -128; }, {"group_size"}},
      {"row_scales_too_short",
       Op::quant,
       [](Call& c) { c.quant.scales = TensorView::vector(c.quant.scales.data, DType::f32, Device::cpu(), kRows - 1); },
       {"scales"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::i8,
       QuantScale::per_row},
      {"row_scales_column_major",
       Op::quant,
       [](Call& c) { c.quant.column_major_scales = true; },
       {"column_major_scales"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::i8,
       QuantScale::per_row},
      {"row_scales_overlap_rstd",
       Op::quant,
       [](Call& c) { c.rstd->data = c.quant.scales.data; },
       {"scales", "rstd"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::i8,
       QuantScale::per_row},
      {"static_scale_two_elements",
       Op::quant,
       [](Call& c) { c.quant.scales = TensorView::vector(c.quant.scales.data, DType::f32, Device::cpu(), 2); },
       {"scales"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::f8e4m3,
       QuantScale::static_tensor},
      {"static_scale_with_scale_ub",
       Op::quant,
       [](Call& c) { c.quant.scale_ub = c.ub.view; },
       {"scale_ub"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::f8e4m3,
       QuantScale::static_tensor},
      {"static_scale_with_pow2",
       Op::quant,
       [](Call& c) { c.quant.pow2_scales = true; },
       {"pow2_scales"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::f8e4m3,
       QuantScale::static_tensor},
      {"unknown_division",
       Op::quant,
       [](Call& c) { c.quant.division = static_cast<QuantDivision>(7); },
       {"quant.division"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::f8e4m3,
       QuantScale::per_row},
      {"static_scale_inside_q",
       Op::quant,
       [](Call& c) { c.quant.scales.data = c.q.data; },
       {"q", "scales"},
       Code::invalid_argument,
       D::bf16,
       D::bf16,
       D::f8e4m3,
       QuantScale::static_tensor},
      {"unknown_kind", Op::quant, [](Call& c) { c.quant.kind = static_cast<QuantScale>(7); }, {"quant.kind"}},
      // scale_ub.
      {"scale_ub_dtype",
       Op::quant,
       [](Call& c) {
         c.quant.scale_ub = c.ub.view;
         c.quant.scale_ub->dtype = DType::f16;
       },
       {"scale_ub"}},
      {"scale_ub_two_elements",
       Op::quant,
       [](Call& c) { c.quant.scale_ub = TensorView::vector(c.ub.view.data, DType::f32, Device::cpu(), 2); },
       {"scale_ub"}},
      {"scale_ub_null",
       Op::quant,
       [](Call& c) {
         c.quant.scale_ub = c.ub.view;
         c.quant.scale_ub->data = nullptr;
       },
       {"scale_ub"}},
      {"scale_ub_inside_scales",
       Op::quant,
       [](Call& c) { c.quant.scale_ub = TensorView::vector(c.quant.scales.data, DType::f32, Device::cpu(), 1); },
       {"scales", "scale_ub"}},
      // Parameters still apply.
      {"add_negative_eps", Op::add, [](Call& c) { c.params.eps = -1.0; }, {"eps"}},
      {"add_quant_offset_without_weight",
       Op::add_quant,
       [](Call& c) {
         c.weight.reset();
         c.params.weight_offset = 1.0;
       },
       {"weight_offset"}},
  };
  return r;
}

class FusedRefused : public ::testing::TestWithParam<Refusal> {};

TEST_P(FusedRefused, WithCodeAndNameAndNothingWritten) {
  const Refusal& r = GetParam();
  Call call(r.op, r.xd, r.rd, r.qd, r.kind);
  r.change(call);
  const auto before = call.snapshot();
  try {
    call.run();
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    check_error(e.code(), e.what(), r);
  }
  EXPECT_TRUE(call.snapshot() == before) << "a refused call wrote to a buffer";
  const Status s = call.run_status();
  EXPECT_FALSE(s.ok());
  if (!s.ok()) check_error(s.code, s.message, r);
  EXPECT_TRUE(call.snapshot() == before) << "a refused _status call wrote to a buffer";
}

INSTANTIATE_TEST_SUITE_P(FusedValidation, FusedRefused, ::testing::ValuesIn(refusals()),
                         [](const ::testing::TestParamInfo<Refusal>& info) { return info.param.name; });

TEST(FusedValidation, ValidCallsAreAccepted) {
  const auto accepted = [](const char* what, Op op, const std::function<void(Call&)>& change, DType xd = DType::bf16,
                           DType rd = DType::bf16, DType qd = DType::f8e4m3, QuantScale kind = QuantScale::per_group) {
    Call call(op, xd, rd, qd, kind);
    change(call);
    const Status s = call.run_status();
    EXPECT_TRUE(s.ok()) << what << ": " << code_name(s.code) << ": " << s.message;
  };
  const auto none = [](Call&) {};
  accepted("residual add", Op::add, none);
  accepted("quant", Op::quant, none);
  accepted("residual add and quant", Op::add_quant, none);
  accepted("f32 residual with bf16 x", Op::add, none, DType::bf16, DType::f32);
  accepted("f32 residual with f16 x, int8 per-row", Op::add_quant, none, DType::f16, DType::f32, DType::i8,
           QuantScale::per_row);
  accepted(
      "f64 residual add", Op::add, [](Call& c) { c.rstd.reset(); }, DType::f64, DType::f64);
  accepted("vLLM's in place: y == x, residual_out == residual", Op::add, [](Call& c) {
    c.y = c.x;
    c.residual_out = c.residual;
  });
  accepted("in place residual with quant", Op::add_quant, [](Call& c) { c.residual_out = c.residual; });
  accepted("no weight, no rstd", Op::add_quant, [](Call& c) {
    c.weight.reset();
    c.rstd.reset();
  });
  accepted("static scale", Op::quant, none, DType::bf16, DType::bf16, DType::f8e4m3, QuantScale::static_tensor);
  accepted(
      "per-row with scale_ub and pow2", Op::quant,
      [](Call& c) {
        c.quant.scale_ub = c.ub.view;
        c.quant.pow2_scales = true;
      },
      DType::f16, DType::f16, DType::i8, QuantScale::per_row);
  accepted("column-major group scales, padded", Op::quant, [](Call& c) {
    c.quant.column_major_scales = true;
    c.quant.scales =
        TensorView::matrix(c.quant.scales.data, DType::f32, Device::cpu(), kCols / kGroup, kRows, kRows + 4);
  });
  accepted("group scales with a padded row stride", Op::quant, [](Call& c) {
    c.quant.scales = TensorView::matrix(c.quant.scales.data, DType::f32, Device::cpu(), kRows / 2, kCols / kGroup, 3);
    c.quant.scales.rows = kRows;  // rows 3 apart: 4 rows in 12 elements (the buffer has a guard)
  });
  accepted("group size 1 and group size cols", Op::quant, [](Call& c) {
    c.quant.group_size = kCols;
    c.quant.scales = TensorView::matrix(c.quant.scales.data, DType::f32, Device::cpu(), kRows, 1);
  });
}

TEST(FusedValidation, ZeroRowsWriteNothing) {
  for (Op op : {Op::add, Op::quant, Op::add_quant}) {
    Call call(op, DType::bf16, DType::bf16, DType::f8e4m3, QuantScale::per_row);
    for (TensorView* v : {&call.x, &call.residual, &call.residual_out, &call.y, &call.q}) v->rows = 0;
    *call.rstd = TensorView::vector(call.rstd->data, DType::f32, Device::cpu(), 0);
    call.quant.scales = TensorView::vector(call.quant.scales.data, DType::f32, Device::cpu(), 0);
    const auto before = call.snapshot();
    EXPECT_NO_THROW(call.run());
    EXPECT_TRUE(call.snapshot() == before);
  }
}

TEST(FusedValidation, CudaViewsInACpuOnlyBuild) {
  if (built_with_cuda()) GTEST_SKIP() << "this build has the CUDA backend";
  for (Op op : {Op::add, Op::quant, Op::add_quant}) {
    Call call(op);
    for (TensorView* v : {&call.x, &call.residual, &call.residual_out, &call.y, &call.q, &call.quant.scales})
      v->device = Device::cuda(0);
    call.weight->device = call.rstd->device = Device::cuda(0);
    const auto before = call.snapshot();
    const Status s = call.run_status();
    EXPECT_EQ(s.code, Code::unsupported) << s.message;
    EXPECT_TRUE(call.snapshot() == before);
  }
}

// ---------------------------------------------------------------------------------------
// fused_add_backward
// ---------------------------------------------------------------------------------------

struct BackwardCall {
  HostTensor dyb, drob, rb, wb, rsb, dxb, drb, dwb;
  TensorView dy, dr_out, r_out, dx;
  std::optional<TensorView> weight, rstd, dr, dw;
  Params params;
  std::vector<unsigned char> ws;

  explicit BackwardCall(DType rd = DType::f32, DType xd = DType::bf16)
      : dyb(make_tensor(xd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        drob(make_tensor(rd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        rb(make_tensor(rd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        wb(make_vector(xd, kCols, 0, kGuard)),
        rsb(make_vector(DType::f32, kRows, 0, kGuard)),
        dxb(make_tensor(xd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        drb(make_tensor(rd, 1, kRows, kCols, -1, -1, 0, kGuard)),
        dwb(make_vector(DType::f32, kCols, 0, kGuard)),
        dy(dyb.view),
        dr_out(drob.view),
        r_out(rb.view),
        dx(dxb.view),
        weight(wb.view),
        rstd(rsb.view),
        dr(drb.view),
        dw(dwb.view) {
    for (const TensorView* v : {&dy, &dr_out, &r_out}) reference::fill_normal(*v, 7);
    reference::fill_normal(*weight, 8, 1.0, 0.3);
    reference::fill_normal(*rstd, 9, 1.0, 0.1);
    ws.resize(backward_workspace_size(r_out, dw, params) + 64);
  }
  Status run() const {
    return fused_add_backward_status(dy, dr_out, r_out, weight, rstd, dx, dr, dw, params,
                                     const_cast<unsigned char*>(ws.data()), ws.size());
  }
  std::vector<std::vector<unsigned char>> snapshot() const {
    return {dyb.bytes, drob.bytes, rb.bytes, wb.bytes, rsb.bytes, dxb.bytes, drb.bytes, dwb.bytes};
  }
};

TEST(FusedValidation, BackwardRefusals) {
  struct Case {
    const char* what;
    std::function<void(BackwardCall&)> change;
    std::vector<std::string> names;
    Code code;
    DType rd = DType::f32, xd = DType::bf16;
  };
  const Code inv = Code::invalid_argument, unsup = Code::unsupported;
  const auto shifted = [](const TensorView& v, std::int64_t n) {
    TensorView s = v;
    s.data = static_cast<unsigned char*>(v.data) + n * static_cast<std::int64_t>(dtype_size(v.dtype));
    return s;
  };
  const std::vector<Case> cases = {
      {"dy dtype", [](BackwardCall& c) { c.dy.dtype = DType::f16; }, {"dy"}, unsup},
      {"dr_out dtype", [](BackwardCall& c) { c.dr_out.dtype = DType::bf16; }, {"dr_out"}, unsup},
      {"dr dtype", [](BackwardCall& c) { c.dr->dtype = DType::bf16; }, {"dr"}, unsup},
      {"dx f16 with a bf16 r_out",
       [](BackwardCall& c) { c.dx.dtype = c.dy.dtype = DType::f16; },
       {"dx"},
       unsup,
       DType::bf16,
       DType::bf16},
      {"dx f32 with a bf16 r_out",
       [](BackwardCall& c) { c.dx.dtype = c.dy.dtype = DType::f32; },
       {"dx"},
       unsup,
       DType::bf16,
       DType::bf16},
      {"r_out f8",
       [](BackwardCall& c) { c.r_out.dtype = c.dr_out.dtype = c.dr->dtype = DType::f8e4m3; },
       {"r_out"},
       inv},
      {"dy shape", [](BackwardCall& c) { c.dy.rows = kRows - 1; }, {"dy"}, inv},
      {"dr_out shape", [](BackwardCall& c) { c.dr_out.cols = kCols - 1; }, {"dr_out"}, inv},
      {"dr shape", [](BackwardCall& c) { c.dr->rows = kRows + 1; }, {"dr"}, inv},
      {"dr_out null", [](BackwardCall& c) { c.dr_out.data = nullptr; }, {"dr_out"}, inv},
      {"weight of dx's dtype but f16", [](BackwardCall& c) { c.weight->dtype = DType::f16; }, {"weight"}, unsup},
      {"dx overlaps r_out",
       [](BackwardCall& c) { c.dx.data = c.r_out.data; },
       {"dx", "r_out"},
       inv,
       DType::bf16,
       DType::bf16},
      {"dx is dy shifted", [shifted](BackwardCall& c) { c.dx = shifted(c.dy, 1); }, {"dx", "dy"}, inv},
      {"dx and dr both dr_out",
       [](BackwardCall& c) {
         c.dx = c.dr_out;
         c.dr = c.dr_out;
       },
       {"dx", "dr"},
       inv,
       DType::bf16,
       DType::bf16},
      {"dr overlaps dw", [](BackwardCall& c) { c.dw->data = c.dr->data; }, {"dr", "dw"}, inv},
      {"dr is r_out", [](BackwardCall& c) { c.dr = c.r_out; }, {"dr", "r_out"}, inv},
      {"dw without weight", [](BackwardCall& c) { c.weight.reset(); }, {"dw"}, inv},
      {"rstd too short", [](BackwardCall& c) { c.rstd->cols = kRows - 1; }, {"rstd"}, inv},
      {"workspace too small", [](BackwardCall& c) { c.ws.resize(4); }, {"workspace"}, inv},
  };
  for (const Case& k : cases) {
    BackwardCall call(k.rd, k.xd);
    k.change(call);
    const auto before = call.snapshot();
    const Status s = call.run();
    EXPECT_EQ(s.code, k.code) << k.what << ": " << s.message;
    EXPECT_TRUE(testing::names_any(s.message, k.names)) << k.what << ": " << s.message;
    EXPECT_TRUE(call.snapshot() == before) << k.what << ": a refused call wrote to a buffer";
    try {
      fused_add_backward(call.dy, call.dr_out, call.r_out, call.weight, call.rstd, call.dx, call.dr, call.dw,
                         call.params, call.ws.data(), call.ws.size());
      ADD_FAILURE() << k.what << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), k.code) << k.what << ": " << e.what();
    }
  }
}

TEST(FusedValidation, BackwardAliasesThatAreAllowed) {
  const auto accepted = [](const char* what, const std::function<void(BackwardCall&)>& change, DType rd = DType::f32,
                           DType xd = DType::bf16) {
    BackwardCall call(rd, xd);
    change(call);
    const Status s = call.run();
    EXPECT_TRUE(s.ok()) << what << ": " << s.message;
  };
  accepted("plain", [](BackwardCall&) {});
  accepted("dx is dy", [](BackwardCall& c) { c.dx = c.dy; });
  accepted("dr is dr_out", [](BackwardCall& c) { c.dr = c.dr_out; });
  accepted(
      "dx is dr_out (same dtype)",
      [](BackwardCall& c) {
        c.dx = c.dr_out;
        c.dr.reset();
      },
      DType::bf16, DType::bf16);
  accepted("no dr, no dw, no rstd, no weight", [](BackwardCall& c) {
    c.dr.reset();
    c.dw.reset();
    c.rstd.reset();
    c.weight.reset();
  });
  accepted("f32 weight with bf16 x and f32 r_out", [](BackwardCall& c) {
    c.weight = TensorView::vector(c.dwb.view.data, DType::f32, Device::cpu(), kCols);
    c.dw.reset();
  });
}

}  // namespace
}  // namespace rmsnorm
