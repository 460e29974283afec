// The host-side 16-bit conversions of rmsnorm/dtype.h, judged against an independent
// reference written with double arithmetic (scale to the format's ulp, std::nearbyint
// rounds to nearest even), exhaustively where the space is small.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "oracle.h"
#include "rmsnorm/dtype.h"
#include "rmsnorm/rmsnorm.h"
#include "support.h"

namespace rmsnorm {
namespace {

float float_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// A binary format with `mant` explicit mantissa bits and exponent bias `bias`:
// half (10, 15), bfloat16 (7, 127).
struct Format {
  int mant;
  int bias;
};
constexpr Format kHalf{10, 15};
constexpr Format kBf16{7, 127};

// The exact value of a non-NaN bit pattern of the format.
double value_of(Format fmt, std::uint16_t bits) {
  const int exp_bits = 15 - fmt.mant;
  const int exp_field = (bits >> fmt.mant) & ((1 << exp_bits) - 1);
  const int mant_field = bits & ((1 << fmt.mant) - 1);
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exp_field == (1 << exp_bits) - 1) return sign * std::numeric_limits<double>::infinity();
  if (exp_field == 0) return sign * std::ldexp(mant_field, 1 - fmt.bias - fmt.mant);
  return sign * std::ldexp(mant_field + (1 << fmt.mant), exp_field - fmt.bias - fmt.mant);
}

// Round-to-nearest-even of a non-NaN float to the format, by arithmetic on its value.
std::uint16_t round_reference(Format fmt, float f) {
  const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  const int emin = 1 - fmt.bias;
  const std::uint32_t inf_bits = static_cast<std::uint32_t>(2 * fmt.bias + 1) << fmt.mant;
  int e = emin;  // a lies in [2^e, 2^(e+1)), or below 2^emin (the subnormal spacing applies)
  if (a >= std::ldexp(1.0, emin)) {
    std::frexp(a, &e);
    e -= 1;
  }
  if (std::isinf(a) || e > fmt.bias) return static_cast<std::uint16_t>(sign | inf_bits);
  // a / ulp, with ulp = 2^(e - mant): exact in double, then rounded to nearest even.
  const double q = std::nearbyint(std::ldexp(a, fmt.mant - e));
  // Biased exponent (e + bias) and q's implicit bit add up to the encoding; a carry out of
  // the mantissa moves to the next binade, up to infinity, and subnormals (e = emin,
  // q < 2^mant) come out with an exponent field of 0.
  const std::uint32_t bits =
      (static_cast<std::uint32_t>(e + fmt.bias) << fmt.mant) + static_cast<std::uint32_t>(q) - (1u << fmt.mant);
  return static_cast<std::uint16_t>(sign | bits);
}

bool half_is_nan(std::uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

// The reference itself, on values whose encodings are known by heart: if this fails, the
// rest of the file proves nothing.
TEST(DTypeReference, KnownEncodings) {
  EXPECT_EQ(round_reference(kHalf, 1.0f), 0x3c00);
  EXPECT_EQ(round_reference(kHalf, 65504.0f), 0x7bff);
  EXPECT_EQ(round_reference(kHalf, -2.0f), 0xc000);
  EXPECT_EQ(round_reference(kHalf, std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(round_reference(kHalf, std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(round_reference(kHalf, 1e6f), 0x7c00);
  EXPECT_EQ(round_reference(kBf16, 1.0f), 0x3f80);
  EXPECT_EQ(round_reference(kBf16, -3.0f), 0xc040);
  EXPECT_EQ(round_reference(kBf16, std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(value_of(kHalf, 0x3555), 0.333251953125);
  EXPECT_EQ(value_of(kBf16, 0x3eab), 0.333984375);
}

// ---------------------------------------------------------------------------------------
// IEEE binary16
// ---------------------------------------------------------------------------------------

TEST(Half, DecodesEveryBitPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = half_bits_to_float(h);
    if (half_is_nan(h)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << "bits 0x" << b;
    } else {
      ASSERT_EQ(static_cast<double>(f), value_of(kHalf, h)) << std::hex << "bits 0x" << b;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << "bits 0x" << b;
    }
  }
}

TEST(Half, RoundTripsEveryBitPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const std::uint16_t back = float_to_half_bits(half_bits_to_float(h));
    if (half_is_nan(h)) {
      EXPECT_TRUE(half_is_nan(back)) << std::hex << "NaN 0x" << b << " became 0x" << back;
    } else {
      ASSERT_EQ(back, h) << std::hex << "bits 0x" << b;
    }
  }
}

// Every midpoint between two adjacent finite halves rounds to the even one; a float just
// above or below it rounds to the nearer one. Covers subnormals and both signs.
TEST(Half, TiesRoundToEven) {
  for (std::uint16_t h = 0; h < 0x7bff; ++h) {
    const float lo = half_bits_to_float(h), hi = half_bits_to_float(static_cast<std::uint16_t>(h + 1));
    const float mid = lo + (hi - lo) * 0.5f;  // exact: 12 significant bits
    ASSERT_EQ(static_cast<double>(mid), (value_of(kHalf, h) + value_of(kHalf, h + 1)) / 2);
    const std::uint16_t even = (h & 1) ? static_cast<std::uint16_t>(h + 1) : h;
    ASSERT_EQ(float_to_half_bits(mid), even) << "midpoint " << mid;
    ASSERT_EQ(float_to_half_bits(-mid), even | 0x8000) << "midpoint " << -mid;
    ASSERT_EQ(float_to_half_bits(std::nextafter(mid, 0.0f)), h) << "below " << mid;
    ASSERT_EQ(float_to_half_bits(std::nextafter(mid, std::numeric_limits<float>::infinity())), h + 1)
        << "above " << mid;
  }
}

TEST(Half, OverflowsToInfinity) {
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half_bits(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // the tie with 2^16 rounds to even: inf
  EXPECT_EQ(float_to_half_bits(-65520.0f), 0xfc00);
  EXPECT_EQ(float_to_half_bits(1e10f), 0x7c00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(float_to_half_bits(-std::numeric_limits<float>::infinity()), 0xfc00);
}

TEST(Half, Subnormals) {
  const float tiny = std::ldexp(1.0f, -24);  // the smallest half subnormal
  EXPECT_EQ(float_to_half_bits(tiny), 0x0001);
  EXPECT_EQ(float_to_half_bits(0.5f * tiny), 0x0000);   // tie with 0: even
  EXPECT_EQ(float_to_half_bits(-0.5f * tiny), 0x8000);  // signed zero
  EXPECT_EQ(float_to_half_bits(std::nextafter(0.5f * tiny, 1.0f)), 0x0001);
  EXPECT_EQ(float_to_half_bits(1.5f * tiny), 0x0002);     // tie between 1 and 2
  EXPECT_EQ(float_to_half_bits(2.5f * tiny), 0x0002);     // tie between 2 and 3
  EXPECT_EQ(float_to_half_bits(1023.0f * tiny), 0x03ff);  // largest subnormal
  EXPECT_EQ(float_to_half_bits(1023.5f * tiny), 0x0400);  // tie up into the normals
  EXPECT_EQ(float_to_half_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(float_to_half_bits(0.0f), 0x0000);
  EXPECT_EQ(float_to_half_bits(-0.0f), 0x8000);
  EXPECT_EQ(half_bits_to_float(0x0001), tiny);
  EXPECT_EQ(half_bits_to_float(0x83ff), -1023.0f * tiny);
}

TEST(Half, NaNStaysNaN) {
  for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7f801000u, 0x7fffffffu, 0xffc00000u, 0xff800001u, 0x7f802000u}) {
    const std::uint16_t h = float_to_half_bits(float_from_bits(u));
    EXPECT_TRUE(half_is_nan(h)) << std::hex << "float 0x" << u << " gave half 0x" << h;
  }
  for (std::uint16_t h : {0x7c01, 0x7e00, 0x7fff, 0xfc01, 0xfe00})
    EXPECT_TRUE(std::isnan(half_bits_to_float(h))) << std::hex << "half 0x" << h;
}

// Every 251st float bit pattern (about 17 million, all exponents, both signs).
TEST(Half, MatchesReferenceOnSampledFloats) {
  std::int64_t mismatches = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 251) {
    const float f = float_from_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const std::uint16_t got = float_to_half_bits(f), want = round_reference(kHalf, f);
    if (got != want && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "float 0x" << u << " (" << f << "): got 0x" << got << ", want 0x" << want;
  }
  EXPECT_EQ(mismatches, 0);
}

// ---------------------------------------------------------------------------------------
// bfloat16
// ---------------------------------------------------------------------------------------

TEST(Bf16, DecodesEveryBitPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const float f = bf16_bits_to_float(h);
    if (bf16_is_nan(h)) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << "bits 0x" << b;
    } else {
      ASSERT_EQ(static_cast<double>(f), value_of(kBf16, h)) << std::hex << "bits 0x" << b;
      ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << "bits 0x" << b;
    }
  }
}

TEST(Bf16, RoundTripsEveryBitPattern) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = static_cast<std::uint16_t>(b);
    const std::uint16_t back = float_to_bf16_bits(bf16_bits_to_float(h));
    if (bf16_is_nan(h)) {
      EXPECT_TRUE(bf16_is_nan(back)) << std::hex << "NaN 0x" << b << " became 0x" << back;
    } else {
      ASSERT_EQ(back, h) << std::hex << "bits 0x" << b;
    }
  }
}

TEST(Bf16, TiesRoundToEven) {
  for (std::uint16_t h = 0; h < 0x7f7f; ++h) {
    const float lo = bf16_bits_to_float(h), hi = bf16_bits_to_float(static_cast<std::uint16_t>(h + 1));
    const float mid = lo + (hi - lo) * 0.5f;  // exact: 9 significant bits (or a float subnormal)
    ASSERT_EQ(static_cast<double>(mid), (value_of(kBf16, h) + value_of(kBf16, h + 1)) / 2);
    const std::uint16_t even = (h & 1) ? static_cast<std::uint16_t>(h + 1) : h;
    ASSERT_EQ(float_to_bf16_bits(mid), even) << "midpoint " << mid;
    ASSERT_EQ(float_to_bf16_bits(-mid), even | 0x8000) << "midpoint " << -mid;
    ASSERT_EQ(float_to_bf16_bits(std::nextafter(mid, 0.0f)), h) << "below " << mid;
    ASSERT_EQ(float_to_bf16_bits(std::nextafter(mid, std::numeric_limits<float>::infinity())), h + 1)
        << "above " << mid;
  }
}

TEST(Bf16, OverflowsToInfinity) {
  const float max_bf16 = bf16_bits_to_float(0x7f7f);
  EXPECT_EQ(float_to_bf16_bits(max_bf16), 0x7f7f);
  // Halfway between the largest bf16 and 2^128 is a tie: even, i.e. infinity.
  const float tie = static_cast<float>(std::ldexp(255.5, 120));
  EXPECT_EQ(float_to_bf16_bits(std::nextafter(tie, 0.0f)), 0x7f7f);
  EXPECT_EQ(float_to_bf16_bits(tie), 0x7f80);
  EXPECT_EQ(float_to_bf16_bits(-tie), 0xff80);
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(float_to_bf16_bits(-std::numeric_limits<float>::infinity()), 0xff80);
}

TEST(Bf16, Subnormals) {
  const float tiny = std::ldexp(1.0f, -133);  // the smallest bf16 subnormal
  EXPECT_EQ(float_to_bf16_bits(tiny), 0x0001);
  EXPECT_EQ(float_to_bf16_bits(0.5f * tiny), 0x0000);
  EXPECT_EQ(float_to_bf16_bits(-0.5f * tiny), 0x8000);
  EXPECT_EQ(float_to_bf16_bits(1.5f * tiny), 0x0002);
  EXPECT_EQ(float_to_bf16_bits(127.5f * tiny), 0x0080);  // tie up into the normals
  EXPECT_EQ(float_to_bf16_bits(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(bf16_bits_to_float(0x0001), tiny);
  EXPECT_EQ(bf16_bits_to_float(0x807f), -127.0f * tiny);
}

TEST(Bf16, NaNStaysNaN) {
  for (std::uint32_t u : {0x7fc00000u, 0x7f800001u, 0x7f80ffffu, 0x7fffffffu, 0xffc00000u, 0xff800001u, 0x7fff8000u}) {
    const std::uint16_t b = float_to_bf16_bits(float_from_bits(u));
    EXPECT_TRUE(bf16_is_nan(b)) << std::hex << "float 0x" << u << " gave bf16 0x" << b;
  }
}

TEST(Bf16, MatchesReferenceOnSampledFloats) {
  std::int64_t mismatches = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 251) {
    const float f = float_from_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    const std::uint16_t got = float_to_bf16_bits(f), want = round_reference(kBf16, f);
    if (got != want && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "float 0x" << u << " (" << f << "): got 0x" << got << ", want 0x" << want;
  }
  EXPECT_EQ(mismatches, 0);
}

// ---------------------------------------------------------------------------------------
// fp8 e4m3 ("fn") and int8, the quantised outputs' dtypes
// ---------------------------------------------------------------------------------------

// The exact value of an e4m3 code from its fields (NaN for S.1111.111).
double f8_value(std::uint8_t b) {
  const double sign = (b & 0x80) ? -1.0 : 1.0;
  const int e = (b >> 3) & 0xf, m = b & 7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(m, -9);
  return sign * std::ldexp(8 + m, e - 7 - 3);
}

// The reference conversion: saturate to +-448, then the nearest of the 254 finite codes by
// exhaustive search, ties to the code with an even mantissa; the sign (of zero too) kept.
std::uint8_t f8_reference(float f) {
  if (std::isnan(f)) return std::signbit(f) ? 0xff : 0x7f;
  const double a = std::min(std::fabs(static_cast<double>(f)), 448.0);
  std::uint8_t best = 0;
  for (std::uint8_t c = 1; c <= 0x7e; ++c) {
    const double d = std::fabs(f8_value(c) - a), db = std::fabs(f8_value(best) - a);
    if (d < db || (d == db && (c & 1) == 0)) best = c;
  }
  return static_cast<std::uint8_t>(best | (std::signbit(f) ? 0x80 : 0));
}

TEST(F8e4m3, DecodesAllCodes) {
  for (int b = 0; b < 256; ++b) {
    const auto c = static_cast<std::uint8_t>(b);
    const float f = f8e4m3_bits_to_float(c);
    const double want = f8_value(c);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(f)) << "code 0x" << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(f), want) << "code 0x" << std::hex << b;
      ASSERT_EQ(std::signbit(f), (b & 0x80) != 0) << "code 0x" << std::hex << b;
    }
  }
  EXPECT_EQ(f8e4m3_bits_to_float(0x7e), 448.0f);
  EXPECT_EQ(f8e4m3_bits_to_float(0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(f8e4m3_bits_to_float(0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(f8e4m3_bits_to_float(0x38), 1.0f);
}

TEST(F8e4m3, RoundTripsAllCodes) {
  for (int b = 0; b < 256; ++b) {
    const auto c = static_cast<std::uint8_t>(b);
    if ((b & 0x7f) == 0x7f) continue;  // NaN
    EXPECT_EQ(float_to_f8e4m3_bits(f8e4m3_bits_to_float(c)), c) << "code 0x" << std::hex << b;
  }
}

// Around every boundary: the midpoint between two adjacent codes goes to the even one, a
// float just below or above it to the nearer one; both signs, subnormals included.
TEST(F8e4m3, TiesRoundToEven) {
  for (std::uint8_t c = 0; c < 0x7e; ++c) {
    const double lo = f8_value(c), hi = f8_value(static_cast<std::uint8_t>(c + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact: a few significant bits
    ASSERT_EQ(static_cast<double>(mid), (lo + hi) / 2);
    const std::uint8_t even = (c & 1) ? static_cast<std::uint8_t>(c + 1) : c;
    ASSERT_EQ(float_to_f8e4m3_bits(mid), even) << "midpoint " << mid;
    ASSERT_EQ(float_to_f8e4m3_bits(-mid), even | 0x80) << "midpoint " << -mid;
    ASSERT_EQ(float_to_f8e4m3_bits(std::nextafter(mid, 0.0f)), c) << "below " << mid;
    ASSERT_EQ(float_to_f8e4m3_bits(std::nextafter(mid, 1000.0f)), c + 1) << "above " << mid;
  }
}

// Saturation instead of NaN beyond 448 (PyTorch's cast after the clamp every quantiser
// applies: `.clamp(-448, 448).to(torch.float8_e4m3fn)`); NaN stays NaN with its sign.
TEST(F8e4m3, SaturatesAndKeepsNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {448.0f, 449.0f, 464.0f, 465.0f, 479.0f, 480.0f, 1e4f, 3.4e38f, inf}) {
    EXPECT_EQ(float_to_f8e4m3_bits(v), 0x7e) << v;
    EXPECT_EQ(float_to_f8e4m3_bits(-v), 0xfe) << -v;
  }
  EXPECT_EQ(float_to_f8e4m3_bits(std::nextafter(448.0f, 0.0f)), 0x7e);
  EXPECT_EQ(float_to_f8e4m3_bits(432.0f), 0x7e);  // the tie between 416 and 448: even (448)
  EXPECT_EQ(float_to_f8e4m3_bits(std::nextafter(432.0f, 0.0f)), 0x7d);
  EXPECT_EQ(float_to_f8e4m3_bits(std::numeric_limits<float>::quiet_NaN()), 0x7f);
  EXPECT_EQ(float_to_f8e4m3_bits(-std::numeric_limits<float>::quiet_NaN()), 0xff);
  EXPECT_EQ(float_to_f8e4m3_bits(float_from_bits(0x7f800001u)), 0x7f);
  EXPECT_EQ(float_to_f8e4m3_bits(0.0f), 0x00);
  EXPECT_EQ(float_to_f8e4m3_bits(-0.0f), 0x80);
  EXPECT_EQ(float_to_f8e4m3_bits(std::ldexp(1.0f, -10)), 0x00);  // tie with 0: even
  EXPECT_EQ(float_to_f8e4m3_bits(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(float_to_f8e4m3_bits(-std::ldexp(1.0f, -12)), 0x80);  // signed zero
  EXPECT_EQ(float_to_f8e4m3_bits(std::numeric_limits<float>::denorm_min()), 0x00);
  EXPECT_EQ(float_to_f8e4m3_bits(7.5f * std::ldexp(1.0f, -9)), 0x08);  // up into the normals
}

// Every 4099th float bit pattern (about a million, every exponent, both signs) against the
// exhaustive reference.
TEST(F8e4m3, MatchesReferenceOnSampledFloats) {
  std::int64_t mismatches = 0;
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 4099) {
    const float f = float_from_bits(static_cast<std::uint32_t>(u));
    const std::uint8_t got = float_to_f8e4m3_bits(f), want = f8_reference(f);
    if (got != want && ++mismatches <= 5)
      ADD_FAILURE() << std::hex << "float 0x" << u << " (" << f << "): got 0x" << int(got) << ", want 0x" << int(want);
  }
  EXPECT_EQ(mismatches, 0);
}

// Dense around the normal range: every float with 12 significant bits between 2^-12 and 512.
TEST(F8e4m3, MatchesReferenceNearEveryCode) {
  for (int e = -12; e < 9; ++e)
    for (int m = 0; m < 4096; ++m) {
      const float f = std::ldexp(static_cast<float>(4096 + m), e - 12);
      ASSERT_EQ(float_to_f8e4m3_bits(f), f8_reference(f)) << f;
      ASSERT_EQ(float_to_f8e4m3_bits(-f), f8_reference(-f)) << -f;
    }
}

TEST(Int8, RoundsHalfToEvenAndSaturates) {
  EXPECT_EQ(float_to_i8(0.5f), 0);
  EXPECT_EQ(float_to_i8(1.5f), 2);
  EXPECT_EQ(float_to_i8(2.5f), 2);
  EXPECT_EQ(float_to_i8(-0.5f), 0);
  EXPECT_EQ(float_to_i8(-1.5f), -2);
  EXPECT_EQ(float_to_i8(-2.5f), -2);
  EXPECT_EQ(float_to_i8(std::nextafter(2.5f, 3.0f)), 3);
  EXPECT_EQ(float_to_i8(std::nextafter(2.5f, 0.0f)), 2);
  EXPECT_EQ(float_to_i8(126.5f), 126);
  EXPECT_EQ(float_to_i8(127.4f), 127);
  EXPECT_EQ(float_to_i8(127.5f), 127);
  EXPECT_EQ(float_to_i8(1e9f), 127);
  EXPECT_EQ(float_to_i8(-127.5f), -127);  // symmetric: never -128
  EXPECT_EQ(float_to_i8(-128.0f), -127);
  EXPECT_EQ(float_to_i8(-std::numeric_limits<float>::infinity()), -127);
  EXPECT_EQ(float_to_i8(std::numeric_limits<float>::infinity()), 127);
  EXPECT_EQ(float_to_i8(std::numeric_limits<float>::quiet_NaN()), 0);
  EXPECT_EQ(float_to_i8(1e-30f), 0);
}

TEST(Int8, MatchesNearbyintOnADenseRange) {
  for (float f = -130.0f; f <= 130.0f; f += 1.0f / 64) {
    const double want = std::nearbyint(std::min(127.0, std::max(-127.0, static_cast<double>(f))));
    ASSERT_EQ(float_to_i8(f), static_cast<int>(want)) << f;
  }
}

TEST(QuantDTypes, LoadStoreAndNames) {
  unsigned char buf[4];
  std::memset(buf, 0xFF, sizeof buf);
  store_from_double(buf, DType::f8e4m3, 1, -1.5);
  EXPECT_EQ(buf[1], 0xbc);
  EXPECT_EQ(load_as_double(buf, DType::f8e4m3, 1), -1.5);
  store_from_double(buf, DType::f8e4m3, 2, 1e9);
  EXPECT_EQ(load_as_double(buf, DType::f8e4m3, 2), 448.0);
  // rounded once from the double: just above a tie that a rounding through float would make
  store_from_double(buf, DType::f8e4m3, 0, 1.0 + std::ldexp(1.0, -4) + std::ldexp(1.0, -40));
  EXPECT_EQ(load_as_double(buf, DType::f8e4m3, 0), 1.125);
  store_from_double(buf, DType::i8, 3, -2.5);
  EXPECT_EQ(load_as_double(buf, DType::i8, 3), -2.0);
  store_from_double(buf, DType::i8, 3, -300.0);
  EXPECT_EQ(load_as_double(buf, DType::i8, 3), -127.0);
  EXPECT_EQ(dtype_size(DType::f8e4m3), 1u);
  EXPECT_EQ(dtype_size(DType::i8), 1u);
  EXPECT_STREQ(dtype_name(DType::f8e4m3), "f8e4m3");
  EXPECT_STREQ(dtype_name(DType::i8), "i8");
  EXPECT_EQ(parse_dtype("f8e4m3"), DType::f8e4m3);
  EXPECT_EQ(parse_dtype("float8_e4m3fn"), DType::f8e4m3);
  EXPECT_EQ(parse_dtype("int8"), DType::i8);
  EXPECT_EQ(parse_dtype("i8"), DType::i8);
  EXPECT_EQ(quant_max(DType::f8e4m3), 448.0f);
  EXPECT_EQ(quant_max(DType::i8), 127.0f);
  EXPECT_EQ(quant_max(DType::bf16), 0.0f);
  EXPECT_EQ(quant_min_scale(DType::f8e4m3), 1.0f / 229376.0f);
  EXPECT_EQ(quant_min_scale(DType::i8), 1.0f / 65024.0f);
  for (QuantScale k : {QuantScale::static_tensor, QuantScale::per_row, QuantScale::per_group})
    EXPECT_EQ(parse_quant_scale(quant_scale_name(k)), k);
  EXPECT_THROW(parse_quant_scale("block"), Error);
}

// The oracle's quantiser (reference::quant_code, on doubles) agrees with the library's on
// every float it is given, so compare_quantized judges by the same rules.
TEST(QuantDTypes, OracleQuantiserAgrees) {
  for (std::uint64_t u = 0; u <= 0xffffffffull; u += 65537) {
    const float f = float_from_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(reference::quant_code(DType::f8e4m3, f),
              static_cast<double>(f8e4m3_bits_to_float(float_to_f8e4m3_bits(f))))
        << f;
    ASSERT_EQ(reference::quant_code(DType::i8, f), static_cast<double>(float_to_i8(f))) << f;
  }
}

// ---------------------------------------------------------------------------------------
// Element access, names
// ---------------------------------------------------------------------------------------

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::f64), 8u);
  EXPECT_STREQ(dtype_name(DType::f32), "f32");
  EXPECT_STREQ(dtype_name(DType::f16), "f16");
  EXPECT_STREQ(dtype_name(DType::bf16), "bf16");
  EXPECT_STREQ(dtype_name(DType::f64), "f64");
}

TEST(DType, ParsesNamesAndAliases) {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f64}) EXPECT_EQ(parse_dtype(dtype_name(t)), t);
  EXPECT_EQ(parse_dtype("fp32"), DType::f32);
  EXPECT_EQ(parse_dtype("float32"), DType::f32);
  EXPECT_EQ(parse_dtype("fp16"), DType::f16);
  EXPECT_EQ(parse_dtype("float16"), DType::f16);
  EXPECT_EQ(parse_dtype("half"), DType::f16);
  EXPECT_EQ(parse_dtype("bfloat16"), DType::bf16);
  EXPECT_EQ(parse_dtype("fp64"), DType::f64);
  EXPECT_EQ(parse_dtype("float64"), DType::f64);
}

TEST(DType, ParseErrorNamesWhat) {
  for (const char* bad : {"", "f8", "F8", "int4", "bf32", "e5m2"}) {
    try {
      parse_dtype(bad, "weight_dtype");
      ADD_FAILURE() << "parse_dtype accepted \"" << bad << "\"";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Code::invalid_argument) << e.what();
      EXPECT_TRUE(testing::names_word(e.what(), "weight_dtype")) << "message does not name the argument: " << e.what();
    }
  }
}

TEST(DType, LoadStoreRoundOnce) {
  unsigned char buf[16];
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::f64}) {
    std::memset(buf, 0xFF, sizeof buf);
    store_from_double(buf, t, 1, -1.5);
    EXPECT_EQ(load_as_double(buf, t, 1), -1.5) << dtype_name(t);
    EXPECT_TRUE(std::isnan(load_as_double(buf, t, 0))) << "store touched element 0 of " << dtype_name(t);
  }
  store_from_double(buf, DType::f64, 0, 1.0 / 3.0);
  EXPECT_EQ(load_as_double(buf, DType::f64, 0), 1.0 / 3.0);
  store_from_double(buf, DType::f32, 0, 1.0 / 3.0);
  EXPECT_EQ(load_as_double(buf, DType::f32, 0), static_cast<double>(1.0f / 3.0f));
  // Just above a tie of the 16-bit format, but a tie once rounded to float first: rounding
  // once goes up, rounding through float would go to even (down).
  store_from_double(buf, DType::bf16, 0, 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30));
  EXPECT_EQ(load_as_double(buf, DType::bf16, 0), 1.0 + std::ldexp(1.0, -7));
  store_from_double(buf, DType::f16, 0, 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -30));
  EXPECT_EQ(load_as_double(buf, DType::f16, 0), 1.0 + std::ldexp(1.0, -10));
  store_from_double(buf, DType::f16, 0, 1e6);
  EXPECT_TRUE(std::isinf(load_as_double(buf, DType::f16, 0)));
  EXPECT_EQ(reference::round_to(DType::bf16, 1.0 + std::ldexp(1.0, -9)), 1.0);
}

TEST(Names, CodesAndStrategies) {
  for (Code c : {Code::ok, Code::invalid_argument, Code::unsupported, Code::cuda_error, Code::internal}) {
    ASSERT_NE(code_name(c), nullptr);
    EXPECT_GT(std::string(code_name(c)).size(), 0u);
  }
  EXPECT_STREQ(strategy_name(Strategy::automatic), "auto");
  for (Strategy s :
       {Strategy::automatic, Strategy::warp_rows, Strategy::block_row, Strategy::long_row, Strategy::cluster_row})
    EXPECT_EQ(parse_strategy(strategy_name(s)), s) << strategy_name(s);
  EXPECT_EQ(parse_strategy("warp_rows"), Strategy::warp_rows);
  EXPECT_EQ(parse_strategy("block_row"), Strategy::block_row);
  EXPECT_EQ(parse_strategy("long_row"), Strategy::long_row);
  EXPECT_EQ(parse_strategy("cluster_row"), Strategy::cluster_row);
  try {
    parse_strategy("clusters");
    ADD_FAILURE() << "parse_strategy accepted \"clusters\"";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Code::invalid_argument) << e.what();
  }
  EXPECT_GT(std::string(version()).size(), 0u);
}

}  // namespace
}  // namespace rmsnorm
