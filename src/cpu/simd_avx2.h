// Block operations for AVX2 and F16C: a block of 16 floats is two ymm registers (lanes 0-7
// and 8-15 of cpu::lane_sum); the partial blocks at the ends of a row go through a small
// buffer on the stack. Included by kernels_avx2.cpp inside its target region only.
//
// Conversions round every number as rmsnorm/dtype.h does, as in simd_avx512.h: F16C for
// f16, integer operations for bf16.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/numeric.h"

namespace rmsnorm::detail::cpu::avx2 {

struct Ops {
  struct Block {
    __m256 lo, hi;
  };

  static Block zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static Block splat(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
  static Block add(Block a, Block b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static Block sub(Block a, Block b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
  static Block mul(Block a, Block b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
  // Lanes from `count` on are zero.
  static Block first(Block v, int count) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), lane);
    const __m256i hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(count - 8), lane);
    return {_mm256_and_ps(v.lo, _mm256_castsi256_ps(lo)), _mm256_and_ps(v.hi, _mm256_castsi256_ps(hi))};
  }
  static void lanes(float* out, Block v) {
    _mm256_storeu_ps(out, v.lo);
    _mm256_storeu_ps(out + 8, v.hi);
  }
  static void fence() { _mm_sfence(); }
  // numeric.h's canonical_nan.
  static Block canonical(Block v) { return {canonical(v.lo), canonical(v.hi)}; }

  // 8 floats -> 8 bf16 bit patterns: dtype.h's rounding, for numbers and the canonical NaN
  // (see simd_avx512.h).
  static __m128i bf16_bits(__m256 v) { return pack(_mm256_srli_epi32(bf16_round_up(v), 16)); }
  // 8 floats -> 8 f16 bit patterns, as dtype.h rounds every number (see simd_avx512.h).
  static __m128i f16_bits(__m256 v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static __m256 from_f16(__m128i h) { return _mm256_cvtph_ps(h); }
  static __m256 from_bf16(__m128i b) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(b), 16)); }

  // Full blocks.
  static Block load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static Block load(const F16* p) { return {from_f16(load128(p)), from_f16(load128(p + 8))}; }
  static Block load(const BF16* p) { return {from_bf16(load128(p)), from_bf16(load128(p + 8))}; }
  static void store(float* p, Block v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
  }
  static void store(F16* p, Block v) {
    store128(p, f16_bits(v.lo));
    store128(p + 8, f16_bits(v.hi));
  }
  static void store(BF16* p, Block v) {
    store128(p, bf16_bits(v.lo));
    store128(p + 8, bf16_bits(v.hi));
  }
  // Non-temporal stores; p is aligned to the block's bytes (16 elements).
  static void stream(float* p, Block v) {
    _mm256_stream_ps(p, v.lo);
    _mm256_stream_ps(p + 8, v.hi);
  }
  static void stream(F16* p, Block v) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), f16_bits(v.lo));
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 8), f16_bits(v.hi));
  }
  static void stream(BF16* p, Block v) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(p), bf16_bits(v.lo));
    _mm_stream_si128(reinterpret_cast<__m128i*>(p + 8), bf16_bits(v.hi));
  }

  // Partial blocks: `count` < 16 elements, through a zeroed buffer (AVX2 has no masked
  // 16-bit loads); the lanes beyond read as zero.
  template <class T>
  static Block load_part(const T* p, int count) {
    T buf[kLanes] = {};
    std::memcpy(buf, p, sizeof(T) * count);
    return load(buf);
  }
  template <class T>
  static void store_part(T* p, Block v, int count) {
    T buf[kLanes];
    store(buf, v);
    std::memcpy(p, buf, sizeof(T) * count);
  }

  // to_acc(from_acc<T>(v)): the value rounded to T's precision (Cast::llama's steps).
  template <class T>
  static Block round_as(Block v) {
    if constexpr (std::is_same_v<T, F16>) return {from_f16(f16_bits(v.lo)), from_f16(f16_bits(v.hi))};
    if constexpr (std::is_same_v<T, BF16>) return {bf16_round(v.lo), bf16_round(v.hi)};
    if constexpr (std::is_same_v<T, float>) return v;
  }

 private:
  template <class T>
  static __m128i load128(const T* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }
  template <class T>
  static void store128(T* p, __m128i v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), v);
  }
  // Two 8 x 32-bit halves of values < 2^16 -> 8 x 16 bits.
  static __m128i pack(__m256i v) { return _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)); }
  static __m256 canonical(__m256 v) {
    return _mm256_blendv_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000)), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static __m256i bf16_round_up(__m256 v) {  // see simd_avx512.h
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), lsb);
  }
  static __m256 bf16_round(__m256 v) {
    return _mm256_castsi256_ps(_mm256_and_si256(bf16_round_up(canonical(v)), _mm256_set1_epi32(int(0xffff0000u))));
  }
};

}  // namespace rmsnorm::detail::cpu::avx2
