// Host-side helpers of the CPU benchmarks (bench_cpu.cpp, bench_backward_cpu.cpp): aligned
// host memory, the cache a pass must overflow, a parallel copy, the checked rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

namespace rmsnorm::cli {

// A pass over the rotated buffer sets moves at most this much: a VM often reports its
// host's whole L3, hundreds of MB, and passes of gigabytes would make a table take minutes.
constexpr std::size_t kMaxPassBytes = std::size_t(256) << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using HostMemory = std::unique_ptr<unsigned char, FreeDeleter>;

// 256-byte aligned, like a fresh device allocation. Throws Error(Code::unsupported).
HostMemory allocate(std::size_t bytes);

// The cache a pass must overflow: the last level the C library reports, else a typical
// server L3 share.
std::size_t last_level_cache();
std::size_t physical_memory();

// A memcpy split across threads, as a parallel copy_ would be.
void parallel_copy(void* dst, const void* src, std::size_t bytes);

// The checked rows (rows_to_check) of a contiguous M x N matrix, gathered into one
// contiguous host array, and how many there are.
std::vector<unsigned char> gather_rows(const unsigned char* m, std::int64_t rows, std::size_t row_bytes);
std::int64_t checked_row_count(std::int64_t rows);

}  // namespace rmsnorm::cli
