// `rmsnorm check`: the correctness sweep against the fp64 oracle.
#pragma once

#include "device.h"
#include "options.h"

namespace rmsnorm::cli {

// Prints the report to stdout; returns the exit status (0 passed, 1 failed).
int run_check(const CheckOptions& options, const RunDevice& device);

}  // namespace rmsnorm::cli
