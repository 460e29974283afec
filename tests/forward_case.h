// One forward test case, run on a backend and judged against the fp64 oracle: the shared
// machinery of test_forward.cpp (and of the CUDA-only tests' value checks).
//
// A case builds poisoned host tensors with the requested layout (strides, a leading offset
// that misaligns the base pointer, guard space around every span), fills x and the weight
// with normal samples (never zero), computes the oracle before the call (x may be
// overwritten in place), runs the backend (the CUDA backend on device copies with the same
// layout and alignment), and checks y and rstd against the table's tolerances, that no
// byte outside y's and rstd's elements changed, and that x did not change (unless in place).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "harness.h"
#include "oracle.h"
#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::testing {

enum class Backend { cpu, cuda };
const char* backend_name(Backend b);

// The dtypes of one call: x, the weight (none: no weight) and y.
struct Combo {
  DType x;
  std::optional<DType> w;
  DType y;
  std::string name() const;  // "bf16_f32_f32", "f16_none_f16"
};
// Every combination the contract allows on the backend (f64 only on the CPU).
std::vector<Combo> allowed_combos(Backend b);

inline void PrintTo(Backend b, std::ostream* os) { *os << backend_name(b); }
inline void PrintTo(const Combo& c, std::ostream* os) { *os << c.name(); }

struct Case {
  Combo combo{DType::f32, DType::f32, DType::f32};
  Cast cast = Cast::fp32;
  double offset = 0.0;
  bool rstd = true;
  std::int64_t batch = 1, rows = 1, cols = 1;
  std::int64_t batch_stride = -1, row_stride = -1;  // -1: contiguous
  std::int64_t x_lead = 0, y_lead = 0, w_lead = 0;  // elements before the first one
  std::int64_t trail = 3;                           // poisoned elements after the span
  bool in_place = false;
  double eps = 1e-6;
  double scale = 1.0;  // x ~ N(0, scale^2)
  Strategy strategy = Strategy::automatic;
  std::string describe() const;
};

struct Outcome {
  bool ran = false;      // forward returned normally
  bool refused = false;  // forward threw rmsnorm::Error
  Code code = Code::ok;
  std::string message;
  bool plan_refused = false;         // (CUDA, forced strategy) plan_forward said unsupported
  reference::HostTensor x, y, rstd;  // after the call (y is x's buffer when in place)
  reference::ForwardResult ref;
  reference::Comparison y_cmp, rstd_cmp;
  std::int64_t y_stray = 0, rstd_stray = 0;
  bool x_unchanged = true;
  bool buffers_untouched = true;  // (refused calls) y and rstd still all poison
};

// Builds, runs and compares; no assertions.
Outcome run_case(Backend b, const Case& c);

// run_case plus the expectations: values within tolerance, no stray writes, x intact; or,
// for a forced CUDA strategy that plan_forward and forward both refuse, Code::unsupported
// with nothing written. Returns false, after reporting, when the case failed.
bool check_case(Backend b, const Case& c);
bool check_outcome(Backend b, const Case& c, const Outcome& o);

// A sweep of many cases stops reporting after this many failing ones.
constexpr int kMaxFailingCases = 8;

class Sweep {
 public:
  explicit Sweep(Backend b) : backend_(b) {}
  ~Sweep();
  // False once enough cases failed: the caller's loop should stop.
  bool run(const Case& c);
  // The same for a case the caller ran itself (to look at the outcome too).
  bool judge(const Case& c, const Outcome& o);
  int cases() const { return cases_; }

 private:
  Backend backend_;
  int cases_ = 0;
  int failed_ = 0;
};

}  // namespace rmsnorm::testing
