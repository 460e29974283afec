// The vector row loops, written once over an instruction set's block operations `Ops` (a
// block is 16 floats: simd_avx2.h, simd_avx512.h). Included by kernels_avx2.cpp and
// kernels_avx512.cpp inside their target region and namespace, after Ops; hence no include
// guard, and nothing here may be defined outside that namespace.
//
// Bit-identical to the portable loops (forward.cpp, backward.cpp), by construction:
// - sums: lane k of the accumulator block adds the terms of elements 16 i + k, the partial
//   block at the end of the row adds zeros in its unused lanes (x + 0 == x for every lane
//   value a sum can hold: a lane starts at +0 and so is never -0), and the 16 lanes are
//   combined by the portable code's combine_lanes: cpu::lane_sum's order;
// - elementwise steps: the same operations on the same operands in the same order, each
//   rounded (no FMA: -ffp-contract=off), and dtype.h's conversions (see Ops);
// - results: a NaN is stored as the canonical NaN (numeric.h's canonical_nan), as there.
// The blocks of an elementwise pass may start anywhere (its order does not matter); the
// blocks of a sum start at the row's first element.

using Block = Ops::Block;

// The total of an accumulator block, in lane_sum's order.
inline float total(Block acc) {
  alignas(64) float lanes[kLanes];
  Ops::lanes(lanes, acc);
  return combine_lanes(lanes);
}

// Calls full(j) for the blocks of 16 elements and part(j, count) for the partial ones that
// cover [0, n): first elements [0, head) if head > 0, then blocks, then the rest.
template <class Full, class Part>
inline void for_blocks(std::int64_t n, std::int64_t head, Full full, Part part) {
  std::int64_t j = head < n ? head : n;
  if (j > 0) part(std::int64_t{0}, static_cast<int>(j));
  for (; j + kLanes <= n; j += kLanes) full(j);
  if (j < n) part(j, static_cast<int>(n - j));
}

// How many elements of a row to write before `y` is aligned to a block's bytes (fewer than
// 16), so that the blocks after them may be stored with non-temporal stores; -1 when y's
// elements are not naturally aligned (then no block of them is).
template <class T>
inline std::int64_t stream_head(const T* y) {
  constexpr std::uintptr_t kBlockBytes = kLanes * sizeof(T);
  const auto address = reinterpret_cast<std::uintptr_t>(y);
  if (address % sizeof(T) != 0) return -1;
  return static_cast<std::int64_t>((kBlockBytes - address % kBlockBytes) % kBlockBytes / sizeof(T));
}

// Asks for the cache line holding `at` ahead of its use. The loops below fetch the next
// row's inputs while the current row's last pass runs from the caches: the first pass over
// a row otherwise waits on memory with nothing else in flight, as the hardware prefetchers
// stop at each 4 KB page and restart late (a 4096-element 16-bit row spans two). Results
// do not depend on it.
//
// Where to: a next row of at most kL1PrefetchBytes of inputs (x, and dy for the backward)
// comes into L1 beside the current one; a longer one into L2 only, where it no longer evicts
// from L1 the current row that the last pass is reading (AMD EPYC, 32 KB L1d; one thread,
// runs alternating, 2026-12-02: f32 4096 x 8192 forward 16.2 -> 19.1 GB/s median, bf16
// 4096 x 4096 backward 12.1 -> 13.8, f16 4096 x 8192 backward 11.9 -> 15.0; but bf16 rows of
// 1024 elements moved 15.7-16.4 GB/s with the L1 hint and 12.7-16.8 without).
inline constexpr std::int64_t kL1PrefetchBytes = 4096;
inline void prefetch(const void* at, bool to_l1) {
  if (to_l1)
    _mm_prefetch(static_cast<const char*>(at), _MM_HINT_T0);
  else
    _mm_prefetch(static_cast<const char*>(at), _MM_HINT_T1);
}

// prefetch for the block of elements [j, j + 16) of `row`, once per 64-byte line: a block of
// 16-bit elements is half a line, so those rows ask at every other block (j steps by 16).
template <class T>
inline void prefetch_block(const T* row, std::int64_t j, bool to_l1) {
  if (sizeof(T) * kLanes >= 64 || (j & kLanes) == 0) prefetch(row + j, to_l1);
}

template <class TX>
inline float sum_squares(const TX* x, std::int64_t n) {
  Block acc = Ops::zero();
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    const Block v = Ops::load(x + j);
    acc = Ops::add(acc, Ops::mul(v, v));
  }
  if (j < n) {
    const Block v = Ops::load_part(x + j, static_cast<int>(n - j));  // zeros beyond: 0 * 0 adds +0
    acc = Ops::add(acc, Ops::mul(v, v));
  }
  return total(acc);
}

// ---------------------------------------------------------------------------------------
// The weight as the loops use it: to_acc(w) + offset in f32, for Cast::llama rounded to the
// weight's dtype. Rows of up to kWeightBuffer elements read it from a buffer on the stack,
// filled once per call by the same operations: a 16-bit weight then costs an f32 load a
// block instead of a conversion and an add in every row. Longer rows compute it per block.
// ---------------------------------------------------------------------------------------

constexpr std::int64_t kWeightBuffer = 8192;  // 32 KB of each thread's stack

template <class TW, bool ROUND>
struct ComputedWeight {
  const TW* w;
  Block offset;
  Block value(Block v) const {
    if constexpr (ROUND) return Ops::template round_as<TW>(Ops::add(v, offset));
    return Ops::add(v, offset);
  }
  Block full(std::int64_t j) const { return value(Ops::load(w + j)); }
  Block part(std::int64_t j, int count) const { return value(Ops::load_part(w + j, count)); }
};

struct BufferedWeight {
  const float* w;
  Block full(std::int64_t j) const { return Ops::load(w + j); }
  Block part(std::int64_t j, int count) const { return Ops::load_part(w + j, count); }
};

struct NoWeight {
  Block full(std::int64_t) const { return Ops::zero(); }
  Block part(std::int64_t, int) const { return Ops::zero(); }
};

// Calls f(weight) with the weight's source: none, buffered, or computed per block.
template <class TW, bool ROUND, class F>
inline void with_weight(const TW* w, float offset, std::int64_t n, F f) {
  if (w == nullptr) return f(NoWeight{});
  const ComputedWeight<TW, ROUND> computed{w, Ops::splat(offset)};
  if (n > kWeightBuffer) return f(computed);
  alignas(64) float buffer[kWeightBuffer];
  for_blocks(
      n, 0, [&](std::int64_t j) { Ops::store(buffer + j, computed.full(j)); },
      [&](std::int64_t j, int count) { Ops::store_part(buffer + j, computed.part(j, count), count); });
  f(BufferedWeight{buffer});
}

// ---------------------------------------------------------------------------------------
// Forward: ScalarForward's steps (forward.cpp) on blocks
// ---------------------------------------------------------------------------------------

template <class TX, class TW, class TY, bool LLAMA, bool HAS_W>
struct Forward {
  static constexpr bool supported = !std::is_same_v<TX, double>;

  // w: the weight as with_weight gives it (offset added; rounded for the llama cast).
  static Block scaled(Block x, Block w, Block rstd) {
    if constexpr (!LLAMA) {
      Block v = Ops::mul(x, rstd);
      if constexpr (HAS_W) v = Ops::mul(v, w);
      return v;
    } else {
      Block v = Ops::template round_as<TX>(Ops::mul(x, rstd));
      if constexpr (HAS_W) v = Ops::template round_as<Promoted<TX, TW>>(Ops::mul(v, w));
      return v;
    }
  }

  static void run(const ForwardProblem& p, std::int64_t begin, std::int64_t end, bool stream) {
    const TW* w = HAS_W ? static_cast<const TW*>(p.weight) : nullptr;
    with_weight<TW, LLAMA>(w, static_cast<float>(p.weight_offset), p.cols,
                           [&](const auto& weight) { rows(p, begin, end, stream, weight); });
  }

  template <class Weight>
  static void rows(const ForwardProblem& p, std::int64_t begin, std::int64_t end, bool stream, const Weight& weight) {
    const std::int64_t n = p.cols;
    const float inv_n = static_cast<float>(1.0 / static_cast<double>(n));
    const float eps = static_cast<float>(p.eps);
    bool streamed = false;
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      TY* y = static_cast<TY*>(p.y) + b * p.y_batch_stride + r * p.y_row_stride;
      const float rstd = rstd_of(sum_squares(x, n), inv_n, eps);
      if (p.rstd) static_cast<float*>(p.rstd)[row] = rstd;
      // The next row's x, fetched during this row's stores (see prefetch).
      const std::int64_t next = row + 1 < end ? row + 1 : row;
      const TX* next_x =
          static_cast<const TX*>(p.x) + next / p.rows * p.x_batch_stride + next % p.rows * p.x_row_stride;
      const bool to_l1 = n * static_cast<std::int64_t>(sizeof(TX)) <= kL1PrefetchBytes;
      const Block rs = Ops::splat(rstd);
      // y may be x: each block is read before it is written.
      const auto part = [&](std::int64_t j, int count) {
        const Block v = scaled(Ops::load_part(x + j, count), weight.part(j, count), rs);
        Ops::store_part(y + j, Ops::canonical(v), count);
      };
      const std::int64_t head = stream ? stream_head(y) : -1;
      if (head >= 0) {
        for_blocks(
            n, head,
            [&](std::int64_t j) {
              prefetch_block(next_x, j, to_l1);
              Ops::stream(y + j, Ops::canonical(scaled(Ops::load(x + j), weight.full(j), rs)));
            },
            part);
        streamed = true;
      } else {
        for_blocks(
            n, 0,
            [&](std::int64_t j) {
              prefetch_block(next_x, j, to_l1);
              Ops::store(y + j, Ops::canonical(scaled(Ops::load(x + j), weight.full(j), rs)));
            },
            part);
      }
    }
    // Non-temporal stores are weakly ordered: make them visible before the call returns.
    if (streamed) Ops::fence();
  }
};

// ---------------------------------------------------------------------------------------
// Backward: ScalarBackward's steps (backward.cpp) on blocks
// ---------------------------------------------------------------------------------------

template <class TX, class TW, bool HAS_W, bool WANT_DW>
struct Backward {
  static constexpr bool supported = !std::is_same_v<TX, double>;

  static void run(const BackwardProblem& p, std::int64_t begin, std::int64_t end, void* partial, bool stream) {
    const TW* w = HAS_W ? static_cast<const TW*>(p.weight) : nullptr;
    with_weight<TW, false>(w, static_cast<float>(p.weight_offset), p.cols,
                           [&](const auto& weight) { rows(p, begin, end, partial, stream, weight); });
  }

  template <class Weight>
  static void rows(const BackwardProblem& p, std::int64_t begin, std::int64_t end, void* partial, bool stream,
                   const Weight& weight) {
    const std::int64_t n = p.cols;
    const float inv_n = static_cast<float>(1.0 / static_cast<double>(n));
    const float eps = static_cast<float>(p.eps);
    const float* rstd_in = static_cast<const float*>(p.rstd);
    float* acc = static_cast<float*>(partial);
    bool streamed = false;
    for (std::int64_t row = begin; row < end; ++row) {
      const std::int64_t b = row / p.rows, r = row % p.rows;
      const TX* x = static_cast<const TX*>(p.x) + b * p.x_batch_stride + r * p.x_row_stride;
      const TX* dy = static_cast<const TX*>(p.dy) + b * p.dy_batch_stride + r * p.dy_row_stride;
      TX* dx = static_cast<TX*>(p.dx) + b * p.dx_batch_stride + r * p.dx_row_stride;
      const float rstd = rstd_in ? rstd_in[row] : rstd_of(sum_squares(x, n), inv_n, eps);
      // The next row's inputs, fetched during this row's dx pass (this row's again at the end:
      // lines already in the caches).
      const std::int64_t next = row + 1 < end ? row + 1 : row, nb = next / p.rows, nr = next % p.rows;
      const TX* next_x = static_cast<const TX*>(p.x) + nb * p.x_batch_stride + nr * p.x_row_stride;
      const TX* next_dy = static_cast<const TX*>(p.dy) + nb * p.dy_batch_stride + nr * p.dy_row_stride;
      const bool to_l1 = 2 * n * static_cast<std::int64_t>(sizeof(TX)) <= kL1PrefetchBytes;

      // gx = sum(dy * (w + offset) * x), in lane_sum's order.
      Block gx = Ops::zero();
      std::int64_t j = 0;
      for (; j + kLanes <= n; j += kLanes)
        gx = Ops::add(gx, g_times_x(Ops::load(dy + j), weight.full(j), Ops::load(x + j)));
      if (j < n) {
        const int count = static_cast<int>(n - j);
        // Zero the unused lanes' terms: (0 + offset) * 0 * 0 need not be 0 for every offset.
        const Block term =
            g_times_x(Ops::load_part(dy + j, count), weight.part(j, count), Ops::load_part(x + j, count));
        gx = Ops::add(gx, Ops::first(term, count));
      }
      const float coef = dx_coef(rstd, total(gx), inv_n);

      const Block rs = Ops::splat(rstd), cs = Ops::splat(coef);
      // dx may be dy: each block is read before it is written.
      const auto dx_of = [&](Block xv, Block dyv, Block wv) {
        const Block g = HAS_W ? Ops::mul(Ops::mul(rs, dyv), wv) : Ops::mul(rs, dyv);
        return Ops::canonical(Ops::sub(g, Ops::mul(cs, xv)));
      };
      const auto part = [&](std::int64_t j, int count) {
        const Block xv = Ops::load_part(x + j, count), dyv = Ops::load_part(dy + j, count);
        if constexpr (WANT_DW)
          Ops::store_part(acc + j, Ops::add(Ops::load_part(acc + j, count), Ops::mul(Ops::mul(dyv, xv), rs)), count);
        Ops::store_part(dx + j, dx_of(xv, dyv, weight.part(j, count)), count);
      };
      const auto full = [&](std::int64_t j, auto store) {
        prefetch_block(next_x, j, to_l1);
        prefetch_block(next_dy, j, to_l1);
        const Block xv = Ops::load(x + j), dyv = Ops::load(dy + j);
        if constexpr (WANT_DW) Ops::store(acc + j, Ops::add(Ops::load(acc + j), Ops::mul(Ops::mul(dyv, xv), rs)));
        store(dx + j, dx_of(xv, dyv, weight.full(j)));
      };
      const std::int64_t head = stream ? stream_head(dx) : -1;
      if (head >= 0) {
        for_blocks(
            n, head, [&](std::int64_t j) { full(j, [](TX* at, Block v) { Ops::stream(at, v); }); }, part);
        streamed = true;
      } else {
        for_blocks(
            n, 0, [&](std::int64_t j) { full(j, [](TX* at, Block v) { Ops::store(at, v); }); }, part);
      }
    }
    if (streamed) Ops::fence();
  }

  // dy * (w + offset) * x, or dy * x without a weight (ScalarBackward's dy * 1 * x).
  static Block g_times_x(Block dyv, Block wv, Block xv) {
    if constexpr (HAS_W) return Ops::mul(Ops::mul(dyv, wv), xv);
    return Ops::mul(dyv, xv);
  }
};
