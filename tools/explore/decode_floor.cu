// Where a decode call's time goes (docs/performance.md, "Next measurements" item 8): the
// copy of a few rows' bytes in a CUDA graph of back-to-back calls, timed in the shapes our
// kernels take, so that each step from the driver's copy to the library's launch is
// priced on its own:
//   memcpy      cudaMemcpyAsync of the same bytes (the bench's copy column)
//   flat        a copy kernel of one 16-byte vector a thread over the whole call
//   row         one block a row, VEC vectors a lane in registers, then stored (the block
//               row's data path: every byte of a row through one SM)
//   row+bar     the same with a block barrier between the loads and the stores (the row
//               sum's dependency)
//   split P     a row over P plain blocks of 64 threads (no cluster), VEC vectors a lane
//   cluster P   the same blocks launched as clusters of P, no barrier
//   +start      ... with a cluster barrier after the loads (the mailboxes' set-up)
//   +end        ... and one before the kernel returns
//   +arrive/wait a cluster barrier split in two: arrive (relaxed) once the loads are
//               issued, wait before the stores, so that the loads hide its latency
//   norm        the block row's RMSNorm itself, one block a row as row: bf16, the sum of
//               squares by CUB's BlockReduce, y = x * rstd (with 2 arrays: r_out = x + r
//               stored, then its norm), to price the reduction on the row's critical path
//   norm+w      the same times a weight read from L2 (the same for every call)
//   norm+w early (plain forward only) the same with every load issued before the first
//               sum of squares: the weight's, then x's, as volatile loads, which keep their
//               program order (as plain loads, with or without their bounds, the compiler
//               issued some of the weight's after the sums of squares, which wait for x)
//   norm+w fast the same with a shorter dependent path to the stores: the sum of squares
//               in one accumulator a vector (added as a tree), and the block's sum by warp
//               butterflies, one block barrier and every thread adding the warps' totals
//               (BlockReduce and the broadcast of thread 0's total take two barriers)
//   library     (built with -DDECODE_FLOOR_LIBRARY -Isrc -Iinclude; plain forward only) the
//               library's own block-row kernel (RegisterRowsImpl, bf16, the fp32 cast, the
//               configuration the planner takes for these rows: 128 x 4 and 256 x 4) with a
//               weight, launched here as the library launches it, so that its time sits
//               beside the norm variants' in one process; built against another tree's
//               src/ (-I), it prices a change to the kernel without building the library
// Every kernel but memcpy is launched with programmatic dependent launch, as the library's
// are, and waits for the previous grid before its first load. Tensors: ARRAYS inputs
// copied to ARRAYS outputs (1: the plain forward's bytes; 2: the residual add's), rows of N
// 16-bit elements, rotated over sets of at least 256 MB so that no call reads what an
// earlier one left in L2. Not part of the library or its tests: built and run by hand,
//   nvcc -O3 -std=c++17 -arch=sm_90 -o decode_floor tools/explore/decode_floor.cu && ./decode_floor
// with the library's kernel (`./decode_floor library` times only memcpy, norm+w and library,
// one array):
//   nvcc -O3 -std=c++17 -arch=sm_90 --expt-relaxed-constexpr -DDECODE_FLOOR_LIBRARY -DRMSNORM_HAVE_CUDA=1 \
//     -Isrc -Iinclude -o decode_floor tools/explore/decode_floor.cu
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cub/block/block_reduce.cuh>
#include <vector>

#ifdef DECODE_FLOOR_LIBRARY
#include "cuda/forward_kernels.cuh"
#endif

namespace cg = cooperative_groups;

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

constexpr int kVec = 4;  // vectors a lane, as the block rows of 4096-16384 16-bit columns

struct Args {
  const uint4* in[2];
  uint4* out[2];
  int arrays;
  long long row_vectors;  // 16-byte vectors a row
  int blocks_per_row;
  int block_barrier, cluster_start, cluster_end;
};

__global__ void flat_copy(Args a, long long total) {
  cudaGridDependencySynchronize();
  cudaTriggerProgrammaticLaunchCompletion();
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  for (int k = 0; k < a.arrays; ++k) a.out[k][i] = a.in[k][i];
}

// f(k, j, i) for vector j of this lane in array k, at index i of the array, the row's
// vectors past its end left out.
template <class F>
__device__ __forceinline__ void each_vector(const Args& a, long long row, long long lane, long long lanes, F f) {
#pragma unroll
  for (int k = 0; k < 2; ++k)
    if (k < a.arrays)
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const long long c = lane + j * lanes;
        if (c < a.row_vectors) f(k, j, row * a.row_vectors + c);
      }
}

__global__ void row_copy(Args a) {
  cudaGridDependencySynchronize();
  cudaTriggerProgrammaticLaunchCompletion();
  const long long row = blockIdx.x / a.blocks_per_row;
  const int part = blockIdx.x % a.blocks_per_row;
  const long long lane = part * static_cast<long long>(blockDim.x) + threadIdx.x;
  const long long lanes = static_cast<long long>(blockDim.x) * a.blocks_per_row;
  uint4 v[2][kVec];
  each_vector(a, row, lane, lanes, [&](int k, int j, long long i) { v[k][j] = __ldg(a.in[k] + i); });
  // The split barrier's arrival once the loads are issued (they stay in flight), its wait
  // before the stores that need them.
  if (a.cluster_start == 2) asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
  if (a.block_barrier) __syncthreads();
  if (a.cluster_start == 1) cg::this_cluster().sync();
  if (a.cluster_start == 2) asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
  each_vector(a, row, lane, lanes, [&](int k, int j, long long i) { a.out[k][i] = v[k][j]; });
  if (a.cluster_end) cg::this_cluster().sync();
}

__global__ void fill(unsigned* p, long long words, unsigned seed) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < words;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    // Two bf16 values in (-2, 2), never zero, from a hash of the word's index.
    const unsigned h = (static_cast<unsigned>(i) * 2654435761u + seed) * 2246822519u;
    const float lo = (static_cast<float>(h & 0xffffu) - 32767.5f) / 16384.f;
    const float hi = (static_cast<float>(h >> 16) - 32767.5f) / 16384.f;
    const __nv_bfloat162 b = __floats2bfloat162_rn(lo, hi);
    p[i] = *reinterpret_cast<const unsigned*>(&b);
  }
}

// The host's bf16, for the norm variants' check.
float bf16_float(unsigned short b) {
  unsigned u = static_cast<unsigned>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
unsigned short float_bf16(float f) {  // round to nearest even (no NaN here)
  unsigned u;
  std::memcpy(&u, &f, 4);
  return static_cast<unsigned short>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// A norm variant's outputs of one call against the host's: r_out (2 arrays) bit for bit, y
// within 2^-7 of its size (one bf16 rounding, and fp32 against double before it).
bool norm_matches(const std::vector<unsigned short>& x, const std::vector<unsigned short>& r,
                  const std::vector<unsigned short>& y, const std::vector<unsigned short>& r_out,
                  const std::vector<unsigned short>& w, bool weight, int rows, int cols, int arrays) {
  for (int i = 0; i < rows; ++i) {
    std::vector<float> v(cols);
    double ss = 0;
    for (int j = 0; j < cols; ++j) {
      const std::size_t at = static_cast<std::size_t>(i) * cols + j;
      float t = bf16_float(x[at]);
      if (arrays == 2) {
        const unsigned short sum = float_bf16(t + bf16_float(r[at]));
        if (sum != r_out[at]) return false;
        t = bf16_float(sum);
      }
      v[j] = t;
      ss += static_cast<double>(t) * t;
    }
    const double rstd = 1.0 / std::sqrt(ss / cols + 1e-6);
    for (int j = 0; j < cols; ++j) {
      const double want = v[j] * rstd * (weight ? bf16_float(w[j]) : 1.0);
      const double got = bf16_float(y[static_cast<std::size_t>(i) * cols + j]);
      if (std::fabs(got - want) > std::ldexp(std::fabs(want), -7) + 1e-6) return false;
    }
  }
  return true;
}

__device__ __forceinline__ uint4 load_in_order(const uint4* p) {
  uint4 v;
  asm volatile("ld.volatile.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// The block row's forward in the copy's shape: a row a block of BLOCK threads, kVec
// vectors of 8 bf16 a lane. With 2 arrays, the residual add: r_out = x + r stored, y the
// norm of r_out. y goes to out[0]; r_out to out[1].
template <int BLOCK, bool WEIGHT, int MODE>
__global__ void __launch_bounds__(BLOCK) row_norm(Args a, const uint4* w) {
  // MODE 1: the loads in order (EARLY); 2: and the short reduction (FAST).
  constexpr bool EARLY = MODE >= 1, FAST = MODE >= 2;
  cudaGridDependencySynchronize();
  cudaTriggerProgrammaticLaunchCompletion();
  using Reduce = cub::BlockReduce<float, BLOCK>;
  __shared__ typename Reduce::TempStorage temp;
  __shared__ float total;
  __shared__ float warp_total[BLOCK / 32];
  const long long row = blockIdx.x;
  uint4 v[kVec], wv[kVec];
  // Early: the weight's loads, then x's, without bounds (the block covers the row exactly
  // here) and volatile, so that all are issued before the sums of squares.
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const long long c = threadIdx.x + j * BLOCK;
    if (EARLY && WEIGHT) wv[j] = load_in_order(w + c);
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const long long c = threadIdx.x + j * BLOCK;
    if (EARLY) v[j] = load_in_order(a.in[0] + row * a.row_vectors + c);
  }
  // x's and r's loads all issued before r_out's first store: loaded one vector at a time
  // between the stores (tree f7c66a7), they waited for each other, and the 2-array norm
  // variants took longer than the copy of their bytes.
  uint4 xr[2][kVec] = {};
  if (!EARLY)
    each_vector(a, row, threadIdx.x, BLOCK, [&](int k, int j, long long i) { xr[k][j] = __ldg(a.in[k] + i); });
  const uint4(&rv)[kVec] = xr[1];
  if (!EARLY)
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = xr[0][j];
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const long long c = threadIdx.x + j * BLOCK;
    if (!EARLY && a.arrays == 2 && c < a.row_vectors) {
      __nv_bfloat162* x2 = reinterpret_cast<__nv_bfloat162*>(&v[j]);
      const __nv_bfloat162* r2 = reinterpret_cast<const __nv_bfloat162*>(&rv[j]);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(x2[k]), g = __bfloat1622float2(r2[k]);
        x2[k] = __float22bfloat162_rn(make_float2(f.x + g.x, f.y + g.y));
      }
      a.out[1][row * a.row_vectors + c] = v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const long long c = threadIdx.x + j * BLOCK;
    if (!EARLY) wv[j] = WEIGHT && c < a.row_vectors ? __ldg(w + c) : uint4{};
  }
  // One chain through the row's values (as the library's sum_squares), or one a vector.
  float part[kVec], ss = 0.f;
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const __nv_bfloat162* x2 = reinterpret_cast<const __nv_bfloat162*>(&v[j]);
    float& acc = FAST ? part[j] : ss;
    if (FAST) acc = 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(x2[k]);
      acc = fmaf(f.x, f.x, acc);
      acc = fmaf(f.y, f.y, acc);
    }
  }
  if (FAST) {
    static_assert(kVec == 4, "a tree of four");
    ss = (part[0] + part[1]) + (part[2] + part[3]);
#pragma unroll
    for (int d = 16; d >= 1; d /= 2) ss += __shfl_xor_sync(0xffffffffu, ss, d);
    if (threadIdx.x % 32 == 0) warp_total[threadIdx.x / 32] = ss;
    __syncthreads();
    ss = 0.f;
#pragma unroll
    for (int k = 0; k < BLOCK / 32; ++k) ss += warp_total[k];
  } else {
    ss = Reduce(temp).Sum(ss);
    if (threadIdx.x == 0) total = ss;
    __syncthreads();
    ss = total;
  }
  const float rstd = rsqrtf(ss / static_cast<float>(a.row_vectors * 8) + 1e-6f);
#pragma unroll
  for (int j = 0; j < kVec; ++j) {
    const long long c = threadIdx.x + j * BLOCK;
    if (c >= a.row_vectors) continue;
    __nv_bfloat162* x2 = reinterpret_cast<__nv_bfloat162*>(&v[j]);
    const __nv_bfloat162* w2 = reinterpret_cast<const __nv_bfloat162*>(&wv[j]);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float2 f = __bfloat1622float2(x2[k]);
      f.x *= rstd;
      f.y *= rstd;
      if (WEIGHT) {
        const float2 g = __bfloat1622float2(w2[k]);
        f.x *= g.x;
        f.y *= g.y;
      }
      x2[k] = __float22bfloat162_rn(f);
    }
    a.out[0][row * a.row_vectors + c] = v[j];
  }
}

template <bool WEIGHT, int MODE>
void launch_norm(cudaLaunchConfig_t& cfg, const Args& a, const uint4* w, int block) {
  if (block == 128)
    CK(cudaLaunchKernelEx(&cfg, row_norm<128, WEIGHT, MODE>, a, w));
  else
    CK(cudaLaunchKernelEx(&cfg, row_norm<256, WEIGHT, MODE>, a, w));
}

#ifdef DECODE_FLOOR_LIBRARY
// The library's block row for a row of `lanes` x kVec vectors of 8 bf16, its arguments as
// the dispatch fills them for a contiguous (m, n) matrix with a weight and the fp32 cast.
void launch_library(cudaLaunchConfig_t& cfg, const Args& a, const uint4* w, int block, int m) {
  namespace k = rmsnorm::detail::cuda;
  k::ForwardArgs f{};
  const long long n = a.row_vectors * 8;
  f.x = a.in[0];
  f.y = a.out[0];
  f.weight = w;
  f.rows = f.total_rows = m;
  f.cols = n;
  f.x_batch_stride = f.y_batch_stride = m * n;
  f.x_row_stride = f.y_row_stride = n;
  f.eps = 1e-6f;
  f.inv_cols = 1.0f / static_cast<float>(n);
  f.ranks = 1;
  f.pieces = 1;
  f.weight_at = -1;
  using B = __nv_bfloat16;
  using Steps = k::ForwardSteps<false, false>;
  if (block == 128)
    CK(cudaLaunchKernelEx(&cfg, k::RegisterRowsImpl<true, Steps, B, B, B, 8, 128, kVec, 128>, f));
  else
    CK(cudaLaunchKernelEx(&cfg, k::RegisterRowsImpl<true, Steps, B, B, B, 8, 256, kVec, 256>, f));
}
#endif

struct Variant {
  const char* name;
  int kind;  // 0 memcpy, 1 flat, 2 row kernel, 3 norm, 4 norm with a weight, 5 early, 6 fast, 7 library
  int blocks_per_row, cluster, block_barrier, cluster_start, cluster_end, pdl;
};

int main(int argc, char** argv) {
  // `library`: the library's kernel beside memcpy and norm+w alone, one array.
  const bool library_only = argc > 1 && std::strcmp(argv[1], "library") == 0;
#ifndef DECODE_FLOOR_LIBRARY
  if (library_only) {
    std::fprintf(stderr, "decode_floor: built without -DDECODE_FLOOR_LIBRARY\n");
    return 2;
  }
#endif
  const long long kRotate = 256ll << 20;
  const int rows_list[] = {1, 8, 32, 128};
  const int cols_list[] = {4096, 8192};
  const int reps = 11;
  std::size_t max_bytes = 0;
  for (int r : rows_list)
    for (int n : cols_list) max_bytes = std::max<std::size_t>(max_bytes, static_cast<std::size_t>(r) * n * 2);
  const std::size_t pool = kRotate + max_bytes;
  std::vector<void*> bufs(4);
  for (auto& b : bufs) {
    CK(cudaMalloc(&b, pool));
  }
  for (int k = 0; k < 2; ++k) fill<<<1024, 256>>>(static_cast<unsigned*>(bufs[k]), pool / 4, 977u * k + 1);
  CK(cudaGetLastError());
  // The weight of the norm variants: one row's worth, the same for every call.
  uint4* weight = nullptr;
  CK(cudaMalloc(&weight, max_bytes));
  fill<<<64, 256>>>(reinterpret_cast<unsigned*>(weight), static_cast<long long>(max_bytes / 4), 5u);
  CK(cudaGetLastError());
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  int dev = 0, sms = 0;
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("# %s, %d SMs; us a call, median of %d replays of a graph of back-to-back calls\n", prop.name, sms, reps);
  std::printf("%-6s %-6s %-6s %-22s %8s\n", "arrays", "rows", "cols", "variant", "us");
  for (int arrays = 1; arrays <= (library_only ? 1 : 2); ++arrays)
    for (int n : cols_list)
      for (int m : rows_list) {
        const long long row_vectors = n * 2 / 16;
        const std::size_t bytes = static_cast<std::size_t>(m) * n * 2;
        const long long sets = std::max<long long>(1, kRotate / (bytes * arrays));
        const long long calls = std::min<long long>(sets, 16384);
        const int lanes = static_cast<int>(row_vectors / kVec);  // threads of the block row
        std::vector<Variant> vs = {
            {"memcpy", 0, 1, 0, 0, 0, 0, 0},        {"flat", 1, 1, 0, 0, 0, 0, 1},
            {"flat (no pdl)", 1, 1, 0, 0, 0, 0, 0}, {"row", 2, 1, 0, 0, 0, 0, 1},
            {"row+bar", 2, 1, 0, 1, 0, 0, 1},       {"row+bar (no pdl)", 2, 1, 0, 1, 0, 0, 0},
            {"norm", 3, 1, 0, 0, 0, 0, 1},          {"norm+w", 4, 1, 0, 0, 0, 0, 1},
        };
        if (arrays == 1) {
          vs.push_back({"norm+w early", 5, 1, 0, 0, 0, 0, 1});
          vs.push_back({"norm+w fast", 6, 1, 0, 0, 0, 0, 1});
        }
#ifdef DECODE_FLOOR_LIBRARY
        if (arrays == 1) vs.push_back({"library", 7, 1, 0, 0, 0, 0, 1});
#endif
        if (library_only)
          vs.erase(std::remove_if(vs.begin(), vs.end(),
                                  [](const Variant& v) { return v.kind != 0 && v.kind != 4 && v.kind != 7; }),
                   vs.end());
        const int split = lanes / 64;
        if (!library_only && split >= 2 && split * m <= sms) {
          vs.push_back({"split", 2, split, 0, 0, 0, 0, 1});
          vs.push_back({"cluster", 2, split, 1, 0, 0, 0, 1});
          vs.push_back({"cluster+start", 2, split, 1, 0, 1, 0, 1});
          vs.push_back({"cluster+start+end", 2, split, 1, 0, 1, 1, 1});
          vs.push_back({"cluster+arrive/wait", 2, split, 1, 0, 2, 0, 1});
        }
        for (const Variant& v : vs) {
          cudaGraph_t g;
          cudaGraphExec_t ge;
          CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
          for (long long c = 0; c < calls; ++c) {
            const std::size_t off = static_cast<std::size_t>(c % sets) * bytes;
            Args a{};
            a.arrays = arrays;
            for (int k = 0; k < arrays; ++k) {
              a.in[k] = reinterpret_cast<const uint4*>(static_cast<char*>(bufs[k]) + off);
              a.out[k] = reinterpret_cast<uint4*>(static_cast<char*>(bufs[2 + k]) + off);
            }
            a.row_vectors = row_vectors;
            a.blocks_per_row = v.blocks_per_row;
            a.block_barrier = v.block_barrier;
            a.cluster_start = v.cluster_start;
            a.cluster_end = v.cluster_end;
            if (v.kind == 0) {
              for (int k = 0; k < arrays; ++k)
                CK(cudaMemcpyAsync(a.out[k], a.in[k], bytes, cudaMemcpyDeviceToDevice, s));
              continue;
            }
            cudaLaunchConfig_t cfg{};
            cudaLaunchAttribute at[2];
            int na = 0;
            if (v.pdl) {
              at[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
              at[na].val.programmaticStreamSerializationAllowed = 1;
              ++na;
            }
            if (v.cluster) {
              at[na].id = cudaLaunchAttributeClusterDimension;
              at[na].val.clusterDim.x = v.blocks_per_row;
              at[na].val.clusterDim.y = 1;
              at[na].val.clusterDim.z = 1;
              ++na;
            }
            cfg.attrs = at;
            cfg.numAttrs = na;
            cfg.stream = s;
            if (v.kind == 1) {
              const long long total = static_cast<long long>(m) * row_vectors;
              cfg.blockDim = dim3(256);
              cfg.gridDim = dim3(static_cast<unsigned>((total + 255) / 256));
              CK(cudaLaunchKernelEx(&cfg, flat_copy, a, total));
            } else if (v.kind >= 3) {
              cfg.blockDim = dim3(lanes);
              cfg.gridDim = dim3(static_cast<unsigned>(m));
              if (v.kind == 7) {
#ifdef DECODE_FLOOR_LIBRARY
                launch_library(cfg, a, weight, lanes, m);
#endif
              } else if (v.kind == 6)
                launch_norm<true, 2>(cfg, a, weight, lanes);
              else if (v.kind == 5)
                launch_norm<true, 1>(cfg, a, weight, lanes);
              else if (v.kind == 4)
                launch_norm<true, 0>(cfg, a, weight, lanes);
              else
                launch_norm<false, 0>(cfg, a, weight, lanes);
            } else {
              cfg.blockDim = dim3(lanes / v.blocks_per_row);
              cfg.gridDim = dim3(static_cast<unsigned>(m * v.blocks_per_row));
              CK(cudaLaunchKernelEx(&cfg, row_copy, a));
            }
          }
          CK(cudaStreamEndCapture(s, &g));
          CK(cudaGraphInstantiate(&ge, g, 0));
          // Checked first: every call's outputs poisoned, the graph run once, then the
          // first and the last set's outputs compared with their inputs.
          for (int k = 0; k < arrays; ++k) CK(cudaMemsetAsync(bufs[2 + k], 0xff, pool, s));
          CK(cudaGraphLaunch(ge, s));
          CK(cudaStreamSynchronize(s));
          for (long long c : {0ll, calls - 1})
            for (int k = 0; k < arrays; ++k) {
              const std::size_t off = static_cast<std::size_t>(c % sets) * bytes;
              std::vector<unsigned char> x(bytes), y(bytes);
              CK(cudaMemcpy(x.data(), static_cast<char*>(bufs[k]) + off, bytes, cudaMemcpyDeviceToHost));
              CK(cudaMemcpy(y.data(), static_cast<char*>(bufs[2 + k]) + off, bytes, cudaMemcpyDeviceToHost));
              if (v.kind >= 3) {
                if (k == 1) continue;  // r_out: judged with y
                const auto get = [&](const void* base) {
                  std::vector<unsigned short> h(bytes / 2);
                  CK(cudaMemcpy(h.data(), static_cast<const char*>(base) + off, bytes, cudaMemcpyDeviceToHost));
                  return h;
                };
                std::vector<unsigned short> xr = get(bufs[0]), yr = get(bufs[2]), rr, ro, wr(n);
                if (arrays == 2) {
                  rr = get(bufs[1]);
                  ro = get(bufs[3]);
                }
                CK(cudaMemcpy(wr.data(), weight, n * 2, cudaMemcpyDeviceToHost));
                if (!norm_matches(xr, rr, yr, ro, wr, v.kind >= 4, m, n, arrays)) {
                  std::fprintf(stderr, "%s: wrong norm (rows %d, cols %d, call %lld)\n", v.name, m, n, c);
                  return 1;
                }
                continue;
              }
              if (x != y) {
                std::fprintf(stderr, "%s: wrong copy (rows %d, cols %d, array %d, call %lld)\n", v.name, m, n, k, c);
                return 1;
              }
            }
          CK(cudaGraphLaunch(ge, s));
          CK(cudaStreamSynchronize(s));
          std::vector<float> us;
          for (int r = 0; r < reps; ++r) {
            CK(cudaEventRecord(e0, s));
            CK(cudaGraphLaunch(ge, s));
            CK(cudaEventRecord(e1, s));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            us.push_back(1000.f * ms / calls);
          }
          std::sort(us.begin(), us.end());
          char name[64];
          std::snprintf(name, sizeof name, v.blocks_per_row > 1 ? "%s %d" : "%s", v.name, v.blocks_per_row);
          std::printf("%-6d %-6d %-6d %-22s %8.2f\n", arrays, m, n, name, us[us.size() / 2]);
          std::fflush(stdout);
          CK(cudaGraphExecDestroy(ge));
          CK(cudaGraphDestroy(g));
        }
      }
  return 0;
}
