// CUDA timing shared by the forward (bench_cuda.cu) and backward (bench_backward_cuda.cu)
// benchmarks, following docs/performance.md: owners of CUDA objects, back-to-back calls
// captured in one CUDA graph and replayed (CUDA events, median), the same calls issued to a
// stream (for the copy), and plain calls timed with the host clock (decode latency).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench.h"

namespace rmsnorm::cli {

inline void ck(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw Error(Code::cuda_error, std::string(what) + ": " + cudaGetErrorString(e));
}

// Owners of CUDA objects, so that an exception mid-shape leaks nothing.
struct DeviceMemory {
  void* p = nullptr;
  explicit DeviceMemory(std::size_t bytes) { ck(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc"); }
  ~DeviceMemory() { cudaFree(p); }
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  unsigned char* get() const { return static_cast<unsigned char*>(p); }
};
struct StreamOwner {
  cudaStream_t s = nullptr;
  StreamOwner() { ck(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~StreamOwner() { cudaStreamDestroy(s); }
};
struct EventOwner {
  cudaEvent_t e = nullptr;
  EventOwner() { ck(cudaEventCreate(&e), "cudaEventCreate"); }
  ~EventOwner() { cudaEventDestroy(e); }
};
struct GraphOwner {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ~GraphOwner() {
    if (exec) cudaGraphExecDestroy(exec);
    if (graph) cudaGraphDestroy(graph);
  }
};

// A graph holds at most this many calls' nodes: enough to rotate over 4x L2 for every
// shape but the 1-row decode ones, small enough to instantiate in well under a second.
constexpr std::int64_t kMaxGraphNodes = 16384;
// At least this many calls per replay, so a replay of big calls still averages over a few.
constexpr std::int64_t kMinGraphCalls = 10;

using Enqueue = std::function<void(std::int64_t set, cudaStream_t)>;

// Median over `reps` runs of `run` (which enqueues `calls` calls on `stream`) of the time
// per call in us, from CUDA events recorded around it.
template <class Run>
double median_per_call(const Run& run, std::int64_t calls, int reps, cudaStream_t stream) {
  EventOwner start, stop;
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    ck(cudaEventRecord(start.e, stream), "cudaEventRecord");
    run();
    ck(cudaEventRecord(stop.e, stream), "cudaEventRecord");
    ck(cudaEventSynchronize(stop.e), "cudaEventSynchronize");
    float ms = 0;
    ck(cudaEventElapsedTime(&ms, start.e, stop.e), "cudaEventElapsedTime");
    us.push_back(1000.0 * ms / static_cast<double>(calls));
  }
  return median(us);
}

// Median time per call (us) of `calls` back-to-back calls, rotating over sets, in a graph.
inline double time_in_graph(const Enqueue& enqueue, std::int64_t calls, int reps, cudaStream_t stream) {
  GraphOwner g;
  // Relaxed capture: the library may query pointer attributes (check_pointers) while we
  // capture; that host-side query is legal work that records nothing into the graph.
  ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  try {
    for (std::int64_t k = 0; k < calls; ++k) enqueue(k, stream);
  } catch (...) {
    cudaGraph_t dropped = nullptr;
    cudaStreamEndCapture(stream, &dropped);
    if (dropped) cudaGraphDestroy(dropped);
    throw;
  }
  ck(cudaStreamEndCapture(stream, &g.graph), "cudaStreamEndCapture");
  ck(cudaGraphInstantiate(&g.exec, g.graph, 0), "cudaGraphInstantiate");
  for (int i = 0; i < 3; ++i) ck(cudaGraphLaunch(g.exec, stream), "cudaGraphLaunch (warm-up)");
  ck(cudaStreamSynchronize(stream), "warm-up");
  return median_per_call([&] { ck(cudaGraphLaunch(g.exec, stream), "cudaGraphLaunch"); }, calls, reps, stream);
}

// Median time per call (us) of `calls` back-to-back stream-ordered calls, timed with
// events around the loop. Used for the copy only (see measure_copy).
inline double time_in_stream(const Enqueue& enqueue, std::int64_t calls, int reps, cudaStream_t stream) {
  const auto loop = [&] {
    for (std::int64_t k = 0; k < calls; ++k) enqueue(k, stream);
  };
  loop();  // warm-up
  return median_per_call(loop, calls, reps, stream);
}

// Median host-clock time (us) of one plain call followed by a stream synchronisation:
// the latency a caller without graphs sees (launch + run + sync).
inline double time_plain(const Enqueue& enqueue, std::int64_t sets, int reps, cudaStream_t stream) {
  for (std::int64_t k = 0; k < 100; ++k) {
    enqueue(k % sets, stream);
    ck(cudaStreamSynchronize(stream), "warm-up");
  }
  std::vector<double> us;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    enqueue(r % sets, stream);
    ck(cudaStreamSynchronize(stream), "cudaStreamSynchronize (plain call)");
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  return median(us);
}

// Copies the checked rows of a device matrix into one contiguous host array.
inline std::vector<unsigned char> download_rows(const unsigned char* m, std::int64_t rows, std::size_t row_bytes) {
  std::vector<unsigned char> out;
  for (auto [b, e] : rows_to_check(rows)) {
    const std::size_t at = out.size(), bytes = static_cast<std::size_t>(e - b) * row_bytes;
    out.resize(at + bytes);
    ck(cudaMemcpy(out.data() + at, m + static_cast<std::size_t>(b) * row_bytes, bytes, cudaMemcpyDeviceToHost),
       "cudaMemcpy (checked rows)");
  }
  return out;
}

// Times one implementation of a shape and appends its records: back-to-back calls in a
// graph (as many as rotate over every set, within kMaxGraphNodes / ops_per_call nodes);
// for the copy, the same calls issued to a stream too, the faster counting (it is the
// speed-of-light column: on the H100 a graph's memcpy node of >= 512 MB ran at 2.43 TB/s
// where the same cudaMemcpyAsync issued to a stream ran at 2.97-3.01 TB/s; smaller copies
// do better in the graph); for latency shapes, plain calls with a sync each as well.
inline void time_implementation(ShapeResult& result, const BenchContext& ctx, const BenchShape& shape,
                                const std::string& impl, const Enqueue& run, int ops_per_call, std::int64_t sets,
                                cudaStream_t stream) {
  const std::int64_t calls =
      std::min(std::max(sets, kMinGraphCalls), std::max<std::int64_t>(1, kMaxGraphNodes / ops_per_call));
  const double graph_us = time_in_graph(run, calls, ctx.reps, stream);
  result.records.push_back(make_record(ctx, shape, impl, "graph", graph_us, std::min(sets, calls), calls, ctx.reps));
  if (impl == "copy" && !shape.latency) {
    const double stream_us = time_in_stream(run, calls, ctx.reps, stream);
    if (stream_us < graph_us)
      result.records.back() =
          make_record(ctx, shape, impl, "stream", stream_us, std::min(sets, calls), calls, ctx.reps);
  }
  if (shape.latency) {
    const int reps = std::max(4 * ctx.reps, 200);
    result.records.push_back(
        make_record(ctx, shape, impl, "plain", time_plain(run, sets, reps, stream), sets, 1, reps));
  }
}

}  // namespace rmsnorm::cli
