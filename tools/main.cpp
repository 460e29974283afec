// rmsnorm: the command-line front door. `check` runs the correctness sweep, `bench` the
// benchmarks; both say first which device they run on.
//
// Exit status: 0 success, 1 a failed check or a runtime error, 2 a bad command line.
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "bench.h"
#include "build_info.h"
#include "check.h"
#include "device.h"
#include "options.h"

namespace {

int run(const std::vector<std::string>& args) {
  using namespace rmsnorm::cli;
  if (args.empty()) {
    std::cerr << main_help();
    return 2;
  }
  const std::string& command = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "-h" || command == "--help" || command == "help") {
    if (rest.empty())
      std::cout << main_help();
    else if (rest[0] == "check")
      std::cout << check_help();
    else if (rest[0] == "bench")
      std::cout << bench_help();
    else
      throw UsageError("help: unknown command '" + rest[0] + "' (commands: check, bench)");
    return 0;
  }
  if (command == "--version") {
    std::cout << "rmsnorm " << rmsnorm::version() << " (commit " << git_commit() << ", "
              << (rmsnorm::built_with_cuda() ? "with" : "without") << " CUDA)\n";
    return 0;
  }
  if (command == "check") {
    const CheckOptions o = parse_check_options(rest);
    if (o.help) {
      std::cout << check_help();
      return 0;
    }
    const RunDevice dev = select_device(o.device);
    std::cout << dev.line << '\n';
    return run_check(o, dev);
  }
  if (command == "bench") {
    const BenchOptions o = parse_bench_options(rest);
    if (o.help) {
      std::cout << bench_help();
      return 0;
    }
    const RunDevice dev = select_device(o.device);
    std::cout << dev.line << '\n';
    return run_bench(o, dev);
  }
  throw UsageError("unknown command '" + command + "' (commands: check, bench; see 'rmsnorm --help')");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const rmsnorm::cli::UsageError& e) {
    std::cerr << "rmsnorm: " << e.what() << '\n';
    return 2;
  } catch (const rmsnorm::Error& e) {
    std::cout.flush();
    std::cerr << "rmsnorm: error (" << rmsnorm::code_name(e.code()) << "): " << e.what() << '\n';
    return 1;
  } catch (const std::exception& e) {
    std::cout.flush();
    std::cerr << "rmsnorm: error: " << e.what() << '\n';
    return 1;
  }
}
