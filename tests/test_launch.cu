// The launcher (src/cuda/launch.h) on the GPU: a kernel launched with different amounts of
// dynamic shared memory, in every order. The shared-memory allowance beyond 48 KB is an
// attribute of the kernel, not of a size: a launcher that set it per size lowered it for a
// smaller launch, and the next larger one failed (cudaErrorInvalidValue, seen on the H200
// through the backward's cluster kernel). Each order gets a kernel of its own (ORDER), so
// every sequence starts from a kernel nothing has launched yet.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <string>
#include <utility>
#include <vector>

#include "cuda/launch.h"
#include "support.h"

namespace rmsnorm::detail::cuda {
namespace {

// Fills its dynamic shared memory and writes back a checksum of all of it: a launch that
// ran with less shared memory than asked would fault or miscount.
template <int ORDER>
__global__ void FillShared(unsigned* out, unsigned words) {
  extern __shared__ unsigned shared_words[];
  for (unsigned i = threadIdx.x; i < words; i += blockDim.x) shared_words[i] = i;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned sum = 0;
    for (unsigned i = 0; i < words; ++i) sum += shared_words[i];
    *out = sum;
  }
}

// Sizes around and beyond the 48 KB default, all within sm_80's 163 KB opt-in limit.
constexpr std::array<std::size_t, 4> kSizes = {32 * 1024, 64 * 1024, 100 * 1024, 160 * 1024};

std::vector<std::array<std::size_t, 4>> every_order() {
  std::vector<std::array<std::size_t, 4>> out;
  std::array<std::size_t, 4> s = kSizes;
  std::sort(s.begin(), s.end());
  do out.push_back(s);
  while (std::next_permutation(s.begin(), s.end()));
  return out;
}

template <int ORDER>
void run_order(const std::array<std::size_t, 4>& sizes, unsigned* out) {
  for (int pass = 0; pass < 2; ++pass)  // twice: the sequence again once every size was seen
    for (std::size_t bytes : sizes) {
      const unsigned words = static_cast<unsigned>(bytes / sizeof(unsigned));
      const std::string where = "order " + std::to_string(ORDER) + ", " + std::to_string(bytes) + " bytes";
      try {
        launch_kernel(FillShared<ORDER>, LaunchShape{dim3(1), dim3(256), 0, bytes}, Queue{}, "FillShared", nullptr, out,
                      words);
      } catch (const Error& e) {
        ADD_FAILURE() << where << ": " << e.what();
        continue;
      }
      unsigned got = 0;
      ASSERT_EQ(cudaMemcpy(&got, out, sizeof got, cudaMemcpyDeviceToHost), cudaSuccess) << where;
      const unsigned want = static_cast<unsigned>((static_cast<unsigned long long>(words) * (words - 1) / 2));
      EXPECT_EQ(got, want) << where;
    }
}

template <std::size_t... I>
void run_every_order(std::index_sequence<I...>, unsigned* out) {
  const auto orders = every_order();
  (run_order<static_cast<int>(I)>(orders[I], out), ...);
}

TEST(CudaLaunch, SharedMemorySizesInEveryOrder) {
  const std::string why = rmsnorm::testing::cuda_unavailable_reason();
  if (!why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  ASSERT_EQ(every_order().size(), 24u);
  unsigned* out = nullptr;
  ASSERT_EQ(cudaMalloc(&out, sizeof(unsigned)), cudaSuccess);
  run_every_order(std::make_index_sequence<24>{}, out);
  cudaFree(out);
}

}  // namespace
}  // namespace rmsnorm::detail::cuda
