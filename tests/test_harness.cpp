// The judges judged: the oracle, the comparison and the stray-write count must be able to
// fail. Each test builds a correct output from the oracle itself (independent of the
// library's kernels), checks that it passes, then breaks it in one way and checks that
// the break is caught.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <optional>

#include "forward_case.h"
#include "harness.h"
#include "oracle.h"
#include "support.h"

namespace rmsnorm {
namespace {

using reference::Comparison;
using reference::HostTensor;

struct Judged {
  HostTensor x, w, y;
  reference::ForwardResult ref;
  reference::Tolerance tol;
};

// x (rows, cols) of dtype t with a padded row stride, the oracle's answer rounded into y.
Judged correct_output(DType t, Cast cast, std::int64_t rows = 5, std::int64_t cols = 100) {
  Judged j;
  j.x = testing::make_tensor(t, 1, rows, cols, -1, cols + 3);
  j.w = testing::make_vector(t, cols);
  j.y = testing::make_tensor(t, 1, rows, cols, -1, cols + 3);
  reference::fill_normal(j.x.view, 11);
  reference::fill_normal(j.w.view, 12, 1.0, 0.5);
  Params p;
  p.cast = cast;
  j.ref = reference::forward(j.x.view, j.w.view, t, p);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c)
      store_from_double(j.y.view.data, t, r * j.y.view.row_stride + c, j.ref.y[static_cast<std::size_t>(r * cols + c)]);
  j.tol = reference::forward_tolerance(t, t, cast, cols);
  return j;
}

std::int64_t offset_of(const TensorView& v, std::int64_t r, std::int64_t c) { return r * v.row_stride + c; }

// Moves element (r, c) of y `ulps` representable values away from where it is.
void nudge(const TensorView& y, std::int64_t r, std::int64_t c, int ulps) {
  const std::int64_t off = offset_of(y, r, c);
  unsigned char* p = static_cast<unsigned char*>(y.data) + off * static_cast<std::int64_t>(dtype_size(y.dtype));
  if (dtype_size(y.dtype) == 2) {
    std::uint16_t b;
    std::memcpy(&b, p, 2);
    b = static_cast<std::uint16_t>(b + ulps);  // same sign, within the binade or the next
    std::memcpy(p, &b, 2);
  } else if (y.dtype == DType::f32) {
    std::uint32_t b;
    std::memcpy(&b, p, 4);
    b += static_cast<std::uint32_t>(ulps);
    std::memcpy(p, &b, 4);
  } else {
    std::uint64_t b;
    std::memcpy(&b, p, 8);
    b += static_cast<std::uint64_t>(ulps);
    std::memcpy(p, &b, 8);
  }
}

TEST(Harness, CorrectOutputPasses) {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f64})
    for (Cast cast : {Cast::fp32, Cast::llama}) {
      Judged j = correct_output(t, cast);
      const Comparison c = reference::compare(j.y.view, j.ref.y, j.tol);
      EXPECT_TRUE(c.passed()) << dtype_name(t) << ": " << c.describe();
      EXPECT_EQ(c.checked, 5 * 100);
      EXPECT_EQ(reference::count_stray_writes(j.y.bytes, j.y.view), 0);
    }
}

// An error of a few units in the last place of the output dtype is caught. For 16-bit
// outputs the tolerance of a row of 100 is under 2 ulps of y (fp32 cast) or 5 ulps (llama
// cast: two roundings of x's dtype and two of y's); for f32 and f64 it is dominated by the
// sum of squares' allowance, (8 + 4 sqrt(100)) u: 64 ulps are well outside it.
TEST(Harness, CatchesAFewUlpsOnOneElement) {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f64})
    for (Cast cast : {Cast::fp32, Cast::llama}) {
      Judged j = correct_output(t, cast);
      // The tolerance is relative; a positive element far from zero keeps the nudge in its
      // binade. Any element would do for the count.
      const int ulps = t == DType::f32 || t == DType::f64 ? 64 : cast == Cast::fp32 ? 2 : 5;
      nudge(j.y.view, 3, 41, ulps);
      const Comparison c = reference::compare(j.y.view, j.ref.y, j.tol);
      EXPECT_FALSE(c.passed()) << dtype_name(t) << " " << ulps << " ulps: " << c.describe();
      EXPECT_EQ(c.failures, 1) << dtype_name(t);
      EXPECT_EQ(c.worst_index, 3 * 100 + 41) << dtype_name(t);
      EXPECT_GT(c.worst_ratio, 1.0);
    }
}

TEST(Harness, CatchesAnUnwrittenElement) {
  Judged j = correct_output(DType::bf16, Cast::fp32);
  std::memset(static_cast<unsigned char*>(j.y.view.data) + offset_of(j.y.view, 4, 99) * 2, 0xFF, 2);
  const Comparison c = reference::compare(j.y.view, j.ref.y, j.tol);
  EXPECT_FALSE(c.passed()) << c.describe();
  EXPECT_EQ(c.failures, 1);
  EXPECT_EQ(c.worst_index, 4 * 100 + 99);
}

TEST(Harness, CatchesAWriteIntoThePadding) {
  Judged j = correct_output(DType::f16, Cast::fp32);
  // The first padding element after row 2 (row_stride is cols + 3).
  store_from_double(j.y.view.data, DType::f16, offset_of(j.y.view, 2, 100), 1.0);
  EXPECT_EQ(reference::count_stray_writes(j.y.bytes, j.y.view), 2);
  EXPECT_TRUE(reference::compare(j.y.view, j.ref.y, j.tol).passed());
}

TEST(Harness, CatchesAWrongRstd) {
  Judged j = correct_output(DType::f32, Cast::fp32);
  std::vector<float> rstd(j.ref.rstd.begin(), j.ref.rstd.end());
  const auto tol = reference::rstd_tolerance(DType::f32, 100);
  EXPECT_TRUE(reference::compare_vector(rstd.data(), DType::f32, j.ref.rstd, tol).passed());
  rstd[2] *= 1.0f + 1e-4f;  // the rstd of a different eps, or of a sum missing a term
  EXPECT_FALSE(reference::compare_vector(rstd.data(), DType::f32, j.ref.rstd, tol).passed());
}

// The oracle itself on numbers worked out by hand: x = (3, 4), eps = 0: mean(x^2) = 12.5.
TEST(Harness, OracleByHand) {
  double x[2] = {3.0, 4.0}, w[2] = {2.0, -1.0};
  const TensorView xv = TensorView::matrix(x, DType::f64, Device::cpu(), 1, 2);
  const TensorView wv = TensorView::vector(w, DType::f64, Device::cpu(), 2);
  Params p;
  p.eps = 0.0;
  const auto r = reference::forward(xv, wv, DType::f64, p);
  const double rstd = 1.0 / std::sqrt(12.5);
  EXPECT_DOUBLE_EQ(r.rstd[0], rstd);
  EXPECT_DOUBLE_EQ(r.y[0], 3.0 * rstd * 2.0);
  EXPECT_DOUBLE_EQ(r.y[1], 4.0 * rstd * -1.0);
  p.weight_offset = 1.0;
  const auto g = reference::forward(xv, wv, DType::f64, p);
  EXPECT_DOUBLE_EQ(g.y[0], 3.0 * rstd * 3.0);
  EXPECT_DOUBLE_EQ(g.y[1], 0.0);
}

// The case runner reports a failing backend: a CPU run whose output is then corrupted
// must not pass check_outcome.
TEST(Harness, CaseCheckCanFail) {
  testing::Case c;
  c.combo = {DType::bf16, DType::bf16, DType::bf16};
  c.rows = 3;
  c.cols = 64;
  testing::Outcome o = testing::run_case(testing::Backend::cpu, c);
  ASSERT_TRUE(o.ran) << o.message;
  ASSERT_TRUE(o.y_cmp.passed()) << o.y_cmp.describe();
  nudge(o.y.view, 1, 7, 2);
  o.y_cmp =
      reference::compare(o.y.view, o.ref.y, reference::forward_tolerance(DType::bf16, DType::bf16, Cast::fp32, 64));
  EXPECT_FALSE(o.y_cmp.passed());
  bool reported = true;
  ::testing::TestPartResultArray failures;
  {
    ::testing::ScopedFakeTestPartResultReporter catcher(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &failures);
    reported = !testing::check_outcome(testing::Backend::cpu, c, o);
  }
  EXPECT_TRUE(reported);
  EXPECT_EQ(failures.size(), 1);
}

}  // namespace
}  // namespace rmsnorm
