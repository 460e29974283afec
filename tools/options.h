// Command-line options of `rmsnorm check` and `rmsnorm bench`, their parsing and their
// --help texts (kept next to the parser so that the two cannot drift apart).
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "rmsnorm/rmsnorm.h"

namespace rmsnorm::cli {

// A bad command line. The message names the option; main prints it and exits with 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// --device: auto (CUDA when there is one, else the CPU), cpu, or cuda[:ordinal].
struct DeviceChoice {
  enum class Kind { automatic, cpu, cuda } kind = Kind::automatic;
  int ordinal = 0;
};

struct CheckOptions {
  DeviceChoice device;
  std::string op = "all";  // forward, backward, add, quant or all
  bool quick = false;
  std::uint64_t seed = 1;
  bool help = false;
};

struct BenchOptions {
  DeviceChoice device;
  std::string op = "forward";                     // forward, backward, add (residual add) or quant (8-bit output)
  QuantScale quant = QuantScale::per_row;         // --quant static|row|group (op quant)
  DType qdtype = DType::f8e4m3;                   // --qdtype fp8|int8 (op quant)
  QuantDivision division = QuantDivision::exact;  // --division exact|reciprocal (op quant)
  DType dtype = DType::f16;
  std::optional<std::int64_t> rows;  // with cols: a custom table instead of a suite
  std::vector<std::int64_t> cols;
  std::vector<std::string> suites;  // empty: the op's default (forward: seed, backward: train)
                                    // unless --rows/--cols are given
  Strategy strategy = Strategy::automatic;
  // --config TxI: a register configuration of the op's tables (threads a row x vectors a lane),
  // forced past the planner to time configurations against each other (0: the planner's).
  int config_threads = 0, config_items = 0;
  // --grid K|rows: the forced cluster configuration's grid (Plan::cluster_grid: K times the
  // resident clusters, or kClusterPerRow), to time grids against each other (0: the launcher's).
  int cluster_grid = 0;
  // --slices shared|registers: where the forced cluster configuration's blocks hold their
  // slices (Plan::shared_slices), forward only (default registers, as a forced plan has it).
  bool shared_slices = false;
  // --max-cluster N: the forced cluster configuration's rows take up to N blocks a cluster
  // (8, portable; 16, non-portable, sm_90) before pieces.
  int max_cluster = 8;
  bool pdl = true;  // --no-pdl: Params::pdl off
  // --split / --no-split: Params::split_few_rows on / off (default: the library's automatic).
  SplitFewRows split = SplitFewRows::automatic;
  // --leave-out dw,rstd (backward, CUDA): the fused call without dw (dx alone) and/or without
  // the saved rstd (recomputed from x), to time what each part of the backward costs.
  bool leave_out_dw = false, leave_out_rstd = false;
  int reps = 0;  // 0: the device's default (50 on CUDA, 3 on the CPU)
  std::string json_path, csv_path, plot_path;
  std::uint64_t seed = 1;
  bool help = false;
};

// Both throw UsageError on a bad option or value.
CheckOptions parse_check_options(const std::vector<std::string>& args);
BenchOptions parse_bench_options(const std::vector<std::string>& args);

// Every forced strategy the library knows (not `automatic`), in enum order; read from
// rmsnorm::strategy_name so that a strategy added to the library shows up here.
std::vector<Strategy> forced_strategies();
// "warp_rows, block_row, long_row or cluster_row"
std::string strategy_list(const char* last_joiner = " or ");

std::string main_help();
std::string check_help();
std::string bench_help();

}  // namespace rmsnorm::cli
