// Block operations for AVX-512 (F, BW, VL) and F16C: a block of 16 floats is one zmm
// register; the partial blocks at the ends of a row use masked loads and stores. Included by
// kernels_avx512.cpp inside its target region only.
//
// Conversions round every number as rmsnorm/dtype.h does: f16 -> f32 and f32 -> f16 by the
// F16C instructions (exact, and round to nearest even, subnormals included), bf16 by integer
// operations (vcvtneps2bf16 would flush subnormal inputs to zero, which dtype.h does not).
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "cpu/numeric.h"

namespace rmsnorm::detail::cpu::avx512 {

struct Ops {
  using Block = __m512;

  static Block zero() { return _mm512_setzero_ps(); }
  static Block splat(float v) { return _mm512_set1_ps(v); }
  static Block add(Block a, Block b) { return _mm512_add_ps(a, b); }
  static Block sub(Block a, Block b) { return _mm512_sub_ps(a, b); }
  static Block mul(Block a, Block b) { return _mm512_mul_ps(a, b); }
  // Lanes from `count` on are zero.
  static Block first(Block v, int count) { return _mm512_maskz_mov_ps(mask(count), v); }
  static void lanes(float* out, Block v) { _mm512_storeu_ps(out, v); }
  static void fence() { _mm_sfence(); }
  // numeric.h's canonical_nan.
  static Block canonical(Block v) {
    return _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q),
                              _mm512_castsi512_ps(_mm512_set1_epi32(0x7fc00000)));
  }

  // f32 -> 16 bf16 bit patterns, each in the low half of a 32-bit lane: dtype.h's round to
  // nearest even by integer addition. For numbers and the canonical NaN (which gives dtype.h's
  // 0x7fc0) only: stores get canonical values, round_as makes them so.
  static __m512i bf16_bits(Block v) { return _mm512_srli_epi32(bf16_round_up(v), 16); }
  // f32 -> 16 f16 bit patterns, as dtype.h rounds every number (a NaN stays a NaN, its
  // payload kept where dtype.h's has none: results are canonical NaNs before they get here).
  static __m256i f16_bits(Block v) { return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static Block from_f16(__m256i h) { return _mm512_cvtph_ps(h); }
  static Block from_bf16(__m256i b) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)); }

  // Full blocks.
  static Block load(const float* p) { return _mm512_loadu_ps(p); }
  static Block load(const F16* p) { return from_f16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static Block load(const BF16* p) { return from_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store(float* p, Block v) { _mm512_storeu_ps(p, v); }
  static void store(F16* p, Block v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f16_bits(v)); }
  static void store(BF16* p, Block v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }
  // Non-temporal stores; p is aligned to the block's bytes (16 elements).
  static void stream(float* p, Block v) { _mm512_stream_ps(p, v); }
  static void stream(F16* p, Block v) { _mm256_stream_si256(reinterpret_cast<__m256i*>(p), f16_bits(v)); }
  static void stream(BF16* p, Block v) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }

  // Partial blocks: `count` < 16 elements; the lanes beyond read as zero. Masked accesses
  // touch no byte outside the elements (no fault past the end of a buffer).
  static Block load_part(const float* p, int count) { return _mm512_maskz_loadu_ps(mask(count), p); }
  static Block load_part(const F16* p, int count) { return from_f16(_mm256_maskz_loadu_epi16(mask(count), p)); }
  static Block load_part(const BF16* p, int count) { return from_bf16(_mm256_maskz_loadu_epi16(mask(count), p)); }
  static void store_part(float* p, Block v, int count) { _mm512_mask_storeu_ps(p, mask(count), v); }
  static void store_part(F16* p, Block v, int count) { _mm256_mask_storeu_epi16(p, mask(count), f16_bits(v)); }
  static void store_part(BF16* p, Block v, int count) {
    _mm256_mask_storeu_epi16(p, mask(count), _mm512_cvtepi32_epi16(bf16_bits(v)));
  }

  // to_acc(from_acc<T>(v)): the value rounded to T's precision (Cast::llama's steps).
  template <class T>
  static Block round_as(Block v) {
    if constexpr (std::is_same_v<T, F16>) return from_f16(f16_bits(v));
    if constexpr (std::is_same_v<T, BF16>)
      return _mm512_castsi512_ps(_mm512_and_si512(bf16_round_up(canonical(v)), _mm512_set1_epi32(int(0xffff0000u))));
    if constexpr (std::is_same_v<T, float>) return v;
  }

 private:
  static __mmask16 mask(int count) { return static_cast<__mmask16>((1u << count) - 1u); }
  // v's bits plus half a bf16 unit, less one when the kept part is even: the high 16 bits
  // are then v rounded to nearest even.
  static __m512i bf16_round_up(Block v) {
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), lsb);
  }
};

}  // namespace rmsnorm::detail::cpu::avx512
