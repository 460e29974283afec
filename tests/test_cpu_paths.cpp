// The CPU backend's instruction sets give the same bits. Every vector path (AVX2, AVX-512;
// skipped, with the reason, where this CPU lacks it) is forced through
// cpu::set_active_isa and compared byte for byte with the portable path, over awkward
// shapes (1, odd, primes, non-multiples of 16), misaligned starts, strided and batched
// rows, in place, every dtype combination, with and without a weight, both casts, weight
// offsets, forward (plain, and the residual add, whose norm runs the plain loop) and
// backward, with plain and with non-temporal stores; on values that
// include zeros, subnormals, overflow, infinities and NaNs. The fp64 oracle judges the
// portable path elsewhere (test_forward.cpp, test_backward.cpp); equal bits carry that to
// every path. Also: each path's f32 -> f16 / bf16 rounding against dtype.h's, and layout,
// batch and thread-count invariance of the active path.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/parallel.h"
#include "forward_case.h"
#include "support.h"

namespace rmsnorm::testing {
namespace {

namespace cpu = rmsnorm::detail::cpu;
using cpu::Isa;

// Forces an instruction set (and a way of storing) for a scope.
class ForcedPath {
 public:
  ForcedPath(Isa isa, bool stream)
      : isa_(cpu::set_active_isa(isa)), threshold_(cpu::set_stream_threshold(stream ? 0 : ~std::size_t(0))) {}
  ~ForcedPath() {
    cpu::set_active_isa(isa_);
    cpu::set_stream_threshold(threshold_);
  }
  ForcedPath(const ForcedPath&) = delete;
  ForcedPath& operator=(const ForcedPath&) = delete;

 private:
  Isa isa_;
  std::size_t threshold_;
};

// A copy whose view points into its own bytes.
HostTensor clone(const HostTensor& t) {
  HostTensor c = t;
  c.view.data = c.bytes.data() + (static_cast<const unsigned char*>(t.view.data) - t.bytes.data());
  return c;
}

// Normal samples of standard deviation `scale`; with `specials`, about one element in
// eight replaced by a value from the edges of the dtype: +-0, subnormals, the largest
// finite values, infinities, NaNs (signalling ones too), values that round to a tie.
void fill_values(const TensorView& v, std::uint64_t seed, double scale, bool specials) {
  reference::fill_normal(v, seed, 0.0, scale);
  if (!specials) return;
  std::mt19937_64 gen(seed ^ 0x5bd1e995);
  const std::size_t es = dtype_size(v.dtype);
  const auto put = [&](std::int64_t off, std::uint64_t bits) {
    std::memcpy(static_cast<unsigned char*>(v.data) + off * es, &bits, es);
  };
  const std::vector<std::uint64_t> f16 = {0x0000, 0x8000, 0x0001, 0x83ff, 0x0400, 0x7bff, 0xfbff,
                                          0x7c00, 0xfc00, 0x7e00, 0xfe01, 0x7c01, 0x3c01, 0x0200};
  const std::vector<std::uint64_t> bf16 = {0x0000, 0x8000, 0x0001, 0x807f, 0x0080, 0x7f7f, 0xff7f,
                                           0x7f80, 0xff80, 0x7fc0, 0xffc1, 0x7f81, 0x3f81, 0x0040};
  const std::vector<std::uint64_t> f32 = {0x00000000, 0x80000000, 0x00000001, 0x807fffff, 0x00800000,
                                          0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000, 0x7fc00000,
                                          0xffc00001, 0x7f800001, 0x3f808000, 0x33800000, 0x387fe000};
  const std::vector<std::uint64_t> f64 = {0x0,
                                          0x8000000000000000,
                                          0x1,
                                          0x7fefffffffffffff,
                                          0x7ff0000000000000,
                                          0xfff0000000000000,
                                          0x7ff8000000000000,
                                          0x7ff0000000000001};
  const std::vector<std::uint64_t>& table = v.dtype == DType::f16    ? f16
                                            : v.dtype == DType::bf16 ? bf16
                                            : v.dtype == DType::f32  ? f32
                                                                     : f64;
  for (std::int64_t b = 0; b < v.batch; ++b)
    for (std::int64_t r = 0; r < v.rows; ++r)
      for (std::int64_t c = 0; c < v.cols; ++c)
        if (gen() % 8 == 0) put(b * v.batch_stride + r * v.row_stride + c, table[gen() % table.size()]);
}

std::string isa_skip_reason(Isa isa) {
  if (cpu::isa_available(isa)) return "";
  return std::string(cpu::isa_name(isa)) + " is not available (this CPU, OS or build lacks it)";
}

// The first differing byte of two buffers, described; empty when they are equal.
std::string first_difference(const std::vector<unsigned char>& want, const std::vector<unsigned char>& got) {
  if (want.size() != got.size()) return "sizes differ";
  for (std::size_t i = 0; i < want.size(); ++i)
    if (want[i] != got[i]) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "byte %zu of %zu: 0x%02x (portable) vs 0x%02x", i, want.size(), want[i], got[i]);
      return buf;
    }
  return "";
}

// ---------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------

struct ForwardSpec {
  Combo combo{DType::f32, DType::f32, DType::f32};
  Cast cast = Cast::fp32;
  double offset = 0.0;
  std::int64_t batch = 1, rows = 1, cols = 1;
  std::int64_t batch_stride = -1, row_stride = -1;
  std::int64_t x_lead = 0, y_lead = 0, w_lead = 0;
  bool in_place = false;
  double scale = 1.0;
  bool specials = false;
  std::string describe() const {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s cast=%s offset=%g %lldx%lldx%lld strides=(%lld,%lld) lead(x,y,w)=(%lld,%lld,%lld)%s "
                  "scale=%g%s",
                  combo.name().c_str(), cast == Cast::llama ? "llama" : "fp32", offset, (long long)batch,
                  (long long)rows, (long long)cols, (long long)batch_stride, (long long)row_stride, (long long)x_lead,
                  (long long)y_lead, (long long)w_lead, in_place ? " in-place" : "", scale,
                  specials ? " specials" : "");
    return buf;
  }
};

struct ForwardInputs {
  HostTensor x;
  std::optional<HostTensor> w;
};

ForwardInputs forward_inputs(const ForwardSpec& s, std::uint64_t seed) {
  ForwardInputs in{make_tensor(s.combo.x, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, s.x_lead, 5),
                   std::nullopt};
  fill_values(in.x.view, seed, s.scale, s.specials);
  if (s.combo.w) {
    in.w = make_vector(*s.combo.w, s.cols, s.w_lead, 1);
    reference::fill_normal(in.w->view, seed + 1, 1.0, 0.1);
    if (s.specials) fill_values(in.w->view, seed + 2, 1.0, true);
  }
  return in;
}

// What a forward call of the spec takes besides its rows: rstd's buffer, the parameters and
// the weight's view.
struct CallExtras {
  HostTensor rstd;
  Params p;
  std::optional<TensorView> w;
};
CallExtras call_extras(const ForwardSpec& s, const ForwardInputs& in) {
  CallExtras e{make_vector(s.combo.x == DType::f64 ? DType::f64 : DType::f32, s.batch * s.rows, 0, 1), Params{},
               in.w ? std::optional<TensorView>(in.w->view) : std::nullopt};
  e.p.cast = s.cast;
  e.p.weight_offset = s.offset;
  return e;
}

// y's buffer (x's when in place), then rstd's, as one byte string.
std::vector<unsigned char> forward_bytes(Isa isa, bool stream, const ForwardSpec& s, const ForwardInputs& in) {
  ForcedPath forced(isa, stream);
  HostTensor x = clone(in.x);
  HostTensor y =
      s.in_place ? x : make_tensor(s.combo.y, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, s.y_lead, 5);
  if (s.in_place) y.view.data = x.view.data;
  CallExtras e = call_extras(s, in);
  forward(x.view, e.w, y.view, e.p, e.rstd.view);
  std::vector<unsigned char> out = s.in_place ? x.bytes : y.bytes;
  out.insert(out.end(), e.rstd.bytes.begin(), e.rstd.bytes.end());
  return out;
}

// Runs the spec on the portable path and on `isa`, plain and streamed; false (after
// reporting) when any run differs from the portable one.
bool same_forward_bits(Isa isa, const ForwardSpec& s, std::uint64_t seed) {
  const ForwardInputs in = forward_inputs(s, seed);
  const std::vector<unsigned char> want = forward_bytes(Isa::scalar, false, s, in);
  for (bool stream : {false, true}) {
    const std::string diff = first_difference(want, forward_bytes(isa, stream, s, in));
    if (!diff.empty()) {
      ADD_FAILURE() << cpu::isa_name(isa) << (stream ? " (streamed)" : "")
                    << " differs from the portable path: " << s.describe() << ": " << diff;
      return false;
    }
  }
  return true;
}

// Rows beyond 8192 elements compute the weight per block (simd_rows.inl's kWeightBuffer).
const std::vector<std::int64_t> kOddCols = {1,   2,    3,    5,    7,    8,    13,   15,   16,   17,   31,
                                            32,  33,   47,   61,   64,   97,   100,  127,  128,  129,  251,
                                            256, 1000, 1031, 2053, 4096, 4099, 8191, 8192, 8209, 12288};

class CpuPaths : public ::testing::TestWithParam<Isa> {
 protected:
  void SetUp() override {
    const std::string reason = isa_skip_reason(GetParam());
    if (!reason.empty()) GTEST_SKIP() << reason;
  }
  Isa isa() const { return GetParam(); }
};

// Every dtype combination, both casts, offsets 0 and 1 (and none without a weight), over
// the awkward column counts, one row and several.
TEST_P(CpuPaths, ForwardCombosCastsOffsets) {
  int failures = 0;
  for (const Combo& combo : allowed_combos(Backend::cpu))
    for (Cast cast : {Cast::fp32, Cast::llama})
      for (double offset : {0.0, 1.0}) {
        if (offset != 0.0 && !combo.w) continue;
        for (std::int64_t cols : kOddCols) {
          ForwardSpec s;
          s.combo = combo;
          s.cast = cast;
          s.offset = offset;
          s.rows = cols > 1000 ? 2 : 5;
          s.cols = cols;
          if (!same_forward_bits(isa(), s, seed_of({cols, int(cast), int(offset), int(combo.x)})) && ++failures > 8)
            return;
        }
      }
}

// Misaligned starts (x, y and the weight each off by an element or more), strided rows
// whose pitch breaks the alignment of every other row, batched views with a gap, in place.
TEST_P(CpuPaths, ForwardLayouts) {
  int failures = 0;
  for (const Combo& combo : allowed_combos(Backend::cpu))
    for (std::int64_t cols : {1, 7, 16, 33, 100, 257, 1031, 4099}) {
      std::vector<ForwardSpec> specs;
      for (std::int64_t lead : {1, 3, 5}) {
        ForwardSpec s;
        s.rows = 4;
        s.x_lead = lead;
        s.y_lead = (lead * 7) % 11;
        s.w_lead = lead % 2;
        specs.push_back(s);
      }
      for (std::int64_t pad : {1, 7, 16}) {
        ForwardSpec s;
        s.rows = 6;
        s.row_stride = cols + pad;
        s.y_lead = pad % 3;
        specs.push_back(s);
      }
      {
        ForwardSpec s;
        s.batch = 3;
        s.rows = 2;
        s.row_stride = cols + 3;
        s.batch_stride = 2 * (cols + 3) + 37;
        s.x_lead = s.y_lead = 1;
        specs.push_back(s);
      }
      if (combo.y == combo.x)
        for (std::int64_t pad : {0, 5}) {
          ForwardSpec s;
          s.rows = 5;
          s.row_stride = cols + pad;
          s.x_lead = pad;
          s.in_place = true;
          specs.push_back(s);
        }
      for (std::size_t i = 0; i < specs.size(); ++i) {
        ForwardSpec s = specs[i];
        s.combo = combo;
        s.cols = cols;
        s.cast = i % 2 ? Cast::llama : Cast::fp32;
        s.offset = combo.w && i % 3 == 0 ? 1.0 : 0.0;
        if (!same_forward_bits(isa(), s, seed_of({cols, std::int64_t(i), int(combo.x), 17})) && ++failures > 8) return;
      }
    }
}

// Values at the edges: tiny (subnormal results), huge (the sum of squares overflows;
// 16-bit results overflow), and rows with zeros, infinities and NaNs in x and the weight.
TEST_P(CpuPaths, ForwardSpecialValues) {
  int failures = 0;
  for (const Combo& combo : allowed_combos(Backend::cpu))
    for (Cast cast : {Cast::fp32, Cast::llama})
      for (std::int64_t cols : {1, 15, 64, 100, 1031})
        for (int kind = 0; kind < 4; ++kind) {
          ForwardSpec s;
          s.combo = combo;
          s.cast = cast;
          s.offset = combo.w && kind == 3 ? 1.0 : 0.0;
          s.rows = 7;
          s.cols = cols;
          s.scale = kind == 0 ? 1e-6 : kind == 1 ? 3e4 : 1.0;
          s.specials = kind >= 2;
          if (!same_forward_bits(isa(), s, seed_of({cols, kind, int(cast), int(combo.x), 23})) && ++failures > 8)
            return;
        }
}

// Each path's f32 -> f16 and f32 -> bf16 rounding against dtype.h's own functions, on
// every exponent and on mantissas that round down, up and to even ties, NaN payloads,
// subnormals. x is a row of ones with eps = 0 and a power-of-two length, so rstd is 1 and
// y = round(1 * (w + 0)): the f32 weight's values reach the store unchanged (but -0 -> +0).
TEST_P(CpuPaths, RoundingLikeDtypeH) {
  std::vector<std::uint32_t> patterns;
  const std::uint32_t mantissas[] = {0x000000, 0x000001, 0x000fff, 0x001000, 0x001001, 0x002000, 0x003000,
                                     0x007fff, 0x008000, 0x008001, 0x018000, 0x3fffff, 0x400000, 0x400001,
                                     0x7fe000, 0x7ff000, 0x7fefff, 0x7fffff, 0x2aaaaa, 0x555555};
  for (std::uint32_t sign : {0u, 0x80000000u})
    for (std::uint32_t exponent = 0; exponent < 256; ++exponent)
      for (std::uint32_t m : mantissas) patterns.push_back(sign | (exponent << 23) | m);
  std::mt19937 gen(7);
  while (patterns.size() % 1024 != 0 || patterns.size() < 16 * 1024) patterns.push_back(gen());

  constexpr std::int64_t kCols = 1024;
  const std::int64_t rows = static_cast<std::int64_t>(patterns.size()) / kCols;
  for (DType t : {DType::f16, DType::bf16}) {
    HostTensor x = make_tensor(t, 1, rows, kCols);
    for (std::int64_t i = 0; i < rows * kCols; ++i) store_from_double(x.view.data, t, i, 1.0);
    std::vector<unsigned char> want(patterns.size() * 2);
    for (bool stream : {false, true}) {
      ForcedPath forced(isa(), stream);
      HostTensor y = make_tensor(t, 1, rows, kCols);
      HostTensor w = make_vector(DType::f32, kCols);
      Params p;
      p.eps = 0.0;
      for (std::int64_t r = 0; r < rows; ++r) {
        std::memcpy(w.view.data, patterns.data() + r * kCols, kCols * 4);
        const TensorView xr =
            TensorView::matrix(static_cast<unsigned char*>(x.view.data) + r * kCols * 2, t, Device::cpu(), 1, kCols);
        const TensorView yr =
            TensorView::matrix(static_cast<unsigned char*>(y.view.data) + r * kCols * 2, t, Device::cpu(), 1, kCols);
        forward(xr, w.view, yr, p);
      }
      int bad = 0;
      for (std::size_t i = 0; i < patterns.size(); ++i) {
        float v;
        std::memcpy(&v, &patterns[i], 4);
        v = v + 0.0f;                // what the loops compute: w + offset
        if (std::isnan(v)) v = NAN;  // results are canonical NaNs
        const std::uint16_t expect = t == DType::f16 ? float_to_half_bits(v) : float_to_bf16_bits(v);
        std::uint16_t got;
        std::memcpy(&got, static_cast<const unsigned char*>(y.view.data) + 2 * i, 2);
        if (got != expect && ++bad <= 5)
          ADD_FAILURE() << cpu::isa_name(isa()) << (stream ? " (streamed)" : "") << " rounds f32 0x" << std::hex
                        << patterns[i] << " to " << dtype_name(t) << " 0x" << got << ", dtype.h gives 0x" << expect;
      }
      if (bad) return;
    }
  }
}

// Every f16 and bf16 bit pattern as an input (finite ones in rows of their own, so that a
// NaN does not make the whole row NaN), through all the 16-bit combinations.
TEST_P(CpuPaths, EveryHalfPatternAsInput) {
  int failures = 0;
  for (const Combo& combo : allowed_combos(Backend::cpu)) {
    if (combo.x != DType::f16 && combo.x != DType::bf16) continue;
    for (Cast cast : {Cast::fp32, Cast::llama}) {
      ForwardSpec s;
      s.combo = combo;
      s.cast = cast;
      s.rows = 64;
      s.cols = 1024;
      ForwardInputs in = forward_inputs(s, seed_of({int(combo.x), int(cast), 29}));
      for (std::int64_t i = 0; i < 65536; ++i) {
        const auto bits = static_cast<std::uint16_t>(i);
        std::memcpy(static_cast<unsigned char*>(in.x.view.data) + 2 * i, &bits, 2);
      }
      const std::vector<unsigned char> want = forward_bytes(Isa::scalar, false, s, in);
      for (bool stream : {false, true}) {
        const std::string diff = first_difference(want, forward_bytes(isa(), stream, s, in));
        if (!diff.empty()) {
          ADD_FAILURE() << cpu::isa_name(isa()) << " differs on every-pattern rows: " << s.describe() << ": " << diff;
          if (++failures > 4) return;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// The residual add (fused_add_forward with a residual of x's dtype): its prologue, then the
// plain loop of the path over r_out
// ---------------------------------------------------------------------------------------

// y, r_out and rstd of one fused_add_forward call on `isa`, as one byte string. In place:
// y is x and r_out is the residual (vLLM's contract); else strided, misaligned outputs.
std::vector<unsigned char> residual_add_bytes(Isa isa, bool stream, const ForwardSpec& s, const ForwardInputs& in,
                                              const HostTensor& residual) {
  ForcedPath forced(isa, stream);
  HostTensor x = clone(in.x), r = clone(residual);
  HostTensor y =
      s.in_place ? x : make_tensor(s.combo.y, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, s.y_lead, 5);
  HostTensor r_out = s.in_place ? r : make_tensor(s.combo.x, s.batch, s.rows, s.cols, -1, s.cols + 3, 2, 3);
  if (s.in_place) {
    y.view.data = x.view.data;
    r_out.view.data = r.view.data;
  }
  CallExtras e = call_extras(s, in);
  fused_add_forward(x.view, r.view, e.w, y.view, r_out.view, e.p, e.rstd.view);
  std::vector<unsigned char> out = s.in_place ? x.bytes : y.bytes;
  const std::vector<unsigned char>& r_bytes = s.in_place ? r.bytes : r_out.bytes;
  out.insert(out.end(), r_bytes.begin(), r_bytes.end());
  out.insert(out.end(), e.rstd.bytes.begin(), e.rstd.bytes.end());
  return out;
}

// Every dtype combination, both casts, an offset, awkward lengths, strided and misaligned
// rows and the in-place form, plain and streamed, on values with the dtype's edges.
TEST_P(CpuPaths, ResidualAddForward) {
  int failures = 0;
  for (const Combo& combo : allowed_combos(Backend::cpu))
    for (std::int64_t cols : {1, 7, 16, 33, 100, 257, 1031, 4099, 8209})
      for (int variant = 0; variant < 3; ++variant) {
        ForwardSpec s;
        s.combo = combo;
        s.cols = cols;
        s.rows = 5;
        s.cast = variant == 1 ? Cast::llama : Cast::fp32;
        s.offset = combo.w && variant == 2 ? 1.0 : 0.0;
        s.specials = variant == 2;
        s.in_place = variant == 1 && combo.y == combo.x;
        if (!s.in_place) {
          s.row_stride = cols + variant;
          s.x_lead = variant;
          s.y_lead = 1;
        }
        const std::uint64_t seed = seed_of({cols, variant, int(combo.x), 31});
        const ForwardInputs in = forward_inputs(s, seed);
        HostTensor residual = make_tensor(combo.x, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, 1, 2);
        fill_values(residual.view, seed + 7, 1.0, s.specials);
        const std::vector<unsigned char> want = residual_add_bytes(Isa::scalar, false, s, in, residual);
        for (bool stream : {false, true}) {
          const std::string diff = first_difference(want, residual_add_bytes(isa(), stream, s, in, residual));
          if (!diff.empty()) {
            ADD_FAILURE() << cpu::isa_name(isa()) << (stream ? " (streamed)" : "")
                          << " residual add differs from the portable path: " << s.describe() << ": " << diff;
            if (++failures > 8) return;
          }
        }
      }
}

// ---------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------

struct BackwardSpec {
  DType x = DType::f32;
  std::optional<DType> w = DType::f32;  // none: no weight (and no dw)
  std::optional<DType> dw;              // none: no dw output
  std::int64_t batch = 1, rows = 3, cols = 1;
  std::int64_t batch_stride = -1, row_stride = -1;
  std::int64_t lead = 0;
  bool saved_rstd = false;
  bool in_place = false;
  double offset = 0.0;
  bool specials = false;
  std::string describe() const {
    char buf[320];
    std::snprintf(buf, sizeof buf, "x=%s w=%s dw=%s %lldx%lldx%lld strides=(%lld,%lld) lead=%lld%s%s offset=%g%s",
                  dtype_name(x), w ? dtype_name(*w) : "none", dw ? dtype_name(*dw) : "none", (long long)batch,
                  (long long)rows, (long long)cols, (long long)batch_stride, (long long)row_stride, (long long)lead,
                  saved_rstd ? " rstd" : "", in_place ? " in-place" : "", offset, specials ? " specials" : "");
    return buf;
  }
};

struct BackwardInputs {
  HostTensor x, dy;
  std::optional<HostTensor> w, rstd;
};

BackwardInputs backward_inputs(const BackwardSpec& s, std::uint64_t seed) {
  BackwardInputs in{make_tensor(s.x, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, s.lead, 3),
                    make_tensor(s.x, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, (s.lead * 5) % 7, 3),
                    std::nullopt, std::nullopt};
  fill_values(in.x.view, seed, 1.0, s.specials);
  fill_values(in.dy.view, seed + 1, 1.0, s.specials);
  if (s.w) {
    in.w = make_vector(*s.w, s.cols, s.lead % 2, 1);
    reference::fill_normal(in.w->view, seed + 2, 1.0, 0.1);
  }
  if (s.saved_rstd) {
    const DType t = s.x == DType::f64 ? DType::f64 : DType::f32;
    in.rstd = make_vector(t, s.batch * s.rows);
    std::mt19937_64 gen(seed + 3);
    std::uniform_real_distribution<double> dist(0.5, 2.0);
    for (std::int64_t i = 0; i < s.batch * s.rows; ++i) store_from_double(in.rstd->view.data, t, i, dist(gen));
  }
  return in;
}

// dx's buffer (dy's when in place), then dw's.
std::vector<unsigned char> backward_bytes(Isa isa, bool stream, const BackwardSpec& s, const BackwardInputs& in) {
  ForcedPath forced(isa, stream);
  HostTensor dy = clone(in.dy);
  HostTensor dx = s.in_place ? dy : make_tensor(s.x, s.batch, s.rows, s.cols, s.batch_stride, s.row_stride, 2, 3);
  if (s.in_place) dx.view.data = dy.view.data;
  std::optional<HostTensor> dw;
  if (s.dw) dw = make_vector(*s.dw, s.cols, 1, 1);
  Params p;
  p.weight_offset = s.offset;
  const auto opt = [](const std::optional<HostTensor>& t) {
    return t ? std::optional<TensorView>(t->view) : std::nullopt;
  };
  const std::optional<TensorView> dwv = opt(dw);
  std::vector<unsigned char> ws(backward_workspace_size(in.x.view, dwv, p) + 1);
  backward(dy.view, in.x.view, opt(in.w), opt(in.rstd), dx.view, dwv, p, ws.data(), ws.size() - 1);
  std::vector<unsigned char> out = s.in_place ? dy.bytes : dx.bytes;
  if (dw) out.insert(out.end(), dw->bytes.begin(), dw->bytes.end());
  return out;
}

bool same_backward_bits(Isa isa, const BackwardSpec& s, std::uint64_t seed) {
  const BackwardInputs in = backward_inputs(s, seed);
  const std::vector<unsigned char> want = backward_bytes(Isa::scalar, false, s, in);
  for (bool stream : {false, true}) {
    const std::string diff = first_difference(want, backward_bytes(isa, stream, s, in));
    if (!diff.empty()) {
      ADD_FAILURE() << cpu::isa_name(isa) << (stream ? " (streamed)" : "")
                    << " differs from the portable path: " << s.describe() << ": " << diff;
      return false;
    }
  }
  return true;
}

// The backward's dtype combinations: x; the weight (x's or f32, or none); dw (the weight's
// or f32, or none).
std::vector<BackwardSpec> backward_combos() {
  std::vector<BackwardSpec> out;
  for (DType x : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
    std::vector<std::optional<DType>> weights = {x, std::nullopt};
    if (x == DType::f16 || x == DType::bf16) weights.push_back(DType::f32);
    for (const std::optional<DType>& w : weights) {
      BackwardSpec s;
      s.x = x;
      s.w = w;
      s.dw = std::nullopt;
      out.push_back(s);
      if (!w) continue;
      s.dw = w;
      out.push_back(s);
      if (*w != DType::f32 && *w != DType::f64) {
        s.dw = DType::f32;
        out.push_back(s);
      }
    }
  }
  return out;
}

TEST_P(CpuPaths, BackwardCombosShapes) {
  int failures = 0;
  for (const BackwardSpec& combo : backward_combos())
    for (std::int64_t cols : kOddCols)
      for (int variant = 0; variant < 2; ++variant) {
        BackwardSpec s = combo;
        s.cols = cols;
        s.rows = cols > 1000 ? 3 : 9;
        s.saved_rstd = variant == 1;
        s.offset = s.w && variant == 1 ? 1.0 : 0.0;
        if (!same_backward_bits(isa(), s, seed_of({cols, variant, int(s.x), 31})) && ++failures > 8) return;
      }
}

TEST_P(CpuPaths, BackwardLayoutsAndValues) {
  int failures = 0;
  for (const BackwardSpec& combo : backward_combos())
    for (std::int64_t cols : {1, 17, 64, 257, 1031})
      for (int variant = 0; variant < 5; ++variant) {
        BackwardSpec s = combo;
        s.cols = cols;
        s.rows = 5;
        switch (variant) {
          case 0:  // misaligned
            s.lead = 3;
            break;
          case 1:  // strided, every other row misaligned
            s.row_stride = cols + 7;
            s.lead = 1;
            break;
          case 2:  // batched with a gap
            s.batch = 3;
            s.rows = 2;
            s.row_stride = cols + 1;
            s.batch_stride = 2 * (cols + 1) + 19;
            break;
          case 3:  // in place
            s.in_place = true;
            s.row_stride = cols + 2;
            s.offset = s.w ? 1.0 : 0.0;
            break;
          case 4:  // zeros, subnormals, infinities, NaNs
            s.specials = true;
            s.saved_rstd = cols % 2 == 1;
            break;
        }
        if (!same_backward_bits(isa(), s, seed_of({cols, variant, int(s.x), 37})) && ++failures > 8) return;
      }
}

// Rows enough to fill the 64 dw chunks several times over, and chunks of unequal size.
TEST_P(CpuPaths, BackwardManyRows) {
  for (std::int64_t rows : {63, 64, 65, 200, 777}) {
    BackwardSpec s;
    s.x = DType::bf16;
    s.w = DType::bf16;
    s.dw = DType::f32;
    s.rows = rows;
    s.cols = 96;
    if (!same_backward_bits(isa(), s, seed_of({rows, 41}))) return;
  }
}

// The quantised store's loops (quant_loops.inl, called by cpu/steps.h's QuantizeRow with a
// row's fp32 values): each instruction set's group maxima and fp8 / int8 codes, by the exact
// quotient and by the reciprocal, equal the portable loops' byte for byte, over awkward
// lengths and misaligned starts, on values with zeros of both signs, subnormals, ties of
// both formats' rounding, values past their saturation, infinities and NaNs. The portable
// loops themselves are checked against the scalar rules (std::fmax, float_to_f8e4m3_bits,
// float_to_i8 of the quotient), which test_dtype.cpp checks against references.
TEST_P(CpuPaths, QuantLoopsGiveThePortableBits) {
  const cpu::QuantLoops portable = cpu::quant_loops_scalar();
  const cpu::QuantLoops loops = isa() == Isa::avx2 ? cpu::quant_loops_avx2() : cpu::quant_loops_avx512();
  ASSERT_NE(loops.amax_bits, nullptr);
  const float specials[] = {0.0f,
                            -0.0f,
                            1e-40f,
                            -3e-39f,
                            std::ldexp(1.0f, -10),
                            0.5f,
                            2.5f,
                            -126.5f,
                            127.5f,
                            432.0f,
                            -464.0f,
                            1e9f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            -std::numeric_limits<float>::quiet_NaN()};
  std::mt19937 gen(static_cast<std::uint32_t>(seed_of({int(isa()), 41})));
  std::normal_distribution<float> normal(0.0f, 60.0f);
  for (std::int64_t n : {1, 2, 7, 15, 16, 17, 31, 33, 64, 127, 128, 257, 1031, 4099})
    for (int lead : {0, 1, 3}) {
      std::vector<float> buffer(static_cast<std::size_t>(n + lead));
      for (float& v : buffer) v = gen() % 5 == 0 ? specials[gen() % std::size(specials)] : normal(gen);
      if (n > 20) buffer[lead + n / 2] = std::numeric_limits<float>::quiet_NaN();  // never the max
      const float* y = buffer.data() + lead;
      float amax = 0.0f;
      for (std::int64_t j = 0; j < n; ++j) amax = std::fmax(amax, std::fabs(y[j]));
      ASSERT_EQ(portable.amax_bits(y, n), detail::float_to_bits(amax)) << "n " << n;
      ASSERT_EQ(loops.amax_bits(y, n), portable.amax_bits(y, n)) << "n " << n << " lead " << lead;
      for (float s : {1.0f / 448.0f, 1.0f / 3.0f, 1.0f, 7.5f, 1e-30f})
        for (bool multiply : {false, true}) {
          const float r = 1.0f / s;
          std::vector<std::uint8_t> f8(static_cast<std::size_t>(n + lead)), f8_portable(f8.size());
          std::vector<std::int8_t> i8(f8.size()), i8_portable(f8.size());
          loops.to_f8(y, n, s, r, multiply, f8.data() + lead);
          portable.to_f8(y, n, s, r, multiply, f8_portable.data() + lead);
          loops.to_i8(y, n, s, r, multiply, i8.data() + lead);
          portable.to_i8(y, n, s, r, multiply, i8_portable.data() + lead);
          for (std::int64_t j = 0; j < n; ++j) {
            const float t = multiply ? y[j] * r : y[j] / s;
            ASSERT_EQ(f8_portable[lead + j], float_to_f8e4m3_bits(t)) << y[j] << " / " << s;
            ASSERT_EQ(i8_portable[lead + j], float_to_i8(t)) << y[j] << " / " << s;
          }
          ASSERT_EQ(f8, f8_portable) << "n " << n << " lead " << lead << " s " << s << " multiply " << multiply;
          ASSERT_EQ(i8, i8_portable) << "n " << n << " lead " << lead << " s " << s << " multiply " << multiply;
        }
    }
}

INSTANTIATE_TEST_SUITE_P(, CpuPaths, ::testing::Values(Isa::avx2, Isa::avx512),
                         [](const ::testing::TestParamInfo<Isa>& info) { return cpu::isa_name(info.param); });

// ---------------------------------------------------------------------------------------
// Invariance of the path this CPU runs by default
// ---------------------------------------------------------------------------------------

// A row's bits are a function of the row alone: the same whether it is normalised in a
// batch of many rows, alone, at another alignment, strided, or on another thread count.
TEST(CpuInvariance, RowBitsIndependentOfLayoutBatchAndThreads) {
  for (const Combo& combo : allowed_combos(Backend::cpu))
    for (std::int64_t cols : {5, 64, 1031, 4096}) {
      for (bool stream : {false, true}) {
        ForcedPath forced(cpu::active_isa(), stream);
        const std::int64_t rows = 300;
        HostTensor x = make_tensor(combo.x, 1, rows, cols);
        reference::fill_normal(x.view, seed_of({cols, int(combo.x), 43}));
        std::optional<HostTensor> w;
        if (combo.w) {
          w = make_vector(*combo.w, cols);
          reference::fill_normal(w->view, seed_of({cols, 47}), 1.0, 0.1);
        }
        const std::optional<TensorView> wv = w ? std::optional<TensorView>(w->view) : std::nullopt;
        HostTensor batch_y = make_tensor(combo.y, 1, rows, cols);
        forward(x.view, wv, batch_y.view, Params{});
        const std::size_t xs = dtype_size(combo.x), ys = dtype_size(combo.y);

#if defined(_OPENMP)
        // Another thread count splits the rows differently.
        const int threads = omp_get_max_threads();
        omp_set_num_threads(threads == 1 ? 3 : 1);
        HostTensor other_y = make_tensor(combo.y, 1, rows, cols);
        forward(x.view, wv, other_y.view, Params{});
        omp_set_num_threads(threads);
        EXPECT_EQ(first_difference(batch_y.bytes, other_y.bytes), "")
            << combo.name() << " cols=" << cols << ": the thread count changed the bits";
#endif
        // Single rows, copied to starts of every alignment and into a strided view.
        for (std::int64_t row : {std::int64_t{0}, std::int64_t{1}, std::int64_t{150}, rows - 1}) {
          const std::int64_t lead = row % 4 + 1;
          HostTensor xr = make_tensor(combo.x, 1, 2, cols, -1, cols + 3, lead);
          std::memcpy(xr.view.data, static_cast<const unsigned char*>(x.view.data) + row * cols * xs, cols * xs);
          HostTensor yr = make_tensor(combo.y, 1, 2, cols, -1, cols + 5, lead + 2);
          const TensorView x1 = TensorView::matrix(xr.view.data, combo.x, Device::cpu(), 1, cols);
          const TensorView y1 = TensorView::matrix(yr.view.data, combo.y, Device::cpu(), 1, cols);
          forward(x1, wv, y1, Params{});
          EXPECT_EQ(
              std::memcmp(y1.data, static_cast<const unsigned char*>(batch_y.view.data) + row * cols * ys, cols * ys),
              0)
              << combo.name() << " cols=" << cols << " row " << row << (stream ? " streamed" : "")
              << ": alone, at another alignment, the row's bits differ from the batch's";
        }
      }
    }
}

TEST(CpuIsa, NamesAndFallback) {
  EXPECT_STREQ(cpu::isa_name(Isa::scalar), "scalar");
  EXPECT_STREQ(cpu::isa_name(Isa::avx2), "avx2");
  EXPECT_STREQ(cpu::isa_name(Isa::avx512), "avx512");
  EXPECT_TRUE(cpu::isa_available(Isa::scalar));
  // Asking for more than the CPU has gives the best available below it.
  const Isa before = cpu::set_active_isa(Isa::avx512);
  const Isa got = cpu::active_isa();
  EXPECT_TRUE(cpu::isa_available(got));
  if (cpu::isa_available(Isa::avx512)) {
    EXPECT_EQ(got, Isa::avx512);
  } else if (cpu::isa_available(Isa::avx2)) {
    EXPECT_EQ(got, Isa::avx2);
  }
  cpu::set_active_isa(before);
  std::printf("active CPU instruction set: %s\n", cpu::isa_name(cpu::active_isa()));
}

}  // namespace
}  // namespace rmsnorm::testing
