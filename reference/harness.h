// Helpers shared by the tests and by `rmsnorm check`: host tensors with poisoned padding,
// random normal filling, and comparison against the oracle with a tolerance.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rmsnorm/rmsnorm.h"
#include "tolerances.h"

namespace rmsnorm::reference {

// Every byte of a fresh buffer is 0xFF: a NaN in f32, f16 and bf16 alike. An element the
// kernel fails to write stays NaN and fails any comparison; padding between strided rows
// must still be 0xFF afterwards (no stray writes).
constexpr unsigned char kPoisonByte = 0xFF;

// The smallest number of elements a buffer needs to hold every element of `v`.
std::int64_t span_elements(const TensorView& v);

struct HostTensor {
  std::vector<unsigned char> bytes;  // span_elements(view) * dtype size, poisoned
  TensorView view;                   // view.data points into bytes
};

// A poisoned host tensor with the given layout (strides in elements; -1 for contiguous).
HostTensor make_host(DType dtype, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                     std::int64_t batch_stride = -1, std::int64_t row_stride = -1);
HostTensor make_host_vector(DType dtype, std::int64_t n);

// Fills the view's elements (never the padding) with N(mean, stddev^2) samples, rounded
// to the dtype, drawn from a generator seeded with `seed`. Zeros are replaced by `mean+stddev`
// so that no element is zero.
void fill_normal(const TensorView& v, std::uint64_t seed, double mean = 0.0, double stddev = 1.0);

// Poisons every byte of the view's span.
void poison(const TensorView& v);

struct Comparison {
  std::int64_t checked = 0;
  std::int64_t failures = 0;  // elements outside the tolerance (NaN counts)
  double worst_ratio = 0;     // max |got-ref| / (atol + rtol |ref|); <= 1 passes
  double worst_abs = 0;       // max |got-ref|
  std::int64_t worst_index = -1;
  // Quantised codes (and pow2 scales) one step from the exact one, accepted because the
  // exact value lies within the tolerance of the boundary between the two (counted 0.5).
  std::int64_t boundary = 0;
  bool passed() const { return failures == 0 && checked > 0; }
  std::string describe() const;  // "worst 0.31 of tolerance (abs 1.2e-03 at 17)"
};

// Compares `got` (a host view of total_rows x cols) with `ref` (row-major, contiguous).
Comparison compare(const TensorView& got, const std::vector<double>& ref, Tolerance tol);
// Compares a contiguous host vector with ref.
Comparison compare_vector(const void* got, DType dtype, const std::vector<double>& ref, Tolerance tol);

// Element-wise tolerance: |got - ref| <= tol.rtol * |ref| + tol.atol * scale[i] + tol.floor, for the
// backward's outputs whose error bound depends on the size of the terms that were summed.
Comparison compare_scaled(const TensorView& got, const std::vector<double>& ref, const std::vector<double>& scale,
                          Tolerance tol);
Comparison compare_vector_scaled(const void* got, DType dtype, const std::vector<double>& ref,
                                 const std::vector<double>& scale, Tolerance tol);

// Quantised codes q (a host view of total_rows x cols, f8e4m3 or i8) against the oracle's y
// (row-major) and the scales the call used (rows x groups row-major: its written scales, or
// the static scale repeated; group_size == cols for one scale a row). With t = y / s exact,
// a code passes when it is quant_code of a value in [t - e, t + e], e = tol(y) / s + |t| 2^-24
// (y's tolerance, and the fp32 division's one rounding; with QuantDivision::reciprocal
// |t| 2^-22: the rounding of 1 / s and of the product): the code of t, or its neighbour
// where t lies within e of the boundary between them (counted in `boundary`, ratio 0.5).
Comparison compare_quantized(const TensorView& q, const std::vector<double>& y, const std::vector<double>& scales,
                             std::int64_t group_size, Tolerance y_tol, QuantDivision division = QuantDivision::exact);

// Computed scales against the oracle's: within `tol` (quant_scale_tolerance); with pow2,
// the power of two of some scale within `tol` of the exact one (the exact one's, or the next
// one where the exact scale is that close to a power of two: counted in `boundary`).
Comparison compare_scales(const std::vector<double>& got, const std::vector<double>& ref_unrounded, Tolerance tol,
                          bool pow2);

// Counts bytes of `buffer` outside the elements of `v` that are no longer kPoisonByte.
std::int64_t count_stray_writes(const std::vector<unsigned char>& buffer, const TensorView& v);

// Merges two comparisons (for a group line).
void merge(Comparison& into, const Comparison& other);

}  // namespace rmsnorm::reference
