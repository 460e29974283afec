// CUDA timing of the fused forms (--op add, --op quant), following docs/performance.md as the
// forward's (bench_cuda.cu): inputs generated on the device, every implementation checked
// before it is timed, buffer sets rotated so that the working set is >= 4x L2 (no L2 reuse
// between calls), back-to-back calls captured in one CUDA graph, replays timed with CUDA
// events, median (cuda_timing.cuh).
//
// The unfused baseline is rmsnorm's own plain forward with the fused step around it as
// separate kernels, the way eager PyTorch runs a model that calls rmsnorm::forward:
//
//   add:    r_out = x + r               one elementwise kernel (fp32 math, rounded to r's dtype)
//           y = forward(r_out)
//   quant:  y = forward(x)              stored in x's dtype, as a framework's tensor is
//           static:      q = sat(y / s)                    one kernel
//           row, group:  s = max(amax|y| / qmax, min)      one reduction kernel a row (group)
//                        q = sat(y / s)                    one kernel
//
// so the speedup column is what the fusion saves (the passes over memory and the launches),
// not a better norm. The baseline's kernels are below; they load and store 16 bytes at a time
// as PyTorch's vectorised elementwise kernels do, so that they run at its memory speed.
//
// Until the CUDA backend serves a fused form it refuses it with Code::unsupported: the fused
// cells then read "not served" and the baseline and the copy are timed all the same.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <optional>

#include "bench.h"
#include "cuda_check.h"
#include "cuda_timing.cuh"
#include "forced_config.h"
#include "normal_fill.h"
#include "problem.h"
#include "table.h"
#include "unfused_kernels.cuh"

namespace rmsnorm::cli {
namespace {

// ---------------------------------------------------------------------------------------
// The baseline's kernels
// ---------------------------------------------------------------------------------------

constexpr int kThreads = 256;

// The storage conversions of the unfused baselines (bench/unfused_kernels.cuh).
using bench::from_float;
using bench::to_float;

// Elements of T in one 16-byte access.
template <class T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

template <class T>
struct alignas(16) Vec {
  T e[kVec<T>];
};

// r_out = x + r, PyTorch's add of two tensors of one dtype: fp32 math, one rounding.
template <class T>
__global__ void __launch_bounds__(kThreads)
    add_kernel(const T* __restrict__ x, const T* __restrict__ r, T* __restrict__ out, long long n) {
  constexpr int V = kVec<T>;
  const long long stride = static_cast<long long>(gridDim.x) * kThreads;
  const long long first = static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x;
  const long long vectors = n / V;
  for (long long v = first; v < vectors; v += stride) {
    const Vec<T> a = reinterpret_cast<const Vec<T>*>(x)[v], b = reinterpret_cast<const Vec<T>*>(r)[v];
    Vec<T> c;
#pragma unroll
    for (int k = 0; k < V; ++k) c.e[k] = from_float<T>(to_float(a.e[k]) + to_float(b.e[k]));
    reinterpret_cast<Vec<T>*>(out)[v] = c;
  }
  for (long long i = vectors * V + first; i < n; i += stride) out[i] = from_float<T>(to_float(x[i]) + to_float(r[i]));
}

// The 8-bit conversions of eager PyTorch's quantisers: `t.clamp(-448, 448).to(float8_e4m3fn)`
// (the saturating conversion is that, bit for bit) and `t.round().clamp(-127, 127).to(int8)`
// (round half to even; NaN to 0, as the library does).
template <class Q>
__device__ Q to_code(float t);
template <>
__device__ inline __nv_fp8_storage_t to_code<__nv_fp8_storage_t>(float t) {
  return __nv_cvt_float_to_fp8(t, __NV_SATFINITE, __NV_E4M3);
}
template <>
__device__ inline signed char to_code<signed char>(float t) {
  if (t != t) return 0;
  return static_cast<signed char>(__float2int_rn(fminf(fmaxf(t, -127.0f), 127.0f)));
}

// The amax of |y| over each of `segments` contiguous runs of `length` elements (a row, or a
// group of a row: the groups of a row-major matrix are contiguous), and from it the scale
// max(amax / qmax, min_scale), written to scales[segment]: a row reduction, then the two
// tiny ops on its result. NaN is ignored (fmaxf), as the library's amax ignores it.
// kWarps segments a block (a warp each) for runs up to 1024 elements, else one a block.
template <class T, int kWarps>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(const T* __restrict__ y, float* __restrict__ scales, long long segments, long long length, float qmax,
                 float min_scale) {
  constexpr int V = kVec<T>;
  constexpr int kLanes = kThreads / kWarps;
  const int sub = threadIdx.x / kLanes, lane = threadIdx.x % kLanes;
  const long long seg = static_cast<long long>(blockIdx.x) * kWarps + sub;
  float a = 0.0f;
  if (seg < segments) {
    const T* run = y + seg * length;
    if (length % V == 0) {  // every run starts 16-byte aligned
      for (long long v = lane; v < length / V; v += kLanes) {
        const Vec<T> c = reinterpret_cast<const Vec<T>*>(run)[v];
#pragma unroll
        for (int k = 0; k < V; ++k) a = fmaxf(a, fabsf(to_float(c.e[k])));
      }
    } else {
      for (long long j = lane; j < length; j += kLanes) a = fmaxf(a, fabsf(to_float(run[j])));
    }
  }
  for (int off = 16; off > 0; off /= 2) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
  if constexpr (kLanes > 32) {
    __shared__ float partial[kThreads / 32];
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = a;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 0; w < kThreads / 32; ++w) a = fmaxf(a, partial[w]);
      if (seg < segments) scales[seg] = fmaxf(__fdiv_rn(a, qmax), min_scale);
    }
  } else {
    if (lane == 0 && seg < segments) scales[seg] = fmaxf(__fdiv_rn(a, qmax), min_scale);
  }
}

// q = sat(y / s), s the scale of the element's run of `length` (scales[i / length]); a
// static scale is one run of n. The division is the correctly rounded one of `y / s`.
// Index is 32-bit when n allows: a 64-bit division per vector would cost more than its load.
template <class T, class Q, class Index>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const T* __restrict__ y, Q* __restrict__ q,
                                                            const float* __restrict__ scales, Index n, Index length) {
  constexpr int V = kVec<T>;
  const Index stride = static_cast<Index>(gridDim.x) * kThreads;
  const Index first = static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x;
  const Index vectors = n / V;
  for (Index v = first; v < vectors; v += stride) {
    const Vec<T> c = reinterpret_cast<const Vec<T>*>(y)[v];
    const Index base = v * V;
    Index g = base / length, next = (g + 1) * length;  // a vector may cross into later runs
    float s = scales[g];
    struct alignas(V) Codes {
      Q e[V];
    } out;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if (base + k == next) {
        ++g;
        next += length;
        s = scales[g];
      }
      out.e[k] = to_code<Q>(__fdiv_rn(to_float(c.e[k]), s));
    }
    reinterpret_cast<Codes*>(q)[v] = out;
  }
  for (Index i = vectors * V + first; i < n; i += stride)
    q[i] = to_code<Q>(__fdiv_rn(to_float(y[i]), scales[i / length]));
}

// The element type of x's dtype, for the kernels above.
template <class F>
void with_type(DType t, F&& f) {
  switch (t) {
    case DType::f32:
      return f(float{});
    case DType::f16:
      return f(__half{});
    case DType::bf16:
      return f(__nv_bfloat16{});
    default:
      throw Error(Code::invalid_argument, std::string("bench: dtype must be f32, f16 or bf16, got ") + dtype_name(t));
  }
}

void launch_add(DType t, const void* x, const void* r, void* out, long long n, cudaStream_t st) {
  with_type(t, [&](auto tag) {
    using T = decltype(tag);
    add_kernel<T><<<bench::grid_for(std::max(1LL, n / kVec<T>)), kThreads, 0, st>>>(
        static_cast<const T*>(x), static_cast<const T*>(r), static_cast<T*>(out), n);
  });
  bench::check_launch("add_kernel (r_out = x + r)");
}

void launch_scales(DType t, const void* y, float* scales, long long segments, long long length, DType qdtype,
                   cudaStream_t st) {
  const float qmax = quant_max(qdtype), min_scale = quant_min_scale(qdtype);
  with_type(t, [&](auto tag) {
    using T = decltype(tag);
    if (length <= 1024) {
      constexpr int kWarps = kThreads / 32;
      scale_kernel<T, kWarps><<<static_cast<unsigned>((segments + kWarps - 1) / kWarps), kThreads, 0, st>>>(
          static_cast<const T*>(y), scales, segments, length, qmax, min_scale);
    } else {
      scale_kernel<T, 1><<<static_cast<unsigned>(segments), kThreads, 0, st>>>(static_cast<const T*>(y), scales,
                                                                               segments, length, qmax, min_scale);
    }
  });
  bench::check_launch("scale_kernel (amax, / qmax, clamp)");
}

void launch_quantize(DType t, const void* y, void* q, DType qdtype, const float* scales, long long n, long long length,
                     cudaStream_t st) {
  with_type(t, [&](auto tag) {
    using T = decltype(tag);
    const unsigned grid = bench::grid_for(std::max(1LL, n / kVec<T>));
    const auto go = [&](auto code, auto index) {
      using Q = decltype(code);
      using Index = decltype(index);
      quantize_kernel<T, Q, Index><<<grid, kThreads, 0, st>>>(static_cast<const T*>(y), static_cast<Q*>(q), scales,
                                                              static_cast<Index>(n), static_cast<Index>(length));
    };
    // No index the kernel forms (an element, a run's end, one grid stride past the last
    // vector) may wrap.
    const bool narrow = 2 * n + static_cast<long long>(grid) * kThreads <= static_cast<long long>(UINT_MAX);
    if (qdtype == DType::f8e4m3)
      narrow ? go(__nv_fp8_storage_t{}, 0u) : go(__nv_fp8_storage_t{}, 0ull);
    else
      narrow ? go(static_cast<signed char>(0), 0u) : go(static_cast<signed char>(0), 0ull);
  });
  bench::check_launch("quantize_kernel (y / s, clamp, convert)");
}

std::vector<unsigned char> download(const void* p, std::size_t bytes) {
  std::vector<unsigned char> out(bytes);
  ck(cudaMemcpy(out.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy (to the host)");
  return out;
}

std::size_t round_up(std::size_t n) { return (n + 255) / 256 * 256; }

}  // namespace

ShapeResult bench_fused_shape_cuda(const BenchContext& ctx, const BenchShape& shape) {
  ShapeResult result;
  const bool add = ctx.op == "add";
  const DType t = ctx.dtype, qd = ctx.qdtype;
  const std::int64_t m = shape.rows, n = shape.cols;
  if (!add && ctx.quant == QuantScale::per_group && n % kBenchGroupSize != 0)
    throw Error(Code::unsupported, "group scales need N divisible by 128");
  // Columns a scale covers: a group, else the whole row (one static scale covers them all).
  const std::int64_t group = !add && ctx.quant == QuantScale::per_group ? kBenchGroupSize : n;
  const std::int64_t groups = n / group;
  const std::size_t s = dtype_size(t), row_bytes = static_cast<std::size_t>(n) * s;
  const std::size_t mn = static_cast<std::size_t>(m * n), buf = static_cast<std::size_t>(m) * row_bytes;
  const std::size_t pitch = round_up(buf);  // every buffer as aligned as a fresh cudaMalloc
  const double model = model_bytes(ctx, m, n);
  // A set is [inputs | outputs]: add [x | r | y | r_out], quant [x | q | scales]. The copy
  // ceiling reads half the model bytes from the inputs and writes them over the outputs.
  const std::size_t copy_bytes = static_cast<std::size_t>(model / 2);
  const std::size_t scale_bytes = add ? 0 : quant_scale_bytes(ctx.quant, m, n);
  const std::size_t in_bytes = add ? 2 * pitch : std::max(pitch, round_up(copy_bytes));
  const std::size_t out_bytes = add ? 2 * pitch : std::max(round_up(mn) + round_up(scale_bytes), round_up(copy_bytes));
  const std::size_t set_bytes = in_bytes + out_bytes;
  // Shared by all sets: the weight, the static scale, and the baseline's y (quant), which
  // eager PyTorch's caching allocator would hand out at the same address every call.
  const std::size_t y_scratch_bytes = add ? 0 : pitch;
  const std::size_t shared = row_bytes + 256 + y_scratch_bytes;

  const Device dev = ctx.device.device;
  cudaDeviceProp prop{};
  ck(cudaGetDeviceProperties(&prop, dev.index), "cudaGetDeviceProperties");
  std::size_t free_bytes = 0, total_bytes = 0;
  ck(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo");

  // Sets so that one pass over them moves >= 4x L2 by the fused call's bytes, within 80% of
  // free memory (less the shared buffers and 256 MiB of headroom) and the graph size.
  const std::size_t l2 = static_cast<std::size_t>(std::max(prop.l2CacheSize, 1));
  const std::size_t want = static_cast<std::size_t>(std::ceil(4.0 * static_cast<double>(l2) / model));
  const double usable =
      0.8 * static_cast<double>(free_bytes) - static_cast<double>(shared) - static_cast<double>(256u << 20);
  if (usable < static_cast<double>(set_bytes))
    throw Error(Code::unsupported,
                format("needs %.2f GiB of device memory, %.2f GiB free",
                       static_cast<double>(set_bytes + shared) / (1 << 30), free_bytes / double(1 << 30)));
  std::int64_t sets =
      static_cast<std::int64_t>(std::min<double>(static_cast<double>(want), usable / static_cast<double>(set_bytes)));
  sets = std::max<std::int64_t>(1, std::min(sets, kMaxGraphNodes));
  if (static_cast<std::size_t>(sets) < want)
    result.notes.push_back(
        format("%lld sets = %.0f MB working set (< 4x L2)", static_cast<long long>(sets), sets * model / 1e6));

  StreamOwner stream;
  DeviceMemory sets_mem(sets * set_bytes), w(row_bytes), static_scale(256), y_scratch(y_scratch_bytes);
  const auto in_of = [&](std::int64_t i) { return sets_mem.get() + static_cast<std::size_t>(i % sets) * set_bytes; };
  const auto out_of = [&](std::int64_t i) { return in_of(i) + in_bytes; };
  const auto x_of = [&](std::int64_t i) { return in_of(i); };
  const auto r_of = [&](std::int64_t i) { return in_of(i) + pitch; };       // add
  const auto y_of = [&](std::int64_t i) { return out_of(i); };              // add: y; quant: q
  const auto r_out_of = [&](std::int64_t i) { return out_of(i) + pitch; };  // add
  const auto scales_of = [&](std::int64_t i) { return reinterpret_cast<float*>(out_of(i) + round_up(mn)); };

  // Every set filled with random normals (x and r of each set distinct; the outputs are
  // overwritten), the weight 1 + 0.1 N(0, 1).
  bench::fill_normal_device(sets_mem.get(), t, static_cast<std::int64_t>(sets * set_bytes / s), ctx.seed, 0.0f, 1.0f,
                            stream.s);
  bench::fill_normal_device(w.get(), t, n, ctx.seed * 7919 + 0x5eed, 1.0f, 0.1f, stream.s);
  ck(cudaStreamSynchronize(stream.s), "filling the inputs");
  const std::vector<unsigned char> w_host = download(w.get(), row_bytes);
  const std::vector<unsigned char> x_rows = download_rows(x_of(0), m, row_bytes);
  const std::vector<unsigned char> r_rows = add ? download_rows(r_of(0), m, row_bytes) : std::vector<unsigned char>();
  const std::int64_t checked = static_cast<std::int64_t>(x_rows.size() / row_bytes);
  {
    // The static scale: max |x| (of the checked rows) / qmax; y is of x's size, so a few
    // values saturate, as they do with a calibrated scale.
    float amax = 1.0f;
    for (std::int64_t i = 0; i < checked * n; ++i)
      amax = std::max(amax, static_cast<float>(std::fabs(load_as_double(x_rows.data(), t, i))));
    const float sc = amax / quant_max(qd);
    ck(cudaMemcpy(static_scale.get(), &sc, sizeof sc, cudaMemcpyHostToDevice), "cudaMemcpy (static scale)");
  }

  const TensorView wv = TensorView::vector(w.get(), t, dev, n);
  const auto matrix = [&](void* p, DType d) { return TensorView::matrix(p, d, dev, m, n); };
  Params params;
  params.strategy = ctx.strategy;
  params.pdl = ctx.pdl;
  params.split_few_rows = ctx.split;
  // The baseline's forward is what a framework calls: the planner's strategy.
  Params plain = params;
  plain.strategy = Strategy::automatic;
  const auto quant_of = [&](std::int64_t i) {
    Quant q;
    q.kind = ctx.quant;
    q.group_size = kBenchGroupSize;
    q.division = ctx.division;
    if (ctx.quant == QuantScale::static_tensor)
      q.scales = TensorView::vector(static_scale.get(), DType::f32, dev, 1);
    else if (ctx.quant == QuantScale::per_row)
      q.scales = TensorView::vector(scales_of(i), DType::f32, dev, m);
    else
      q.scales = TensorView::matrix(scales_of(i), DType::f32, dev, m, groups);
    return q;
  };
  // The fused call through the public API, which refuses what the backend does not serve.
  const auto fused_api = [&](std::int64_t i, cudaStream_t st) {
    if (add)
      fused_add_forward(matrix(x_of(i), t), matrix(r_of(i), t), wv, matrix(y_of(i), t), matrix(r_out_of(i), t), params,
                        std::nullopt, st);
    else
      quant_forward(matrix(x_of(i), t), wv, matrix(y_of(i), qd), quant_of(i), params, std::nullopt, st);
  };
  // The validated problem, for the plan and for --config's dispatch with a given plan.
  const auto problem_of = [&](std::int64_t i) {
    const TensorView x = matrix(x_of(i), t), r = matrix(r_of(i), t), r_out = matrix(r_out_of(i), t);
    const Quant q = quant_of(i);
    return add ? detail::validate_fused_forward(x, &r, &r_out, wv, matrix(y_of(i), t), nullptr, params, std::nullopt)
               : detail::validate_fused_forward(x, nullptr, nullptr, wv, matrix(y_of(i), qd), &q, params, std::nullopt);
  };
  std::optional<Plan> forced;
  const Enqueue fused = [&](std::int64_t i, cudaStream_t st) {
    if (forced)
      detail::cuda_forward(problem_of(i), *forced, dev.index, st);
    else
      fused_api(i, st);
  };
  const Enqueue unfused = [&](std::int64_t i, cudaStream_t st) {
    if (add) {
      launch_add(t, x_of(i), r_of(i), r_out_of(i), static_cast<long long>(mn), st);
      forward(matrix(r_out_of(i), t), wv, matrix(y_of(i), t), plain, std::nullopt, st);
      return;
    }
    forward(matrix(x_of(i), t), wv, matrix(y_scratch.get(), t), plain, std::nullopt, st);
    const float* sc = reinterpret_cast<const float*>(static_scale.get());
    if (ctx.quant != QuantScale::static_tensor) {
      launch_scales(t, y_scratch.get(), scales_of(i), static_cast<long long>(m * groups), group, qd, st);
      sc = scales_of(i);
    }
    launch_quantize(t, y_scratch.get(), y_of(i), qd, sc, static_cast<long long>(mn),
                    ctx.quant == QuantScale::static_tensor ? static_cast<long long>(mn) : group, st);
  };
  const int unfused_ops = add || ctx.quant == QuantScale::static_tensor ? 2 : 3;
  const Enqueue copy = [&](std::int64_t i, cudaStream_t st) {
    ck(cudaMemcpyAsync(out_of(i), in_of(i), copy_bytes, cudaMemcpyDeviceToDevice, st), "cudaMemcpyAsync (copy)");
  };

  // The checked rows of set 0's outputs, downloaded after a call.
  struct Outputs {
    std::vector<unsigned char> y, r_out;  // add: y and r_out; quant: q in y
    std::vector<double> scales;           // quant: (checked rows, groups)
    AddOutputs add() const { return {y.data(), r_out.data()}; }
    QuantOutputs quant() const { return {y.data(), scales}; }
  };
  const auto outputs = [&] {
    Outputs o;
    if (add) {
      o.y = download_rows(y_of(0), m, row_bytes);
      o.r_out = download_rows(r_out_of(0), m, row_bytes);
      return o;
    }
    o.y = download_rows(y_of(0), m, static_cast<std::size_t>(n));
    if (ctx.quant == QuantScale::static_tensor) {
      float sc = 0;
      ck(cudaMemcpy(&sc, static_scale.get(), sizeof sc, cudaMemcpyDeviceToHost), "cudaMemcpy (static scale)");
      o.scales.assign(static_cast<std::size_t>(checked), sc);
    } else {
      const std::vector<unsigned char> raw =
          download_rows(reinterpret_cast<unsigned char*>(scales_of(0)), m, static_cast<std::size_t>(groups) * 4);
      for (std::size_t k = 0; k < raw.size() / 4; ++k) o.scales.push_back(load_as_double(raw.data(), DType::f32, k));
    }
    return o;
  };
  // Runs one call on set 0 with its outputs poisoned (NaN; 0xFF is NaN in fp8 too) and
  // returns them.
  const auto run_set0 = [&](const Enqueue& run, const char* impl) {
    ck(cudaMemsetAsync(out_of(0), 0xFF, out_bytes, stream.s), "cudaMemsetAsync");
    run(0, stream.s);
    ck(cudaStreamSynchronize(stream.s), impl);
    return outputs();
  };
  const auto fail = [&](const char* impl, const std::string& why) {
    result.failed = true;
    result.notes.push_back(std::string(impl) + " FAILED its check: " + why);
  };
  const auto against_oracle = [&](const Outputs& o, bool y_stored) {
    if (add) return check_add_rows(x_rows.data(), r_rows.data(), o.add(), w_host.data(), t, checked, n, params);
    return check_quant_rows(x_rows.data(), o.quant(), w_host.data(), t, qd, ctx.quant, group, checked, n, params,
                            y_stored, ctx.division);
  };
  const auto measure = [&](const char* impl, const Enqueue& run, int ops_per_call) {
    time_implementation(result, ctx, shape, impl, run, ops_per_call, sets, stream.s);
  };

  // The baseline first: the fused call is judged against its outputs as well as the oracle.
  std::optional<Outputs> base = run_set0(unfused, "unfused");
  if (const std::string bad = against_oracle(*base, true); !bad.empty()) {
    fail("unfused", bad);
    base.reset();
  }

  // The fused call: its plan (a forced strategy that cannot serve N is n/a, as for the plain
  // forward), then whether the backend serves it at all, then its outputs.
  std::string strategy;
  try {
    const detail::ForwardProblem p = problem_of(0);
    const int cc = detail::cuda_cc_major(dev.index);
    if (ctx.config_threads) {
      const Plan automatic = detail::plan_problem(p, Strategy::automatic, cc);
      const bool cluster = ctx.strategy == Strategy::cluster_row;
      // The quantised store's block rows have a table of their own, the residual add its cluster
      // rows (kernel_configs.h).
      forced = detail::with_cluster_row_configs(
          p.residual != nullptr, p.r_dtype == p.x_dtype, p.quantize, [&](const auto& table) {
            return forced_config(automatic, ctx.config_threads, ctx.config_items, n, detail::kWarpRowsConfigs,
                                 detail::block_row_configs(p.quantize), table, cluster, cc,
                                 detail::forward_cluster_pieces(p.quantize), ctx.max_cluster);
          });
      forced->cluster_grid = ctx.cluster_grid;
      strategy = forced_name(*forced);
    } else {
      strategy = strategy_name(detail::plan_problem(p, ctx.strategy, cc).strategy);
    }
  } catch (const Error& e) {
    if (e.code() != Code::unsupported) throw;
    result.notes.push_back(std::string("fused n/a: ") + e.what());
  }
  bool fused_ok = false;
  if (!strategy.empty()) {
    try {
      // Through the API even with --config: dispatching a plan directly would skip its refusal.
      run_set0(fused_api, "fused");
    } catch (const Error& e) {
      if (e.code() != Code::unsupported) throw;
      result.fused_not_served = true;
      result.notes.push_back(std::string("fused not served: ") + e.what());
    }
    // A forced plan the device cannot launch (a non-portable cluster size without room for
    // one: Code::unsupported from the launcher) is n/a, as one that cannot hold the row.
    std::optional<Outputs> forced_out;
    if (!result.fused_not_served) {
      try {
        forced_out = run_set0(fused, "fused");
      } catch (const Error& e) {
        if (e.code() != Code::unsupported) throw;
        result.notes.push_back(std::string("fused n/a: ") + e.what());
      }
    }
    if (forced_out) {
      const Outputs& got = *forced_out;
      std::string bad = against_oracle(got, false);
      if (bad.empty() && base)
        bad = add ? compare_add_outputs(got.add(), base->add(), t, checked, n)
                  : compare_quant_outputs(got.quant(), base->quant(), t, qd, group, checked, n);
      if (bad.empty())
        fused_ok = true;
      else
        fail("fused", bad);
    }
  }

  // The copy: its two ends (a wrong size or offset shows there).
  bool copy_ok = false;
  {
    ck(cudaMemsetAsync(out_of(0), 0xFF, out_bytes, stream.s), "cudaMemsetAsync");
    copy(0, stream.s);
    ck(cudaStreamSynchronize(stream.s), "copy");
    const std::size_t edge = std::min<std::size_t>(copy_bytes, 1 << 20);
    copy_ok = download(out_of(0), edge) == download(in_of(0), edge) &&
              download(out_of(0) + copy_bytes - edge, edge) == download(in_of(0) + copy_bytes - edge, edge);
    if (!copy_ok) fail("copy", "output differs from the input");
  }

  if (fused_ok) {
    const std::size_t first = result.records.size();
    measure("fused", fused, 1);
    for (std::size_t i = first; i < result.records.size(); ++i) result.records[i].strategy = strategy;
  }
  if (base) measure("unfused", unfused, unfused_ops);
  if (copy_ok) measure("copy", copy, 1);
  return result;
}

}  // namespace rmsnorm::cli
