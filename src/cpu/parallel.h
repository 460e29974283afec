// How the CPU backend spreads rows over threads, and when it writes around the caches.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace rmsnorm::detail::cpu {

// Calls f(begin, end) once per thread on a contiguous share of [0, count): OpenMP's static
// schedule, written out so that each thread makes one call into the row loops (an indirect
// call per row would cost more than a QK-norm row of 64 elements). Serial unless `parallel`.
// Which thread computes a row never changes its bits.
template <class F>
void parallel_rows(std::int64_t count, bool parallel, F f) {
#if defined(_OPENMP)
  if (parallel && count > 1) {
#pragma omp parallel
    {
      const std::int64_t t = omp_get_thread_num(), threads = omp_get_num_threads();
      const std::int64_t begin = count * t / threads, end = count * (t + 1) / threads;
      if (begin < end) f(begin, end);
    }
    return;
  }
#else
  (void)parallel;
#endif
  if (count > 0) f(std::int64_t{0}, count);
}

// Whether a call writing `bytes` of output stores them with non-temporal stores (the
// vector loops do, where the row's alignment allows): at or above the stream threshold.
bool stream_output(std::size_t bytes);
// Sets the threshold; returns the one before. For tests, which force both ways of storing;
// not to be called while another thread is inside a CPU call.
std::size_t set_stream_threshold(std::size_t bytes);

}  // namespace rmsnorm::detail::cpu
