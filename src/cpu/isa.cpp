// The choices the CPU backend makes once per process: the instruction set (isa.h) and when
// to store around the caches (parallel.h).
#include "cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "cpu/kernels.h"
#include "cpu/parallel.h"

#if RMSNORM_CPU_X86
#include <cpuid.h>
#endif

namespace rmsnorm::detail::cpu {
namespace {

#if RMSNORM_CPU_X86
bool has_f16c() {
  // __builtin_cpu_supports knows no "f16c" in Clang; CPUID leaf 1, ECX bit 29.
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
}
#endif

// Whether the CPU and the OS support `isa` (__builtin_cpu_supports checks that the OS saves
// the AVX / AVX-512 registers too).
bool cpu_has(Isa isa) {
#if RMSNORM_CPU_X86
  __builtin_cpu_init();
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && has_f16c();
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && has_f16c();
  }
  return false;
#else
  return isa == Isa::scalar;
#endif
}

Isa best_available_up_to(Isa isa) {
  for (int i = static_cast<int>(isa); i > 0; --i)
    if (isa_available(static_cast<Isa>(i))) return static_cast<Isa>(i);
  return Isa::scalar;
}

Isa initial_isa() {
  Isa wanted = Isa::avx512;
  if (const char* env = std::getenv("RMSNORM_CPU_ISA")) {
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512})
      if (std::strcmp(env, isa_name(isa)) == 0) wanted = isa;
  }
  return best_available_up_to(wanted);
}

// -1: not chosen yet. Relaxed is enough: every thread that chooses chooses the same.
std::atomic<int> g_active{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return "scalar";
    case Isa::avx2:
      return "avx2";
    case Isa::avx512:
      return "avx512";
  }
  return "unknown";
}

bool isa_available(Isa isa) {
  // Read once: CPUID is slow in a VM (a trap to the hypervisor).
  static const bool avx2 = RMSNORM_CPU_X86 && cpu_has(Isa::avx2);
  static const bool avx512 = RMSNORM_CPU_X86 && cpu_has(Isa::avx512);
  switch (isa) {
    case Isa::scalar:
      return true;
    case Isa::avx2:
      return avx2;
    case Isa::avx512:
      return avx512;
  }
  return false;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(initial_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

Isa set_active_isa(Isa isa) {
  const Isa before = active_isa();
  g_active.store(static_cast<int>(best_available_up_to(isa)), std::memory_order_relaxed);
  return before;
}

}  // namespace rmsnorm::detail::cpu

namespace rmsnorm::detail::cpu {
namespace {
// From 4 MB of output on: an ordinary store first reads each line it writes (three bytes of
// memory traffic for two), and a large output mostly leaves the caches before it is read
// anyway. Smaller outputs are stored normally, so that the next step finds them in cache.
// Measured in docs/performance.md. RMSNORM_CPU_STREAM=0 or 1 (read once) forces plain or
// non-temporal stores, for measurements.
std::atomic<std::size_t> g_stream_threshold{[] {
  const char* env = std::getenv("RMSNORM_CPU_STREAM");
  if (env && std::strcmp(env, "0") == 0) return ~std::size_t(0);
  if (env && std::strcmp(env, "1") == 0) return std::size_t(0);
  return std::size_t(4) << 20;
}()};
}  // namespace

bool stream_output(std::size_t bytes) { return bytes >= g_stream_threshold.load(std::memory_order_relaxed); }

std::size_t set_stream_threshold(std::size_t bytes) { return g_stream_threshold.exchange(bytes); }

}  // namespace rmsnorm::detail::cpu
