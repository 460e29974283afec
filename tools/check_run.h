// Running one case of `rmsnorm check`: host buffers poisoned byte by byte (with a guard
// past the end), views placed inside them, their twins on the run device, and the runners
// (forward: check.cpp, backward: check_backward.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "check_cases.h"
#include "device.h"
#include "harness.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

// Poison bytes past the end of every buffer: a write one element beyond the view lands
// here and is counted as a stray write.
constexpr std::size_t kGuardBytes = 64;

struct HostBuffer {
  std::vector<unsigned char> bytes;  // poisoned (0xFF) except where the view's elements are filled
  TensorView view;                   // points into bytes
};

// A poisoned (batch, rows, cols) buffer of dtype t laid out as `p` says.
HostBuffer make_buffer(DType t, std::int64_t batch, std::int64_t rows, std::int64_t cols, const Placement& p);
// A poisoned contiguous vector of n elements.
HostBuffer make_vector(DType t, std::int64_t n);

// A host buffer's twin on the run device, with the view re-pointed at it.
struct Mirror {
  DeviceBuffer memory;
  TensorView view;
};
// Copies every byte (poison included) to the device.
Mirror mirror(const HostBuffer& h, const RunDevice& dev);
// Copies every byte back into h.
void download(const Mirror& m, HostBuffer& h);

struct CaseResult {
  bool skipped = false;  // a forced strategy that cannot serve the case
  bool failed = false;
  reference::Comparison cmp;  // every output compared, merged (worst_ratio: of the tolerance)
  std::string problem;        // why it failed
};

// Steps the case runners share (check_run.cpp).
// Marks r failed, keeping the first reason.
void fail_with(CaseResult& r, const std::string& why);
// rstd against the oracle's under rstd_tolerance, merged into r.cmp (a failure marked);
// returns the bytes written outside its view.
std::int64_t check_rstd(CaseResult& r, const HostBuffer& rstd, DType rstd_type, const std::vector<double>& want,
                        DType x, std::int64_t cols);

// Each case's inputs depend only on `seed`.
CaseResult run_forward_case(const CheckCase& c, const RunDevice& dev, std::uint64_t seed);
CaseResult run_backward_case(const BackwardCheckCase& c, const RunDevice& dev, std::uint64_t seed);
CaseResult run_sharded_case(const ShardedCheckCase& c, const RunDevice& dev, std::uint64_t seed);
CaseResult run_allreduce_case(const AllReduceCheckCase& c, const RunDevice& dev, std::uint64_t seed);
// The fused cases (check_fused.cpp); run_forward_case / run_backward_case hand them over.
CaseResult run_fused_forward_case(const CheckCase& c, const RunDevice& dev, std::uint64_t seed);
CaseResult run_fused_backward_case(const BackwardCheckCase& c, const RunDevice& dev, std::uint64_t seed);

}  // namespace rmsnorm::cli
