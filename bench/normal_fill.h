// Random normal inputs for the benchmarks, generated the same way on the host and on the
// device: element i of a buffer is a pure function of (seed, i). A counter-based generator
// needs no state, so a GPU kernel can fill gigabytes in milliseconds, and the CPU and CUDA
// benchmarks time the same numbers.
#pragma once

#include <cmath>
#include <cstdint>

#include "rmsnorm/rmsnorm.h"

#if defined(__CUDACC__)
#define RMSNORM_BENCH_HD __host__ __device__
#else
#define RMSNORM_BENCH_HD
#endif

namespace rmsnorm::bench {

// SplitMix64's finaliser: a bijective 64-bit mix; consecutive counters give independent-
// looking outputs, which is all a benchmark input needs.
RMSNORM_BENCH_HD inline std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// mean + stddev * N(0, 1) for element i, by Box-Muller on two 24-bit uniforms.
RMSNORM_BENCH_HD inline float normal_at(std::uint64_t seed, std::uint64_t i, float mean, float stddev) {
  const std::uint64_t h = mix64(mix64(seed) ^ i);
  const float u1 = static_cast<float>((h >> 40) + 1) * 5.9604644775390625e-8f;  // (0, 1]
  const float u2 = static_cast<float>(h & 0xffffffu) * 5.9604644775390625e-8f;  // [0, 1)
  return mean + stddev * sqrtf(-2.0f * logf(u1)) * cosf(6.2831853071795865f * u2);
}

// Fills n contiguous host elements of dtype t (multi-threaded when OpenMP is available).
void fill_normal_host(void* data, DType t, std::int64_t n, std::uint64_t seed, float mean = 0.0f, float stddev = 1.0f);

// Fills n contiguous device elements of dtype t (f32, f16, bf16) on `stream`, asynchronously.
// Throws rmsnorm::Error(Code::cuda_error) if the launch fails. CUDA builds only.
void fill_normal_device(void* data, DType t, std::int64_t n, std::uint64_t seed, float mean, float stddev,
                        Stream stream);

}  // namespace rmsnorm::bench
