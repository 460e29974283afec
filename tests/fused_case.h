// One case of the fused forwards (fused_add_forward, quant_forward, fused_add_quant_forward),
// run on a backend and judged against the fp64 oracle: the shared machinery of
// test_fused_forward.cpp.
//
// Like forward_case.h: poisoned host tensors with the requested layouts and guard space,
// normal inputs (never zero), the oracle computed before the call (x and the residual may be
// overwritten in place), the backend run (CUDA on device copies with the same layout and
// alignment), then every output checked: r_out bit for bit (the sum is rounded once, as the
// oracle's), y under forward_tolerance, q with compare_quantized against the scales the call
// used, computed scales with compare_scales, rstd under rstd_tolerance; no byte outside the
// outputs' elements written; inputs unchanged unless written in place.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "forward_case.h"
#include "harness.h"
#include "oracle.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::testing {

struct QuantCase {
  QuantScale kind = QuantScale::per_row;
  DType q = DType::f8e4m3;
  std::int64_t group_size = 128;   // per_group
  bool column_major = false;       // per_group
  std::int64_t scale_pad = 0;      // per_group: extra elements between rows of the scales matrix
  bool pow2 = false;               // per_row, per_group
  std::optional<double> scale_ub;  // per_row, per_group
  QuantDivision division = QuantDivision::exact;
  // static_tensor: the scale is this fraction of the oracle's max |y| / qmax over the whole
  // tensor (below 1: the largest values saturate).
  double static_fraction = 0.8;
};
inline QuantCase quant_case(QuantScale kind, DType q, std::int64_t group_size = 128, bool column_major = false) {
  QuantCase c;
  c.kind = kind;
  c.q = q;
  c.group_size = group_size;
  c.column_major = column_major;
  return c;
}

struct FusedCase {
  DType x = DType::bf16;
  std::optional<DType> w = DType::bf16;
  DType y = DType::bf16;           // the plain store's dtype (ignored with quant: q's is quant->q)
  std::optional<DType> residual;   // the residual's dtype; none: no residual add
  std::optional<QuantCase> quant;  // none: the plain store
  Cast cast = Cast::fp32;
  double offset = 0.0;
  bool rstd = true;
  std::int64_t batch = 1, rows = 1, cols = 1;
  std::int64_t batch_gap = 0;                                   // extra elements between batches (every view)
  std::int64_t x_pad = 0, r_pad = 0, r_out_pad = 0, y_pad = 0;  // row_stride = cols + pad
  std::int64_t x_lead = 0, r_lead = 0, r_out_lead = 0, y_lead = 0, w_lead = 0;
  bool y_in_place = false;         // y is x (plain store only)
  bool residual_in_place = false;  // residual_out is the residual
  double eps = 1e-6;
  double scale = 1.0;                   // x ~ N(0, scale^2); the residual ~ N(0, 1)
  std::vector<std::int64_t> zero_rows;  // rows of x and the residual set to zero (quant: min scale)
  // Params::strategy (CUDA; the CPU has one). A forced strategy that cannot serve the case
  // must be refused by name (Code::unsupported, "strategy: ...") with nothing written, and
  // the case counts as skipped.
  Strategy strategy = Strategy::automatic;
  std::string describe() const;
};

struct FusedOutcome {
  bool ran = false, refused = false;
  Code code = Code::ok;
  std::string message;
  reference::HostTensor x, r, r_out, y, rstd, scales, scale_ub;
  reference::FusedAddResult ref;                // without a residual: r_out empty, norm = forward of x
  std::vector<double> used_scales, ref_scales;  // (rows, groups) row-major; ref: unrounded
  reference::Comparison y_cmp, r_out_cmp, rstd_cmp, scales_cmp;
  std::int64_t stray = 0;
  std::string changed;  // an input the call must not have written
};

FusedOutcome run_fused_case(Backend b, const FusedCase& c);
// run_fused_case plus the expectations. Returns false, after reporting, when the case
// failed. A CUDA call refused as not yet implemented sets *skipped (when given) and passes.
bool check_fused_case(Backend b, const FusedCase& c, bool* skipped = nullptr);

// Every (x, residual, weight, y) the residual add accepts on the backend.
std::vector<FusedCase> residual_combos(Backend b);

// The scales a quantised call used, as doubles in (rows, groups) row-major order.
std::vector<double> gather_scales(const FusedCase& c, const reference::HostTensor& scales);

}  // namespace rmsnorm::testing
