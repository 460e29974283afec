// What the forward's cluster rows lack beside QuACK's (docs/performance.md, item 1): a row
// of 65536-262144 16-bit columns split over a thread-block cluster, timed in two data paths
// and two grids, beside cudaMemcpyAsync of the same bytes, in CUDA graphs:
//   regs       each thread loads its chunks of the block's slice into registers (the
//              library's cluster rows), sums their squares, exchanges the block's partial
//              sum across the cluster, then scales and stores the chunks it holds
//   smem       the chunks go to shared memory by cp.async instead (QuACK's path), each
//              thread reading back only its own (no block barrier for the data): with few
//              registers a thread, shared memory decides how many blocks an SM holds, so
//              more of the row can be in flight at once than registers allow
//   rows       one cluster a row, no loop (QuACK's grid): blocks of later rows start on an
//              SM as soon as earlier ones leave, so their loads overlap others' exchanges
//   loop K     K x the resident clusters, each looping over rows (the library's grid, K 2)
// The partial sums cross the cluster through distributed shared memory: each block's total
// is written into every block's mailbox (one slot a rank, two sets in turn for the looping
// grid), then one cluster barrier, then each block adds the slots in rank order. The
// variants marked "lib" exchange them as the library does instead (src/cuda/cluster.cuh's
// ClusterSum: each warp's sum sent by st.async to every block, counted on its mbarrier,
// after a cluster barrier for the mbarriers' set-up, split around the first row's loads);
// those marked "pdl" are launched as the library launches (programmatic dependent launch:
// the grid waits for the previous one at its start, then lets the next one be scheduled).
// They say what the library's row sum and launch cost beside the bare kernel's. Between the
// two, to tell which part of the library's exchange costs what:
//   vec        the library's slots (a warp's sum a slot, 2 KB of mailbox for 16 ranks),
//              gathered behind a block barrier and sent a block at a time, four slots a
//              16-byte st.async (kWarps / 4 stores a rank where the library has kWarps), the
//              same mbarrier wait and the same order of the sum, so the library's bits
//   total      the bare kernel's block totals (one slot a rank) through st.async and the
//              mbarrier: one store a rank, no cluster barrier a row
//   pad2k      the bare kernel with 2 KB of static shared memory it does not use, the size
//              of the library's mailbox: three 64 KB slices an SM and that much more no
//              longer fit the 196 KB carveout, so the driver takes 228 KB and leaves 28 KB
//              of L1 where the bare kernel has 60 KB
//   carve      the bare kernel with the largest shared-memory carveout asked for (the L1 of
//              pad2k without its shared memory)
// y = bf16(x * rstd * w), fp32 math, rows of bf16 whose slices are whole 16-byte chunks;
// checked against a host reference before anything is timed; inputs rotated over two sets
// (each call moves more than 4x the L2); the copy is the faster of a graph of
// cudaMemcpyAsync and the same calls on the stream. Not part of the library or its tests:
// built and run by hand,
//   nvcc -O3 -std=c++17 -arch=sm_90 -Isrc -Iinclude -o cluster_smem_rows tools/explore/cluster_smem_rows.cu
//   ./cluster_smem_rows
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_pipeline.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "check_cuda.h"
#include "cuda/cluster.cuh"

namespace cg = cooperative_groups;

constexpr int kMaxRanks = 16;

struct Args {
  const uint4* x;
  const uint4* w;
  uint4* y;
  int rows;
  long long row_chunks;  // 16-byte chunks a row (8 bf16 each)
  float inv_cols, eps;
};

__device__ __forceinline__ float squares(uint4 c) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&c);
  float s = 0.f;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    s = fmaf(f.x, f.x, s);
    s = fmaf(f.y, f.y, s);
  }
  return s;
}

__device__ __forceinline__ uint4 scale(uint4 c, uint4 wc, float rstd) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&c);
  const __nv_bfloat162* g = reinterpret_cast<const __nv_bfloat162*>(&wc);
  uint4 out;
  __nv_bfloat162* o = reinterpret_cast<__nv_bfloat162*>(&out);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]), v = __bfloat1622float2(g[k]);
    o[k] = __floats2bfloat162_rn(f.x * rstd * v.x, f.y * rstd * v.y);
  }
  return out;
}

// THREADS threads a block, CHUNKS 16-byte chunks a thread: a block's slice is
// THREADS * CHUNKS chunks, a row one slice a rank of the cluster.
// At most 64 registers a thread, as the library's cluster rows (kernel_configs.h).
// How the row's partial sums cross the cluster (the header's variants).
enum class Xchg {
  bar,    // block totals, a cluster barrier a row (the bare kernel)
  lib,    // the library's ClusterSum
  vec,    // the library's slots, sent a block at a time in 16-byte stores
  total,  // block totals through st.async and the mbarrier
};

// The `vec` and `total` exchanges, two shapes the library's ClusterSum could take. Slots
// rank * kWarps + warp (vec) or rank (total), two mailboxes in turn, each counted on its
// mbarrier; set up as ClusterSum::arrive does (a cluster barrier's arrival after the first
// row's loads, its wait before the first store into another block).
template <int THREADS, Xchg X>
struct BlockSum {
  static constexpr int kWarps = THREADS / 32;
  static constexpr int kSlots = X == Xchg::vec ? kMaxRanks * kWarps : kMaxRanks;
  struct TempStorage {
    alignas(16) float mail[2][kSlots];
    alignas(16) float warp[2][kWarps];
    std::uint64_t landed[2];
  };
  __device__ __forceinline__ static void arrive(TempStorage& t) {
    rmsnorm::detail::cuda::init_mailboxes(t.landed);
    ::cuda::ptx::barrier_cluster_arrive(::cuda::ptx::sem_relaxed);
  }
  __device__ __forceinline__ static float sum(TempStorage& t, float s, unsigned step) {
    cg::cluster_group cluster = cg::this_cluster();
    const unsigned ranks = cluster.num_blocks(), rank = cluster.block_rank();
    const unsigned lane = threadIdx.x % 32u, warp = threadIdx.x / 32u;
    const int box = static_cast<int>(step & 1u);
    constexpr unsigned kPerRank = X == Xchg::vec ? kWarps : 1;
    if (threadIdx.x == 0)
      ::cuda::ptx::mbarrier_arrive_expect_tx(::cuda::ptx::sem_release, ::cuda::ptx::scope_cta,
                                             ::cuda::ptx::space_shared, &t.landed[box],
                                             ranks * kPerRank * static_cast<unsigned>(sizeof(float)));
#pragma unroll
    for (int d = 16; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d);
    if (lane == 0) t.warp[box][warp] = s;
    __syncthreads();  // warp[box] is written again two rows on, after the next row's barrier
    if (step == 0) ::cuda::ptx::barrier_cluster_wait();
    if constexpr (X == Xchg::vec) {
      constexpr unsigned kStores = kWarps / 4;  // 16 bytes a store
      if (threadIdx.x < ranks * kStores) {
        const unsigned to = threadIdx.x / kStores, q = threadIdx.x % kStores;
        const float4 f = reinterpret_cast<const float4*>(t.warp[box])[q];
        const float v[4] = {f.x, f.y, f.z, f.w};
        float* slot = cluster.map_shared_rank(&t.mail[box][rank * kWarps + 4 * q], to);
        ::cuda::ptx::st_async(slot, v, cluster.map_shared_rank(&t.landed[box], to));
      }
    } else {
      if (threadIdx.x < ranks) {
        float total = 0.f;
#pragma unroll
        for (int k = 0; k < kWarps; ++k) total += t.warp[box][k];
        ::cuda::ptx::st_async(cluster.map_shared_rank(&t.mail[box][rank], threadIdx.x), total,
                              cluster.map_shared_rank(&t.landed[box], threadIdx.x));
      }
    }
    while (!::cuda::ptx::mbarrier_try_wait_parity(::cuda::ptx::sem_acquire, ::cuda::ptx::scope_cluster, &t.landed[box],
                                                  (step >> 1) & 1u)) {
    }
    if constexpr (X == Xchg::vec) {  // ClusterSum::receive's order
      float v = 0.f;
      for (unsigned i = lane; i < ranks * kWarps; i += 32u) v += t.mail[box][i];
#pragma unroll
      for (int d = 16; d > 0; d /= 2) v += __shfl_xor_sync(0xffffffffu, v, d);
      return v;
    } else {
      float v = 0.f;
      for (unsigned r = 0; r < ranks; ++r) v += t.mail[box][r];
      return v;
    }
  }
};

// X: how the row's sums cross the cluster; PDL: the library's wait for the previous grid at the start
// (a no-op unless launched with the programmatic attribute); PAD: bytes of static shared
// memory the kernel holds and does not use.
template <int THREADS, int CHUNKS, bool SMEM, Xchg X = Xchg::bar, bool PDL = false, int PAD = 0>
__global__ void __launch_bounds__(THREADS, 65536 / (THREADS * 64)) ClusterRows(const Args a) {
  extern __shared__ uint4 slice[];  // SMEM: THREADS * CHUNKS chunks
  __shared__ float mailbox[2][kMaxRanks];
  __shared__ float warp_sums[THREADS / 32];
  constexpr bool LIB = X == Xchg::lib, kPushed = X == Xchg::vec || X == Xchg::total;
  using Sum = rmsnorm::detail::cuda::ClusterSum<THREADS, 1>;
  __shared__ typename Sum::TempStorage temp;
  using Pushed = BlockSum<THREADS, X == Xchg::vec ? Xchg::vec : Xchg::total>;
  __shared__ typename Pushed::TempStorage pushed;
  __shared__ volatile unsigned char pad[PAD > 0 ? PAD : 1];
  if (PAD > 0 && threadIdx.x == 0) pad[blockIdx.x % (PAD > 0 ? PAD : 1)] = 0;  // kept, unused
  if constexpr (PDL) {
    cudaGridDependencySynchronize();
    cudaTriggerProgrammaticLaunchCompletion();
  }
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned rank = cluster.block_rank(), ranks = cluster.num_blocks();
  const long long clusters = gridDim.x / ranks;
  const long long cluster_id = blockIdx.x / ranks;
  const long long first = rank * (long long)THREADS * CHUNKS + threadIdx.x;  // chunk i: first + i * THREADS
  int step = 0;
  bool arrived = false;
  for (long long row = cluster_id; row < a.rows; row += clusters, ++step) {
    const uint4* x = a.x + row * a.row_chunks;
    uint4 held[SMEM ? 1 : CHUNKS];
    float s = 0.f;
    if constexpr (SMEM) {
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i)
        __pipeline_memcpy_async(&slice[threadIdx.x + i * THREADS], &x[first + i * THREADS], sizeof(uint4));
      __pipeline_commit();
      if (!arrived) {  // as the library: after the first row's copies
        if constexpr (LIB) Sum::arrive(temp);
        if constexpr (kPushed) Pushed::arrive(pushed);
      }
      arrived = true;
      __pipeline_wait_prior(0);
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i) s += squares(slice[threadIdx.x + i * THREADS]);
    } else {
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i) held[i] = x[first + i * THREADS];
      if (!arrived) {
        if constexpr (LIB) Sum::arrive(temp);
        if constexpr (kPushed) Pushed::arrive(pushed);
      }
      arrived = true;
#pragma unroll
      for (int i = 0; i < CHUNKS; ++i) s += squares(held[i]);
    }
    float total = 0.f;
    if constexpr (LIB) {
      float v[1] = {s};
      Sum::template send<true>(temp, v, step);
      Sum::receive(temp, v, step);
      total = v[0];
    } else if constexpr (kPushed) {
      total = Pushed::sum(pushed, s, step);
    } else {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(~0u, s, o);
      if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = s;
      __syncthreads();
      if (threadIdx.x < ranks) {
        float t = 0.f;
#pragma unroll
        for (int k = 0; k < THREADS / 32; ++k) t += warp_sums[k];
        // This block's total into slot `rank` of block threadIdx.x's mailbox.
        float* box = cluster.map_shared_rank(&mailbox[step & 1][0], threadIdx.x);
        box[rank] = t;
      }
      cluster.sync();  // release the mailbox writes, acquire the others'; warp_sums reusable
      for (unsigned r = 0; r < ranks; ++r) total += mailbox[step & 1][r];
    }
    const float rstd = rsqrtf(total * a.inv_cols + a.eps);
    uint4* y = a.y + row * a.row_chunks;
#pragma unroll
    for (int i = 0; i < CHUNKS; ++i) {
      const long long idx = first + i * THREADS;
      const uint4 c = SMEM ? slice[threadIdx.x + i * THREADS] : held[SMEM ? 0 : i];
      y[idx] = scale(c, a.w[idx], rstd);
    }
  }
  // No block may leave while another can still write its mailbox: the last row's writes
  // all precede its cluster barrier (bar), or were counted by the block's own last wait
  // before it left (lib, vec, total), so nothing is written after it.
}

// One variant of the kernel as the main loop takes it: its name, entry point, dynamic
// shared memory, threads a block and chunks a block's slice; whether it is timed only with
// a cluster a row (rows_only) and launched with the programmatic attribute (pdl).
// carve: the shared-memory carveout asked for (cudaFuncAttributePreferredSharedMemoryCarveout,
// percent; -1 the driver's choice), set before each of the kind's launches (kinds share
// entry points).
struct Kind {
  const char* name;
  void* fn;
  size_t smem;
  int threads;
  long long slice;
  bool rows_only, pdl;
  int carve;
};
template <int THREADS, int CHUNKS, bool SMEM, Xchg X = Xchg::bar, bool PDL = false, int PAD = 0>
Kind kind(const char* name, bool rows_only = false, int carve = -1) {
  return {name,
          reinterpret_cast<void*>(&ClusterRows<THREADS, CHUNKS, SMEM, X, PDL, PAD>),
          SMEM ? size_t{THREADS} * CHUNKS * 16 : 0,
          THREADS,
          (long long)THREADS * CHUNKS,
          rows_only,
          PDL,
          carve};
}

struct Launch {
  void* fn;
  size_t smem;
  int threads;
  int ranks;
  long long blocks;
  bool pdl = false;
};

// A launch of `blocks` blocks in clusters of l.ranks (the attribute lives in `attr`).
static cudaLaunchConfig_t cluster_config(const Launch& l, long long blocks, cudaStream_t s,
                                         cudaLaunchAttribute (&attr)[2]) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(blocks));
  cfg.blockDim = dim3(l.threads);
  cfg.dynamicSmemBytes = l.smem;
  cfg.stream = s;
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = l.ranks;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = l.pdl ? 2 : 1;
  return cfg;
}

static int resident_clusters(const Launch& l) {
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg = cluster_config(l, l.ranks * 1024LL, nullptr, attr);
  int n = 0;
  CK(cudaOccupancyMaxActiveClusters(&n, l.fn, &cfg));
  return n;
}

static void launch(const Launch& l, const Args& a, cudaStream_t s) {
  cudaLaunchAttribute attr[2];
  const cudaLaunchConfig_t cfg = cluster_config(l, l.blocks, s, attr);
  void* params[] = {const_cast<Args*>(&a)};
  CK(cudaLaunchKernelExC(&cfg, l.fn, params));
}

static float bf16_to_float(unsigned short h) {
  unsigned u = unsigned{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
static unsigned short float_to_bf16(float f) {  // round to nearest even (finite inputs)
  unsigned u;
  std::memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<unsigned short>(u >> 16);
}

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 30;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf(
      "# %s, %d SMs, %d MB L2; bf16; GB/s of 2*M*N*2 bytes (read x, write y); median of %d replays "
      "of a graph of back-to-back calls over two input sets; %% of the copy of the same bytes\n",
      prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20, reps);
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));

  struct Shape {
    int rows;
    long long cols;
  };
  const Shape shapes[] = {{16384, 32768}, {4096, 65536}, {2048, 131072}, {1024, 262144}};
  constexpr int kSets = 2, kCalls = 8;
  const size_t max_bytes = size_t{16384} * 32768 * 2;
  uint4 *x[kSets], *y[kSets], *w;
  for (int k = 0; k < kSets; ++k) {
    CK(cudaMalloc(&x[k], max_bytes));
    CK(cudaMalloc(&y[k], max_bytes));
  }
  CK(cudaMalloc(&w, 262144 * 2));
  {
    std::mt19937 gen(7);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<unsigned short> h(max_bytes / 2);
    for (int k = 0; k < kSets; ++k) {
      for (auto& v : h) v = float_to_bf16(nd(gen));
      CK(cudaMemcpy(x[k], h.data(), max_bytes, cudaMemcpyHostToDevice));
    }
    std::vector<unsigned short> hw(262144);
    for (auto& v : hw) v = float_to_bf16(1.f + 0.1f * nd(gen));
    CK(cudaMemcpy(w, hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
  }

  // The variants: data path, threads x chunks a thread (32 KB slices, QuACK's 256 x 8
  // among them; 16 KB slices in clusters twice the size; FlashInfer 0.7.4's 256 x 16, 64 KB
  // slices in clusters of 2 / 4 / 8 blocks at 65536 / 131072 / 262144 columns, three blocks
  // an SM), one cluster a row or a loop.
  const Kind kinds[] = {
      kind<256, 8, true>("smem 256x8", true),
      kind<512, 8, true>("smem 512x8"),
      kind<256, 16, true>("smem 256x16", true),
      kind<512, 8, false>("regs 512x8"),
      kind<1024, 4, false>("regs 1024x4"),
      // the library's row sum and launch on the bare data path, and what lies between
      kind<512, 8, true, Xchg::lib>("smem 512x8 lib", true),
      kind<512, 8, true, Xchg::lib, true>("smem 512x8 lib+pdl", true),
      kind<512, 8, true, Xchg::vec>("smem 512x8 vec", true),
      kind<512, 8, true, Xchg::total>("smem 512x8 total", true),
      kind<512, 8, true, Xchg::bar, false, 2048>("smem 512x8 pad2k", true),
      kind<512, 8, true, Xchg::bar>("smem 512x8 carve", true, 100),
      kind<512, 8, true, Xchg::total, false, 2048>("smem 512x8 total+pad2k", true),
      kind<256, 8, true, Xchg::lib>("smem 256x8 lib", true),
      kind<256, 8, true, Xchg::vec>("smem 256x8 vec", true),
      kind<256, 8, true, Xchg::total>("smem 256x8 total", true),
      kind<256, 8, true, Xchg::bar, false, 1024>("smem 256x8 pad1k", true),
      // the registers' path (the library's 512 x 8 and 1024 x 4 cluster rows)
      kind<512, 8, false, Xchg::lib>("regs 512x8 lib", true),
      kind<512, 8, false, Xchg::vec>("regs 512x8 vec", true),
      kind<512, 8, false, Xchg::total>("regs 512x8 total", true),
      kind<1024, 4, false, Xchg::lib>("regs 1024x4 lib", true),
      kind<1024, 4, false, Xchg::total>("regs 1024x4 total", true),
  };
  std::printf("%-24s %9s %18s\n", "variant", "registers", "static shared (B)");
  for (const Kind& k : kinds) {
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, k.fn));
    std::printf("%-24s %9d %18zu\n", k.name, fa.numRegs, fa.sharedSizeBytes);
  }
  for (const Kind& k : kinds) {
    CK(cudaFuncSetAttribute(k.fn, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    if (k.smem > 48 * 1024) CK(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)k.smem));
  }

  const auto time_graph = [&](auto&& body) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int c = 0; c < kCalls; ++c) body(c % kSets, s);
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    CK(cudaGraphLaunch(ge, s));  // warm-up
    CK(cudaGraphLaunch(ge, s));
    std::vector<float> t;
    for (int r = 0; r < reps; ++r) {
      float ms = 0.f;
      CK(cudaEventRecord(e0, s));
      CK(cudaGraphLaunch(ge, s));
      CK(cudaEventRecord(e1, s));
      CK(cudaEventSynchronize(e1));
      CK(cudaEventElapsedTime(&ms, e0, e1));
      t.push_back(ms / kCalls);
    }
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
  };

  std::printf("%6s %8s  %-18s %-8s %6s %9s %9s %7s %s\n", "M", "N", "variant", "grid", "ranks", "GB/s", "copy GB/s",
              "%copy", "resident clusters");
  for (const Shape& sh : shapes) {
    const size_t bytes = size_t(sh.rows) * sh.cols * 2;
    const double moved = 2.0 * bytes;
    // The copy as the library's bench takes it: the faster of a graph of copies and the same
    // copies issued one after another on the stream (a graph's copy nodes ran slower here).
    const auto copy = [&](int k, cudaStream_t st) {
      CK(cudaMemcpyAsync(y[k], x[k], bytes, cudaMemcpyDeviceToDevice, st));
    };
    float loop_ms;
    {
      std::vector<float> t;
      for (int r = 0; r < reps + 2; ++r) {
        float ms = 0.f;
        CK(cudaEventRecord(e0, s));
        for (int c = 0; c < kCalls; ++c) copy(c % kSets, s);
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 2) t.push_back(ms / kCalls);
      }
      std::sort(t.begin(), t.end());
      loop_ms = t[t.size() / 2];
    }
    const float copy_ms = std::min(time_graph(copy), loop_ms);
    const double copy_gbs = moved / (copy_ms * 1e-3) / 1e9;
    std::printf("%6d %8lld  %-18s %-8s %6s %9.0f %9.0f %7s\n", sh.rows, sh.cols, "copy", "", "", copy_gbs, copy_gbs,
                "100.0");
    Args a{};
    a.rows = sh.rows;
    a.row_chunks = sh.cols / 8;
    a.inv_cols = 1.f / static_cast<float>(sh.cols);
    a.eps = 1e-6f;
    a.w = w;
    for (const Kind& k : kinds) {
      if (a.row_chunks % k.slice != 0) continue;
      const long long ranks = a.row_chunks / k.slice;
      if (ranks < 2 || ranks > kMaxRanks) continue;
      CK(cudaFuncSetAttribute(k.fn, cudaFuncAttributePreferredSharedMemoryCarveout, k.carve));
      Launch l{k.fn, k.smem, k.threads, static_cast<int>(ranks), 0, k.pdl};
      const int resident = resident_clusters(l);
      if (resident == 0) {
        std::printf("%6d %8lld  %-18s %-8s %6lld   (no cluster of this size fits)\n", sh.rows, sh.cols, k.name, "",
                    ranks);
        continue;
      }
      for (int grid = 0; grid < (k.rows_only ? 1 : 3);
           ++grid) {  // 0: a cluster a row; 1, 2: K x resident clusters, looping
        const long long clusters = grid == 0 ? sh.rows : std::min<long long>(sh.rows, (long long)grid * resident);
        l.blocks = clusters * ranks;
        // Checked first: y poisoned, one call, rows compared with the host's formula.
        CK(cudaMemset(y[0], 0xff, bytes));
        a.x = x[0];
        a.y = y[0];
        launch(l, a, s);
        CK(cudaStreamSynchronize(s));
        CK(cudaGetLastError());
        {
          std::vector<unsigned short> hx(sh.cols), hy(sh.cols), hw(sh.cols);
          CK(cudaMemcpy(hw.data(), w, sh.cols * 2, cudaMemcpyDeviceToHost));
          for (int r : {0, sh.rows / 2 + 1, sh.rows - 1}) {
            CK(cudaMemcpy(hx.data(), reinterpret_cast<const char*>(x[0]) + size_t(r) * sh.cols * 2, sh.cols * 2,
                          cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hy.data(), reinterpret_cast<const char*>(y[0]) + size_t(r) * sh.cols * 2, sh.cols * 2,
                          cudaMemcpyDeviceToHost));
            double ss = 0;
            for (long long c = 0; c < sh.cols; ++c) ss += double(bf16_to_float(hx[c])) * bf16_to_float(hx[c]);
            const double rstd = 1.0 / std::sqrt(ss / sh.cols + 1e-6);
            for (long long c = 0; c < sh.cols; ++c) {
              const double want = bf16_to_float(hx[c]) * rstd * bf16_to_float(hw[c]);
              const double got = bf16_to_float(hy[c]);
              if (!(std::fabs(got - want) <= 1e-2 * std::fabs(want) + 1e-3)) {
                std::printf("CHECK FAILED: %s ranks %lld row %d col %lld: %g against %g\n", k.name, ranks, r, c, got,
                            want);
                return 1;
              }
            }
          }
        }
        const float ms = time_graph([&](int set, cudaStream_t st) {
          Args b = a;
          b.x = x[set];
          b.y = y[set];
          launch(l, b, st);
        });
        const double gbs = moved / (ms * 1e-3) / 1e9;
        char gname[16];
        std::snprintf(gname, sizeof gname, grid == 0 ? "rows" : "loop %d", grid);
        std::printf("%6d %8lld  %-18s %-8s %6lld %9.0f %9.0f %7.1f %d\n", sh.rows, sh.cols, k.name, gname, ranks, gbs,
                    copy_gbs, 100.0 * gbs / copy_gbs, resident);
      }
    }
  }
  std::printf("checked: every variant's rows 0, M/2+1 and M-1 against the host's formula (within 1e-2 relative)\n");
  return 0;
}
