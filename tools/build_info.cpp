// The only file compiled with RMSNORM_GIT_COMMIT, so a new commit rebuilds one object.
#include "build_info.h"

#include <ctime>

#ifndef RMSNORM_GIT_COMMIT
#define RMSNORM_GIT_COMMIT "unknown"
#endif

namespace rmsnorm::cli {

const char* git_commit() { return RMSNORM_GIT_COMMIT; }

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace rmsnorm::cli
