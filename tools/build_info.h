// Where a report's figures came from: the commit the tool was built from and the time.
#pragma once

#include <string>

namespace rmsnorm::cli {

// `git rev-parse --short HEAD` when CMake configured the build ("unknown" outside a git
// checkout). Re-run CMake after committing to refresh it.
const char* git_commit();

// The current UTC time, e.g. "2026-11-25T14:03:07Z".
std::string utc_timestamp();

}  // namespace rmsnorm::cli
