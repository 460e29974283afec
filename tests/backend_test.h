// Tests run once per backend (CPU, CUDA): the CUDA run skips, with the reason, where this
// build or machine has no usable device.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "forward_case.h"
#include "support.h"

namespace rmsnorm::testing {

// Skips the running test on CUDA without a usable device. GTEST_SKIP returns from this
// function only: from SetUp the test body does not run; elsewhere the caller returns when
// IsSkipped().
inline void skip_without_backend(Backend b) {
  if (b != Backend::cuda) return;
  const std::string reason = cuda_unavailable_reason();
  if (!reason.empty()) GTEST_SKIP() << "no CUDA device: " << reason;
}

// The fixture of a test parameterised by backend alone.
class BackendTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { skip_without_backend(GetParam()); }
  Backend backend() const { return GetParam(); }
  // The dtypes of x the backend serves: f32, f16 and bf16, and f64 on the CPU only.
  std::vector<DType> dtypes() const {
    std::vector<DType> d = {DType::f32, DType::f16, DType::bf16};
    if (backend() == Backend::cpu) d.push_back(DType::f64);
    return d;
  }
};

}  // namespace rmsnorm::testing
