// Benchmark records and their machine-readable forms: JSON, CSV and an SVG line chart.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rmsnorm::cli {

// One measured figure: an implementation on a shape, timed one way.
struct Record {
  std::string op = "forward";  // backward, add, quant
  std::string dtype;
  std::int64_t rows = 0, cols = 0;
  std::string impl;  // fused, unfused, copy
  // graph (CUDA graph, back-to-back), stream (back-to-back stream calls: the copy, when
  // faster than its graph), plain (one call + sync, host clock), loop (CPU)
  std::string mode;
  std::string suite;       // seed, qk, wide, decode, train, custom
  std::string strategy;    // fused: the strategy that ran (CUDA plan, or "cpu"); else empty
  double gbps = 0;         // bytes / time
  double us = 0;           // per call, median over reps
  double bytes = 0;        // model bytes per call (bench.h: model_bytes)
  std::int64_t sets = 0;   // distinct x/y buffer sets rotated over
  std::int64_t calls = 0;  // calls per timed sample (graph replay or loop)
  int reps = 0;            // timed samples; the median is reported
  std::string device, commit, date;
};

struct ReportInfo {
  std::string device, date, commit, op, dtype;
  bool cpu_figures = false;
};

// Each throws std::runtime_error naming the file when it cannot be written.
void write_json(const std::string& path, const ReportInfo& info, const std::vector<Record>& records);
void write_csv(const std::string& path, const std::vector<Record>& records);
// GB/s (y) against N (x; log2 scale when the N values span more than 8x), one polyline per
// implementation (and per suite when several are plotted); latency (decode) records are
// left out.
void write_svg(const std::string& path, const ReportInfo& info, const std::vector<Record>& records);

}  // namespace rmsnorm::cli
