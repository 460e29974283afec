#include "bench_host.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "bench.h"

namespace rmsnorm::cli {

HostMemory allocate(std::size_t bytes) {
  void* p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!p) throw Error(Code::unsupported, "bench: cannot allocate " + std::to_string(bytes >> 20) + " MiB");
  return HostMemory(static_cast<unsigned char*>(p));
}

std::size_t last_level_cache() {
  for (int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long v = sysconf(name);
    if (v > 0) return static_cast<std::size_t>(v);
  }
  return 32u << 20;
}

std::size_t physical_memory() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) : (8ull << 30);
}

void parallel_copy(void* dst, const void* src, std::size_t bytes) {
  constexpr std::size_t kChunk = 1 << 20;
  const std::int64_t chunks = static_cast<std::int64_t>((bytes + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::size_t at = static_cast<std::size_t>(c) * kChunk;
    std::memcpy(static_cast<unsigned char*>(dst) + at, static_cast<const unsigned char*>(src) + at,
                std::min(kChunk, bytes - at));
  }
}

std::vector<unsigned char> gather_rows(const unsigned char* m, std::int64_t rows, std::size_t row_bytes) {
  std::vector<unsigned char> out;
  for (auto [b, e] : rows_to_check(rows))
    out.insert(out.end(), m + static_cast<std::size_t>(b) * row_bytes, m + static_cast<std::size_t>(e) * row_bytes);
  return out;
}

std::int64_t checked_row_count(std::int64_t rows) {
  std::int64_t n = 0;
  for (auto [b, e] : rows_to_check(rows)) n += e - b;
  return n;
}

}  // namespace rmsnorm::cli
