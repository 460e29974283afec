// The benchmark driver: which shapes, in which tables, and the files asked for. The timing
// itself is in the bench_*_cpu.cpp and bench_*cuda.cu files.
#include "bench.h"

#include <cmath>
#include <fstream>
#include <iostream>

#include "build_info.h"
#include "table.h"

namespace rmsnorm::cli {
namespace {

std::vector<BenchShape> suite_shapes(const std::string& suite) {
  std::vector<BenchShape> out;
  const auto add = [&](std::int64_t m, std::int64_t n) { out.push_back({suite, m, n, suite == "decode"}); };
  if (suite == "seed") {
    for (std::int64_t n = 1024; n <= 8192; n += 1024) add(4096, n);
  } else if (suite == "qk") {
    add(262144, 64);
    add(262144, 128);
  } else if (suite == "wide") {
    for (std::int64_t n : {4096, 8192, 16384, 24576, 32768}) add(16384, n);
    add(4096, 65536);
    add(2048, 131072);
    add(1024, 262144);
    add(1024, 524288);
    add(1024, 1048576);
  } else if (suite == "decode") {  // M of 1, 8, 32 and 128 tokens at 4096 and 8192 columns
    add(1, 4096);
    add(32, 8192);
    add(1, 8192);
    add(8, 4096);
    add(8, 8192);
    add(32, 4096);
    add(128, 4096);
    add(128, 8192);
  } else if (suite == "train") {  // training shapes (tokens x hidden), the backward's targets
    for (std::int64_t n : {2048, 4096, 8192, 16384}) add(16384, n);
    add(8192, 32768);
    add(4096, 65536);
    add(2048, 131072);  // the widest rows the backward's cluster rows hold (16-bit)
    add(1024, 262144);  // past them: the backward targets reach 262144 columns
    add(262144, 128);
  }
  return out;
}

std::vector<std::vector<BenchShape>> tables_for(const BenchOptions& o) {
  std::vector<std::vector<BenchShape>> tables;
  if (o.rows || !o.cols.empty()) {
    std::vector<BenchShape> t;
    const std::vector<std::int64_t> cols =
        o.cols.empty() ? std::vector<std::int64_t>{1024, 2048, 3072, 4096, 5120, 6144, 7168, 8192} : o.cols;
    for (std::int64_t n : cols) t.push_back({"custom", o.rows.value_or(4096), n, false});
    tables.push_back(t);
    return tables;
  }
  const std::string fallback = o.op == "backward" ? "train" : "seed";
  for (const std::string& s : o.suites.empty() ? std::vector<std::string>{fallback} : o.suites)
    tables.push_back(suite_shapes(s));
  return tables;
}

const Record* find(const std::vector<Record>& rs, const char* impl, const char* mode = nullptr) {
  for (const Record& r : rs)
    if (r.impl == impl && (!mode || r.mode == mode)) return &r;
  return nullptr;
}

// Three to four significant figures without exponents: 1.23, 45.6, 789.1, 12345.
// `missing`: what a cell without a record says.
std::string num(const Record* r, bool gbps, const char* missing = "n/a") {
  if (!r) return missing;
  const double v = gbps ? r->gbps : r->us;
  if (!std::isfinite(v)) return "n/a";
  return format(v < 10 ? "%.2f" : v < 10000 ? "%.1f" : "%.0f", v);
}

}  // namespace

int run_bench(const BenchOptions& o, const RunDevice& dev) {
  BenchContext ctx;
  ctx.device = dev;
  ctx.op = o.op;
  ctx.quant = o.quant;
  ctx.qdtype = o.qdtype;
  ctx.division = o.division;
  ctx.dtype = o.dtype;
  ctx.strategy = o.strategy;
  ctx.config_threads = o.config_threads;
  ctx.config_items = o.config_items;
  ctx.cluster_grid = o.cluster_grid;
  ctx.shared_slices = o.shared_slices;
  ctx.max_cluster = o.max_cluster;
  ctx.pdl = o.pdl;
  ctx.split = o.split;
  ctx.leave_out_dw = o.leave_out_dw;
  ctx.leave_out_rstd = o.leave_out_rstd;
  ctx.reps = o.reps ? o.reps : (dev.is_cuda() ? 50 : 3);
  ctx.seed = o.seed;
  ctx.commit = git_commit();
  ctx.date = utc_timestamp();
  // A typo in a path must not cost a whole benchmark run: try the files first.
  for (const auto& [option, path] : {std::pair<const char*, const std::string*>{"--json", &o.json_path},
                                     {"--csv", &o.csv_path},
                                     {"--plot", &o.plot_path}})
    if (!path->empty() && !std::ofstream(*path, std::ios::app))
      throw UsageError(std::string(option) + ": cannot write '" + *path + "'");
#if !defined(RMSNORM_CLI_HAVE_CUDA)
  if (dev.is_cuda()) throw Error(Code::unsupported, "bench: this tool was built without CUDA");
#endif

  const bool bwd = o.op == "backward", add = o.op == "add", quant = o.op == "quant";
  const std::string model = bwd ? "3*M*N*s" : add ? "4*M*N*s" : quant ? "M*N*s+M*N+scales" : "2*M*N*s";
  std::cout << "rmsnorm bench | " << dev.name << (dev.is_cuda() ? " (CUDA)" : " (CPU figures)") << " | op " << o.op;
  if (quant) std::cout << " " << quant_scale_name(o.quant) << " " << dtype_name(o.qdtype);
  if (quant && o.division != QuantDivision::exact) std::cout << " " << quant_division_name(o.division);
  std::cout << " | dtype " << dtype_name(o.dtype) << " | model bytes "
            << (bwd     ? "3*M*N*s (read x + read dy + write dx; weight, dw and rstd ignored)"
                : add   ? "4*M*N*s (read x + read r + write y + write r_out; weight ignored)"
                : quant ? "M*N*s + M*N + scales (read x + write q + write the fp32 scales; weight ignored)"
                        : "2*M*N*s (read x + write y; weight ignored)")
            << " | " << ctx.date << " | commit " << ctx.commit << '\n';
  // The unfused baselines differ by device: on the CPU eager PyTorch's whole op-by-op
  // formula; on CUDA rmsnorm's plain forward with the fused step as separate kernels
  // (bench_fused_cuda.cu), so that the speedup is the fusion's alone.
  if (add)
    std::cout << "add: fused = rmsnorm::fused_add_forward (residual of x's dtype, y and r_out written); unfused = "
              << (dev.is_cuda() ? "an elementwise `r_out = x + r` kernel, then rmsnorm::forward of r_out"
                                : "eager `r = x + r`, then the unfused norm (bench/unfused_fusions.h)")
              << '\n';
  if (quant)
    std::cout << "quant: fused = rmsnorm::quant_forward (" << quant_scale_name(o.quant)
              << (o.quant == QuantScale::per_group ? " scales, groups of 128" : " scales") << "); unfused = "
              << (dev.is_cuda()
                      ? std::string("rmsnorm::forward to y of x's dtype, then ") +
                            (o.quant == QuantScale::static_tensor
                                 ? "a y / s + convert kernel"
                                 : "an amax kernel (s = max(amax / qmax, min)) and a y / s + convert kernel")
                      : std::string("the unfused norm, then eager quantisation ops (bench/unfused_fusions.h)"))
              << '\n';
  if (dev.is_cuda() && (add || quant))
    std::cout << "fused checked against the fp64 oracle and against the unfused baseline ("
              << (add ? "r_out bit for bit, y within twice the forward's tolerance"
                      : "codes within one quantisation step")
              << "); a fused form the CUDA backend does not serve yet reads \"not served\"\n";
  if (bwd)
    std::cout
        << "backward: fused = rmsnorm::backward, weight and dw of x's dtype, rstd saved by a forward run, workspace\n"
           "allocated once; unfused = eager autograd's ops (bench/unfused_backward.h) on the tensors its forward "
           "saved\n";
  const std::string sets = bwd ? "x/dy/dx" : add ? "x/r/y/r_out" : quant ? "x/q/scales" : "x/y";
  const std::string copy =
      bwd     ? "of 1.5*M*N*s bytes (x and half of dy read, the rest of dy and dx written: 3*M*N*s moved)"
      : add   ? "of 2*M*N*s bytes (x and r read, y and r_out written: 4*M*N*s moved)"
      : quant ? "of half the model bytes (read + write: the model bytes moved)"
              : "of the M*N*s-byte x (read + write: 2*M*N*s moved)";
  if (dev.is_cuda())
    std::cout << "protocol: checked against the fp64 oracle first; median of " << ctx.reps
              << " CUDA-graph replays timed with CUDA events, each replaying back-to-back calls over " << sets
              << "\nbuffer sets rotated so the working set is >= 4x L2; us = per call; copy = cudaMemcpyAsync "
                 "device-to-device\n"
              << copy << " (the faster of a graph and a plain stream loop)\n";
  else
    std::cout << "CPU FIGURES (std::chrono on the host, the CPU backend; not GPU numbers): checked against the fp64\n"
                 "oracle first; median of "
              << ctx.reps << " passes over " << sets
              << " buffer sets rotated so a pass moves >= 4x the last-level cache\n(at most 256 MB); us = per call; "
                 "copy = memcpy "
              << copy << '\n';
  if (o.config_threads)
    std::cout << "fused configuration forced: " << o.config_threads << " threads a row x " << o.config_items
              << " vectors a lane" << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.cluster_grid)
    std::cout << "cluster grid forced: "
              << (o.cluster_grid == kClusterPerRow ? std::string("a cluster a row")
                                                   : std::to_string(o.cluster_grid) + " x the resident clusters")
              << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.shared_slices)
    std::cout << "slices forced into shared memory" << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.max_cluster != 8)
    std::cout << "clusters of up to " << o.max_cluster << " blocks (non-portable)"
              << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.leave_out_dw || o.leave_out_rstd)
    std::cout << "the fused backward leaves out "
              << (o.leave_out_dw && o.leave_out_rstd ? "dw (dx alone) and the saved rstd (recomputed from x)"
                  : o.leave_out_dw                   ? "dw (dx alone)"
                                                     : "the saved rstd (recomputed from x)")
              << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (!o.pdl)
    std::cout << "fused kernels launched without programmatic dependent launch (--no-pdl)"
              << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.split != SplitFewRows::automatic)
    std::cout << (o.split == SplitFewRows::on ? "few rows split over clusters (--split)"
                                              : "few rows never split over clusters (--no-split)")
              << (dev.is_cuda() ? "" : " (ignored: CUDA only)") << '\n';
  if (o.strategy != Strategy::automatic)
    std::cout << "fused strategy forced: " << strategy_name(o.strategy)
              << (dev.is_cuda() ? "" : " (ignored by the CPU backend)") << '\n';

  std::vector<Record> all;
  bool failed = false;
  for (const std::vector<BenchShape>& shapes : tables_for(o)) {
    if (shapes.empty()) continue;
    const bool latency = shapes.front().latency;
    std::cout << '\n'
              << "suite " << shapes.front().suite
              << (latency ? ": latency, microseconds per call (graph: back-to-back in a CUDA graph; plain: "
                            "one call + stream sync, host clock)\n"
                          : ": throughput, GB/s = " + model + " / time per call\n");
    std::vector<TextTable::Column> cols = {{"M", 7}, {"N", 7}};
    if (latency) {
      for (const char* impl : {"fused", "unfused", "copy"}) {
        if (dev.is_cuda()) cols.push_back({std::string(impl) + " graph us", 8});
        cols.push_back({std::string(impl) + " plain us", 8});
      }
    } else {
      cols.insert(cols.end(), {{"fused GB/s", 8},
                               {"unfused GB/s", 8},
                               {"copy GB/s", 8},
                               {"speedup", 7},
                               {"% of copy", 7},
                               {"fused us", 8}});
    }
    cols.push_back({"notes", 0, true});  // the strategy that ran (CUDA), problems
    TextTable table(std::cout, cols);
    table.print_header();
    for (const BenchShape& shape : shapes) {
      ShapeResult r;
      try {
#if defined(RMSNORM_CLI_HAVE_CUDA)
        if (dev.is_cuda())
          r = bwd              ? bench_backward_shape_cuda(ctx, shape)
              : (add || quant) ? bench_fused_shape_cuda(ctx, shape)
                               : bench_shape_cuda(ctx, shape);
        else
#endif
          r = bwd              ? bench_backward_shape_cpu(ctx, shape)
              : (add || quant) ? bench_fused_shape_cpu(ctx, shape)
                               : bench_shape_cpu(ctx, shape);
      } catch (const std::exception& e) {
        r.failed = true;
        r.notes.push_back(e.what());
      }
      failed = failed || r.failed;
      std::vector<std::string> cells = {std::to_string(shape.rows), std::to_string(shape.cols)};
      const Record* fused = find(r.records, "fused");
      const auto missing = [&](const std::string& impl) {
        return impl == "fused" && r.fused_not_served ? "not served" : "n/a";
      };
      if (latency) {
        for (const char* impl : {"fused", "unfused", "copy"}) {
          if (dev.is_cuda()) cells.push_back(num(find(r.records, impl, "graph"), false, missing(impl)));
          cells.push_back(num(find(r.records, impl, "plain"), false, missing(impl)));
        }
      } else {
        const Record* unfused = find(r.records, "unfused");
        const Record* copy = find(r.records, "copy");
        cells.push_back(num(fused, true, missing("fused")));
        cells.push_back(num(unfused, true));
        cells.push_back(num(copy, true));
        cells.push_back(fused && unfused ? format("%.2fx", fused->gbps / unfused->gbps) : "n/a");
        cells.push_back(fused && copy ? format("%.1f%%", 100.0 * fused->gbps / copy->gbps) : "n/a");
        cells.push_back(num(fused, false, missing("fused")));
      }
      std::string note = fused && dev.is_cuda() ? fused->strategy : "";
      for (const std::string& n : r.notes) note += (note.empty() ? "" : "; ") + n;
      cells.push_back(note);
      table.print_row(cells);
      all.insert(all.end(), r.records.begin(), r.records.end());
    }
  }

  const std::string op_name =
      quant ? o.op + " " + quant_scale_name(o.quant) + " " + dtype_name(o.qdtype) +
                  (o.division != QuantDivision::exact ? std::string(" ") + quant_division_name(o.division) : "")
            : o.op;  // "quant row f8e4m3", "quant static f8e4m3 reciprocal"
  ReportInfo info{dev.name, ctx.date, ctx.commit, op_name, dtype_name(o.dtype), !dev.is_cuda()};
  if (!o.json_path.empty()) write_json(o.json_path, info, all);
  if (!o.csv_path.empty()) write_csv(o.csv_path, all);
  if (!o.plot_path.empty()) write_svg(o.plot_path, info, all);
  for (const std::string* p : {&o.json_path, &o.csv_path, &o.plot_path})
    if (!p->empty()) std::cout << "wrote " << *p << '\n';
  if (failed) std::cout << "\nSome implementation failed its check or could not run (see the notes): exit status 1\n";
  return failed ? 1 : 0;
}

}  // namespace rmsnorm::cli
