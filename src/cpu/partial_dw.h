// dw from the per-chunk partial rows that the CPU backward loops leave in the workspace
// (backward.cpp, sharded.cpp): each column's chunks added in chunk order, so dw is
// bit-identical whatever the thread count.
#pragma once

#include <cstdint>

#include "cpu/numeric.h"
#include "problem.h"

namespace rmsnorm::detail::cpu {

template <class Acc, class TDW>
void finish_dw(const BackwardProblem& p, const Acc* partial, std::int64_t chunks) {
  const std::int64_t n = p.cols;
  TDW* dw = static_cast<TDW*>(p.dw);
#pragma omp parallel for schedule(static) if (chunks * n > 65536)
  for (std::int64_t j = 0; j < n; ++j) {
    Acc s = 0;
    for (std::int64_t c = 0; c < chunks; ++c) s += partial[c * n + j];
    dw[j] = from_acc<TDW>(canonical_nan(s));
  }
}

}  // namespace rmsnorm::detail::cpu
