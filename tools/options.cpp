#include "options.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

namespace rmsnorm::cli {
namespace {

// Walks argv, accepting "--name value" and "--name=value".
class ArgReader {
 public:
  ArgReader(const std::vector<std::string>& args, const char* command) : args_(args), command_(command) {}

  bool next() {
    if (i_ >= args_.size()) return false;
    const std::string& a = args_[i_++];
    inline_value_.reset();
    const auto eq = a.find('=');
    if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
      name_ = a.substr(0, eq);
      inline_value_ = a.substr(eq + 1);
    } else {
      name_ = a;
    }
    return true;
  }
  const std::string& name() const { return name_; }

  std::string value() {
    if (inline_value_) return *inline_value_;
    if (i_ >= args_.size()) throw UsageError(name_ + ": missing value");
    return args_[i_++];
  }
  // For flags: "--quick=1" is as wrong as an unknown option.
  void no_value() {
    if (inline_value_) throw UsageError(name_ + ": takes no value");
  }
  [[noreturn]] void unknown() const {
    if (name_.rfind("-", 0) == 0)
      throw UsageError("unknown option '" + name_ + "' (see 'rmsnorm " + command_ + " --help')");
    throw UsageError("unexpected argument '" + name_ + "' (see 'rmsnorm " + command_ + " --help')");
  }

 private:
  const std::vector<std::string>& args_;
  const char* command_;
  std::size_t i_ = 0;
  std::string name_;
  std::optional<std::string> inline_value_;
};

std::int64_t parse_positive(const std::string& option, const std::string& text,
                            std::int64_t max = std::numeric_limits<std::int64_t>::max()) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v <= 0 || v > max)
    throw UsageError(option + ": expected a positive integer" +
                     (max < std::numeric_limits<std::int64_t>::max() ? " <= " + std::to_string(max) : "") + ", got '" +
                     text + "'");
  return v;
}

std::uint64_t parse_seed(const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || *end != '\0' || errno == ERANGE)
    throw UsageError("--seed: expected a non-negative integer, got '" + text + "'");
  return v;
}

std::vector<std::string> split_commas(const std::string& option, const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const auto comma = text.find(',', start);
    out.push_back(text.substr(start, comma - start));
    if (out.back().empty()) throw UsageError(option + ": empty item in '" + text + "'");
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

DeviceChoice parse_device(const std::string& text) {
  DeviceChoice d;
  if (text == "auto") return d;
  if (text == "cpu") {
    d.kind = DeviceChoice::Kind::cpu;
    return d;
  }
  if (text == "cuda" || text.rfind("cuda:", 0) == 0) {
    d.kind = DeviceChoice::Kind::cuda;
    if (text.size() > 5) {
      const std::string n = text.substr(5);
      if (n.find_first_not_of("0123456789") != std::string::npos || n.size() > 4)
        throw UsageError("--device: expected cuda:N with N a device ordinal, got '" + text + "'");
      d.ordinal = std::atoi(n.c_str());
    }
    return d;
  }
  throw UsageError("--device: expected auto, cpu, cuda or cuda:N, got '" + text + "'");
}

std::string with_strategies(std::string text) {
  const std::string key = "@STRATEGIES@";
  for (auto at = text.find(key); at != std::string::npos; at = text.find(key))
    text.replace(at, key.size(), strategy_list());
  return text;
}

}  // namespace

std::vector<Strategy> forced_strategies() {
  std::vector<Strategy> out;
  for (int i = 1; i < 64; ++i) {
    const Strategy s = static_cast<Strategy>(i);
    if (std::string(strategy_name(s)) == "unknown") break;
    out.push_back(s);
  }
  return out;
}

std::string strategy_list(const char* last_joiner) {
  const std::vector<Strategy> all = forced_strategies();
  std::string out;
  for (std::size_t i = 0; i < all.size(); ++i)
    out += std::string(i == 0 ? "" : i + 1 == all.size() ? last_joiner : ", ") + strategy_name(all[i]);
  return out;
}

CheckOptions parse_check_options(const std::vector<std::string>& args) {
  CheckOptions o;
  ArgReader r(args, "check");
  while (r.next()) {
    const std::string& n = r.name();
    if (n == "-h" || n == "--help") {
      r.no_value();
      o.help = true;
    } else if (n == "--quick") {
      r.no_value();
      o.quick = true;
    } else if (n == "--device") {
      o.device = parse_device(r.value());
    } else if (n == "--op") {
      o.op = r.value();
      if (o.op != "forward" && o.op != "backward" && o.op != "add" && o.op != "quant" && o.op != "all")
        throw UsageError("--op: expected forward, backward, add, quant or all, got '" + o.op + "'");
    } else if (n == "--seed") {
      o.seed = parse_seed(r.value());
    } else {
      r.unknown();
    }
  }
  return o;
}

BenchOptions parse_bench_options(const std::vector<std::string>& args) {
  BenchOptions o;
  bool slices_given = false;
  ArgReader r(args, "bench");
  while (r.next()) {
    const std::string& n = r.name();
    if (n == "-h" || n == "--help") {
      r.no_value();
      o.help = true;
    } else if (n == "--device") {
      o.device = parse_device(r.value());
    } else if (n == "--op") {
      o.op = r.value();
      if (o.op != "forward" && o.op != "backward" && o.op != "add" && o.op != "quant")
        throw UsageError("--op: expected forward, backward, add or quant, got '" + o.op + "'");
    } else if (n == "--quant") {
      const std::string v = r.value();
      if (v != "static" && v != "row" && v != "group")
        throw UsageError("--quant: expected static, row or group, got '" + v + "'");
      o.quant = parse_quant_scale(v);
    } else if (n == "--division") {
      const std::string v = r.value();
      if (v != "exact" && v != "reciprocal")
        throw UsageError("--division: expected exact or reciprocal, got '" + v + "'");
      o.division = parse_quant_division(v);
    } else if (n == "--qdtype") {
      const std::string v = r.value();
      if (v == "fp8" || v == "f8e4m3")
        o.qdtype = DType::f8e4m3;
      else if (v == "int8" || v == "i8")
        o.qdtype = DType::i8;
      else
        throw UsageError("--qdtype: expected fp8 or int8, got '" + v + "'");
    } else if (n == "--dtype") {
      const std::string v = r.value();
      try {
        o.dtype = parse_dtype(v, "--dtype");
      } catch (const Error&) {
        throw UsageError("--dtype: expected f16, bf16 or f32, got '" + v + "'");
      }
      if (o.dtype == DType::f64) throw UsageError("--dtype: expected f16, bf16 or f32, got '" + v + "'");
    } else if (n == "--rows") {
      o.rows = parse_positive(n, r.value(), std::int64_t(1) << 31);
    } else if (n == "--cols") {
      o.cols.clear();
      for (const std::string& c : split_commas(n, r.value()))
        o.cols.push_back(parse_positive(n, c, std::int64_t(1) << 31));
    } else if (n == "--suite") {
      o.suites = split_commas(n, r.value());  // checked against --op below
    } else if (n == "--strategy") {
      const std::string v = r.value();
      try {
        o.strategy = parse_strategy(v);
      } catch (const Error&) {
        throw UsageError("--strategy: expected auto, " + strategy_list() + ", got '" + v + "'");
      }
    } else if (n == "--config") {
      const std::string v = r.value();
      const std::size_t x = v.find('x');
      if (x == std::string::npos)
        throw UsageError("--config: expected THREADSxITEMS (threads a row x vectors a lane, e.g. 256x4), got '" + v +
                         "'");
      o.config_threads = static_cast<int>(parse_positive(n, v.substr(0, x), 1024));
      o.config_items = static_cast<int>(parse_positive(n, v.substr(x + 1), 64));
    } else if (n == "--leave-out") {
      for (const std::string& part : split_commas(n, r.value())) {
        if (part == "dw")
          o.leave_out_dw = true;
        else if (part == "rstd")
          o.leave_out_rstd = true;
        else
          throw UsageError("--leave-out: expected dw, rstd or both (dw,rstd), got '" + part + "'");
      }
    } else if (n == "--max-cluster") {
      const std::string v = r.value();
      if (v != "8" && v != "16") throw UsageError("--max-cluster: expected 8 or 16, got '" + v + "'");
      o.max_cluster = v == "8" ? 8 : 16;
    } else if (n == "--grid") {
      const std::string v = r.value();
      o.cluster_grid = v == "rows" ? kClusterPerRow : static_cast<int>(parse_positive(n, v, 16));
    } else if (n == "--slices") {
      const std::string v = r.value();
      if (v != "shared" && v != "registers")
        throw UsageError("--slices: expected shared or registers, got '" + v + "'");
      o.shared_slices = v == "shared";
      slices_given = true;
    } else if (n == "--no-pdl") {
      o.pdl = false;
    } else if (n == "--split") {
      o.split = SplitFewRows::on;
    } else if (n == "--no-split") {
      o.split = SplitFewRows::off;
    } else if (n == "--reps") {
      o.reps = static_cast<int>(parse_positive(n, r.value(), 100000));
    } else if (n == "--seed") {
      o.seed = parse_seed(r.value());
    } else if (n == "--json") {
      o.json_path = r.value();
    } else if (n == "--csv") {
      o.csv_path = r.value();
    } else if (n == "--plot") {
      o.plot_path = r.value();
    } else {
      r.unknown();
    }
  }
  if (o.op != "quant" && (std::find(args.begin(), args.end(), "--quant") != args.end() ||
                          std::find(args.begin(), args.end(), "--qdtype") != args.end() ||
                          std::find(args.begin(), args.end(), "--division") != args.end()))
    throw UsageError("--quant, --qdtype and --division describe --op quant");
  if ((o.leave_out_dw || o.leave_out_rstd) && o.op != "backward")
    throw UsageError("--leave-out names parts of the backward: it needs --op backward");
  if (o.max_cluster != 8 && (o.strategy != Strategy::cluster_row || !o.config_threads || o.op == "backward"))
    throw UsageError(
        "--max-cluster sizes the forward's forced cluster rows: it needs --strategy cluster_row and "
        "--config TxI, and an op other than backward");
  if (slices_given && (o.strategy != Strategy::cluster_row || !o.config_threads || o.op != "forward"))
    throw UsageError(
        "--slices places the forward's forced cluster rows: it needs --strategy cluster_row, --config TxI "
        "and --op forward");
  if (o.cluster_grid && (o.strategy != Strategy::cluster_row || !o.config_threads || o.op == "backward"))
    throw UsageError(
        "--grid times the forward's cluster rows: it needs --strategy cluster_row and --config TxI, "
        "and an op other than backward");
  if (!o.suites.empty() && (o.rows || !o.cols.empty()))
    throw UsageError("--rows/--cols give a custom table and cannot be combined with --suite");
  // The suites of each op; "all" is every one of them, in this order.
  const std::vector<std::string> known = o.op == "backward" ? std::vector<std::string>{"train", "seed"}
                                         : o.op == "forward"
                                             ? std::vector<std::string>{"seed", "qk", "wide", "decode", "train"}
                                             : std::vector<std::string>{"seed", "wide", "decode", "train"};
  const std::vector<std::string> all = o.op == "backward"  ? known
                                       : o.op == "forward" ? std::vector<std::string>{"seed", "qk", "wide", "decode"}
                                                           : std::vector<std::string>{"seed", "wide", "decode"};
  std::vector<std::string> suites;
  for (const std::string& s : o.suites) {
    if (s == "all") {
      for (const std::string& a : all)
        if (std::find(suites.begin(), suites.end(), a) == suites.end()) suites.push_back(a);
      continue;
    }
    if (std::find(known.begin(), known.end(), s) == known.end()) {
      std::string list;
      for (const std::string& k : known) list += k + ", ";
      throw UsageError("--suite: expected " + list + "or all for --op " + o.op + ", got '" + s + "'");
    }
    if (std::find(suites.begin(), suites.end(), s) == suites.end()) suites.push_back(s);
  }
  o.suites = suites;
  return o;
}

std::string main_help() {
  return R"HELP(usage: rmsnorm <command> [options]

Fused RMSNorm: a correctness check against the fp64 oracle and benchmarks, on a CUDA GPU
when there is one, on the CPU otherwise. Every command says first which device it runs on.

commands:
  check      correctness sweep of forward, backward and the fused forms (residual add,
             the ranks' sum before it, 8-bit outputs) against the fp64 oracle (rmsnorm
             check --help)
  bench      throughput and latency tables, forward, backward or a fused form: fused vs
             unfused vs copy (rmsnorm bench --help)

options:
  -h, --help   this text
  --version    the library version and the commit this tool was built from

exit status: 0 success; 1 a check failed (or a benchmark's oracle check, or a runtime
error); 2 a bad command line.
)HELP";
}

std::string check_help() {
  return with_strategies(
      R"HELP(usage: rmsnorm check [--device D] [--op forward|backward|add|quant|all] [--quick] [--seed S]

Runs rmsnorm::forward and rmsnorm::backward over a sweep of cases and compares every
output element with the fp64 oracle (reference::forward, reference::backward) under the
project's tolerance table (reference/tolerances.h). Forward: y, and the per-row rstd where
it is requested, |got - ref| <= atol + rtol |ref|. Backward: dx with compare_scaled under
dx_tolerance and dw with compare_vector_scaled under dw_tolerance (rows = all rows of the
batch): |got - ref| <= rtol |ref| + atol * scale, scale being the oracle's size of the
terms that were added. Every output buffer is poisoned (0xFF bytes: NaN) before the call,
so an unwritten element fails; its bytes outside the view (row padding, the other slices
of a QKV buffer, a guard past the end) must still be poison afterwards; the inputs (x, an
out-of-place dy, the weight, a saved rstd) must be unchanged. The backward's workspace is
filled with stale bytes first. On CUDA the buffers are copied to the device, poison
included, and back.

Output: one line per group with the cases run, the cases skipped, the worst error as a
fraction of the tolerance (<= 1 passes) and PASS or FAIL, then the first failing cases of a
failed group. Forward groups:
  dtypes x=X w=W y=Y    each supported dtype combination (x f32, f16, bf16, and f64 on the
                        CPU; weight of x's dtype, f32 or none; y of x's dtype, or f32 for
                        f16/bf16 x with an f32 weight), cols 1..8192, both casts
  awkward cols          f32/f16/bf16, cols 1, 2, 3, 5, 7, 17, 100, 127, 257, 1000, 1031,
                        4095, 5120, 8191, 12288, 65537, ... (up to 262147), odd row counts
  seed shapes           64 rows x 1024..8192 step 1024 (the benchmark's seed table, fewer rows)
  many rows             20011 x 64 ... 777 x 4096: partial blocks and partial waves
  strided rows          row strides > cols, 16-byte aligned and not, misaligned base pointers
  batched / QKV slices  q and k slices of a fused QKV buffer viewed as (tokens, heads,
                        head_dim), normalised in place and into a separate tensor
  in-place              y is x (same pointer and strides), contiguous and strided
  weight offset 1       Gemma's (1 + w), weights near 0, both casts
  cast fp32, cast llama each rounding mode over every dtype combination, eps 0, 1e-6,
                        1e-5, inputs of scale 1e-3, 1 and 30
  rstd output           the per-row rstd output, matrix and batched views
  strategy S            each strategy forced through Params::strategy (CUDA only: the CPU
                        backend has one strategy): @STRATEGIES@;
                        a shape the forced strategy cannot serve on this device (Error with
                        Code::unsupported) is skipped
  register configurations   (not with --quick) rows that fill each configuration of the
                        planner's tables (src/kernel_configs.h) exactly, one vector short of
                        it, and one vector past the next smaller one, through the planner
Backward groups (rstd "saved": the exact rstd rounded to fp32, as a forward saves it, else
recomputed by the backward):
  backward dtypes x=X w=W   x f32, f16, bf16 (and f64 on the CPU); weight of x's dtype, f32
                        or none; dw of the weight's dtype, f32 or not asked for; saved or
                        recomputed rstd; cols 1..8192
  backward awkward cols f32/f16/bf16, cols 1, 3, 7, 17, 127, 257, 1000, 1031, 4095, 8191,
                        12288, 65537, ... (up to 131071)
  backward long rows    16384, 32768, 65536 with 2 to 5 rows
  backward many rows    up to 20011 x 128: dw over many row blocks
  backward strided / batched  row strides in x, dy and dx separately, misaligned strides,
                        base pointers offset by 1 element, q/k slices of a QKV buffer (dx in
                        place in the gradient's slice, or a separate tensor), batched views
  backward in-place (dx is dy)  contiguous and strided, with and without a weight
  backward weight offset 1 (Gemma)  weights near 0
  backward input scales, eps  x of scale 1e-3 (eps 0 and 1e-5), 1, 30
  backward zero rows    an empty batch: dw all zeros, dx untouched
  backward strategy S   each strategy forced (CUDA only), as for the forward
  backward determinism (2 runs)  the same call twice (outputs poisoned again, the
                        workspace left with other stale bytes): dx and dw bytes identical
Fused groups (after the plain ones of their direction; on CUDA skipped, saying so, until
the backend serves the fusion). r_out must equal the oracle's exactly (x + r rounded once
to r's dtype); a quantised code must be the code of a value within y's tolerance of the
exact y / s (the exact code, or its neighbour where y / s lies that close to a boundary),
with s the scale the call used; computed scales within quant_scale_tolerance (pow2: the
power of two of such a scale):
  add dtypes x=X r=R    fused_add_forward for each x and residual dtype (the residual x's,
                        or f32 with f16/bf16 x), every weight and y, both casts, offset 1
  add awkward cols      rows of 1 to 262147 elements, residual of x's dtype or f32
  add layouts / in place  each of x, the residual, r_out, y with its own strides and
                        offsets, batched views; y is x, r_out is the residual, and both
                        (vLLM's fused_add_rms_norm)
  add all-reduce        fused_allreduce_add_forward: 1, 2, 3, 8 and 16 ranks' partials,
                        each in a buffer of its own, for each x and residual dtype, every
                        weight and y, both casts, offset 1, r_out in place or not, cols 1
                        to 70000, odd row counts, rows on the 16-byte grid, odd pads, one
                        partial's base an element off the grid, batched views, each strategy
                        forced (CUDA only); r_out must equal the partials added in fp32
                        (fp64 for f64) in rank order, plus r, rounded once to r's dtype, bit
                        for bit; y and rstd the oracle's norm of that r_out
  quant K Q             quant_forward with K = static, row, group scales and Q = f8e4m3,
                        i8: every input dtype and weight, both casts, saturating static
                        scales, pow2 scales, scale_ub, group sizes 64 and 128, row- and
                        column-major group scales
  add + quant           fused_add_quant_forward, every kind, strided, residual in place
  add backward r_out=R x=X  fused_add_backward: dx (and dr) = dnorm + dr_out, dw, for
                        every (r_out, x) pair, weight and dw dtype, saved or recomputed rstd
  add backward layouts / in place / determinism  strides, dx written over dr_out, two
                        runs giving the same bytes
Sharded-row groups (last: the forward's with --op forward, the backward's with --op
backward), rows whose columns are split across ranks (rmsnorm.h, "Rows split across ranks"):
  sharded rows, backward sharded rows  each row cut into 2, 3, 4 or 8 column shards, the
                        steps run shard by shard with the per-row sums added between them in
                        rank order; the joined y and rstd (dx and dw) against the unsharded
                        oracle; every dtype combination, cols 1 to 140001, strided, batched
The last line is "Correctness check PASSED (worst error X of tolerance)" (exit status 0)
or "Correctness check FAILED (...)" (exit status 1); a bad command line exits with 2.

options:
  --device D   auto (default): CUDA if this build has the CUDA backend and a device is
               visible, else the CPU; cpu; cuda; cuda:N (device ordinal N)
  --op OP      forward (plain and fused forward groups), backward (plain and fused
               backward groups), add (the residual add's groups, forward and backward,
               the all-reduce's among them), quant (the quantised outputs' groups) or all
               (default)
  --quick      a smaller sweep: fewer shapes, fewer rows
  --seed S     seed of the random inputs (default 1); a case's inputs depend only on S and
               the case's place among its op's cases
  -h, --help   this text
)HELP");
}

std::string bench_help() {
  return with_strategies(
      R"HELP(usage: rmsnorm bench [--device D] [--op forward|backward|add|quant] [--dtype T] [--suite S,...]
                     [--quant static|row|group] [--qdtype fp8|int8] [--division exact|reciprocal]
                     [--rows M] [--cols N,...] [--strategy S] [--config TxI] [--grid K|rows]
                     [--slices shared|registers] [--max-cluster 16] [--leave-out dw,rstd] [--no-pdl]
                     [--split | --no-split] [--reps R] [--seed S]
                     [--json FILE] [--csv FILE] [--plot FILE.svg]

--op forward (the default) times rmsnorm::forward ("fused") against an unfused baseline
written the way eager PyTorch runs LlamaRMSNorm (x.float(), pow(2), mean(-1), + eps,
rsqrt, * rstd, .to(dtype), * w: one kernel or loop per op, fp32 intermediates in memory;
bench/unfused.h) and against a copy of the same bytes (the speed of light). The weight has
x's dtype, eps is 1e-6, the fused call uses Cast::fp32 (the unfused one rounds like
Cast::llama).

--op backward times rmsnorm::backward ("fused": dx and the deterministic dw; weight and dw
of x's dtype, the rstd saved by a forward run on the same x, the workspace allocated once
outside the timing) against an unfused baseline written the way eager PyTorch's autograd
runs that forward's backward (bench/unfused_backward.h: dy * w, dy * hc and its column sum
for dw, the grad of .to(dtype), of xf * rstd with a row sum, of rsqrt, mean and pow(2), the
two grads of xf added, the grad of x.float(); one kernel or loop per op, fp32 temporaries,
reading the tensors autograd saved: xf, hc, rstd) and against a copy of the same bytes.

--op add times rmsnorm::fused_add_forward (residual of x's dtype, out of place: y and r_out
written); --op quant times rmsnorm::quant_forward (--quant static|row|group, default row;
group size 128; --qdtype fp8|int8, default fp8; --division exact|reciprocal, default exact:
Quant::division); each against an unfused baseline and a
copy. On the CPU the baseline is eager PyTorch's whole formula: `r = x + r` followed by the
unfused norm of r, or the unfused norm followed by its quantisation ops (y.float(), [abs,
amax, / qmax, clamp(min)], / s, [round,] clamp, .to(): bench/unfused_fusions.h). On CUDA it
is rmsnorm::forward with the fused step as separate kernels, as eager PyTorch runs a model
that calls it (bench_fused_cuda.cu), so that the speedup is what the fusion saves: add, an
elementwise `r_out = x + r` kernel (fp32 math, rounded to r's dtype), then rmsnorm::forward
of r_out; quant, rmsnorm::forward to y of x's dtype, then (row, group) an amax kernel
writing s = max(amax / qmax, 1 / (qmax * 512)) per row or group, and a kernel computing
y / s, saturated and converted. Where the CUDA backend does not serve a fused form yet
(Code::unsupported), the fused cells read "not served", the notes say why, and the
baseline and the copy are timed all the same (exit status 0).

Byte model, for fused, unfused and copy alike (s = bytes per element):
  forward   2*M*N*s (read x + write y; the weight is ignored); the copy moves the
            M*N*s-byte x (read + write = 2*M*N*s)
  backward  3*M*N*s (read x + read dy + write dx; weight, dw and rstd are ignored); the
            copy is one memcpy of 1.5*M*N*s bytes inside a buffer set laid out
            [x | dy | dx]: x and the first half of dy are read, the second half of dy and
            dx are written (1.5 read + 1.5 written = 3*M*N*s)
  add       4*M*N*s (read x and r, write y and r_out); the copy moves 2*M*N*s bytes
  quant     M*N*s + M*N + scale bytes (read x, write q and the fp32 scales: 4 for a static
            scale, 4*M per row, 4*M*N/128 per group); the copy moves half of that
GB/s = model bytes / time per call.

Protocol (docs/performance.md): random normal inputs (seeded, generated on the device on
CUDA), weight 1 + 0.1 N(0,1); every implementation's output is first checked against the
fp64 oracle (forward: y on all rows, or the first and last 64 rows of a larger matrix;
backward: dx on those rows and dw, a sum over all rows, with the backward tolerances; the
unfused backward is allowed its two extra roundings of the 16-bit products; add: r_out bit
for bit and y; quant: each code that of a value within y's tolerance of y / s, computed
scales within theirs); a failed check is reported and that implementation is not timed
(exit status 1). On CUDA the fused forms are also checked against the unfused baseline:
r_out bit for bit and y within twice the forward's tolerance; codes, as values (code *
scale), within one quantisation step of the baseline's (the code spacing times the scale,
plus y's tolerances: the baseline's y was rounded to x's dtype first, so equal bits are not
expected). On CUDA: calls rotate over enough distinct buffer sets (x/y, x/dy/dx/rstd,
x/r/y/r_out or x/q/scales) that one pass moves >= 4x
the L2 size (fewer if memory is short; the count is in the JSON); back-to-back calls are
captured in one CUDA graph, the graph is replayed after a warm-up, each replay timed with
CUDA events, and the time per call is the median replay time / calls. The copy column is
the faster of that and the same calls issued to a stream (a graph's large memcpy nodes can
be slower; the JSON's mode says which). On the CPU: std::chrono, the same rotation against
4x the last-level cache (a pass capped at 256 MB), the CPU backend, the unfused ops as
separate loops, the copy a memcpy; these are CPU figures, not GPU ones.

Throughput tables: M, N, fused GB/s, unfused GB/s, copy GB/s, speedup (fused over
unfused), % of copy (fused over copy), fused us (per call), notes (the strategy: the
forward's plan on CUDA, the requested one for the backward, whose plan is not public).
Decode table (forward): microseconds per call, in a CUDA graph (back-to-back, rotating
buffers) and as a plain call followed by a stream synchronisation (host clock: launch +
run + sync); on the CPU, plain calls only.

options:
  --device D        auto (default: CUDA when available, else the CPU), cpu, cuda, cuda:N
  --op OP           forward (default), backward, add (residual add) or quant (8-bit output)
  --quant K         --op quant: static, row (default) or group (128 columns) scales
  --qdtype Q        --op quant: fp8 (float8_e4m3fn, default) or int8
  --division D      --op quant: exact (y / s, default) or reciprocal (y * (1 / s), vLLM's)
  --dtype T         f16 (default), bf16 or f32: x, the weight and y (dy, dx and dw)
  --suite S,...     seed: M = 4096, N = 1024..8192 step 1024 (forward's default)
                    qk: 262144 x 64, 262144 x 128 (QK-norm over heads; forward only)
                    wide: 16384 x 4096/8192/16384/24576/32768, 4096 x 65536,
                          2048 x 131072, 1024 x 262144/524288/1048576 (not the backward)
                    decode: 1 x 4096, 32 x 8192, 1 x 8192, 8 x 4096, 8 x 8192, 32 x 4096,
                          128 x 4096, 128 x 8192 (latency per call; forward only)
                    train: 16384 x 2048/4096/8192/16384, 8192 x 32768, 4096 x 65536,
                          2048 x 131072, 1024 x 262144, 262144 x 128 (backward's default)
                    all: forward: seed, qk, wide, decode; backward: train, seed;
                          add, quant: seed, wide, decode
  --rows M          a custom table: M rows (default 4096) ...
  --cols N,...      ... by these N (default 1024..8192 step 1024); not with --suite
  --strategy S      auto (default), @STRATEGIES@:
                    Params::strategy of the fused call (CUDA); a shape it cannot serve is
                    reported as n/a
  --config TxI      CUDA: run the register configuration of T threads a row and I vectors
                    a lane (warp_rows for T <= 32, else block_row; with --strategy
                    cluster_row, T threads a block of a cluster) instead of the
                    planner's, to time the configurations against each other; it must be
                    one the library instantiates for the op (src/kernel_configs.h:
                    cluster rows 512x8, 1024x4 and 256x8 for forward, 1024x4 for add
                    (512x8 with an f32 residual), 512x8 for quant, which has its own
                    block rows too), and shapes whose rows it cannot hold in 8 blocks
                    (of up to 4 pieces, forward and add) are reported as n/a
  --max-cluster 16  CUDA, with --strategy cluster_row and --config (not backward): rows take
                    up to 16 blocks a cluster (a non-portable size, sm_90) before pieces,
                    where the planner keeps to 8; a device without room for one: n/a
  --grid K|rows     CUDA, with --strategy cluster_row and --config (not backward): launch
                    K times the clusters the device holds at once (1..16), each looping
                    over its share of the rows, or one cluster a row (rows), instead of
                    twice the resident clusters (Plan::cluster_grid)
  --slices shared|registers
                    CUDA, --op forward with --strategy cluster_row and --config (512x8 or
                    256x8 for shared): each block's slice of the row copied to shared
                    memory, or held in registers (the default of a forced plan), to time
                    the two against each other (Plan::shared_slices; shared runs a cluster
                    a row unless --grid says otherwise; unaligned rows: n/a)
  --leave-out P,... CUDA, --op backward: the fused call without dw (dx alone; dw is then not
                    checked) and/or without the saved rstd (recomputed from x), to time
                    what each part of the backward costs beside the whole (another run)
  --no-pdl          CUDA: launch the fused kernels without programmatic dependent launch
                    (Params::pdl = false), to time what it saves
  --split           CUDA, --op forward|add: split every block row of a batch of fewer
                    rows than the SMs over a cluster on several SMs (sm_90,
                    Params::split_few_rows = SplitFewRows::on; by default only rows of
                    8192 and 16384 16-bit columns are split), to time the split
  --no-split        CUDA, --op forward|add: never split (SplitFewRows::off): every block
                    row on one SM, to time the default against it
  --reps R          timed repetitions, the median is reported (default 50 on CUDA, 3 on
                    the CPU; plain decode calls: max(4R, 200))
  --seed S          seed of the random inputs (default 1)
  --json FILE       write {"device", "date", "commit", "op", "dtype", "byte_model",
                    "records": [...]}: one record per (shape, impl[, mode]) with op
                    (forward, backward, add, quant), dtype, rows, cols, impl (fused, unfused, copy),
                    mode (graph, stream, plain or loop), gbps, us, bytes, sets, reps, ...
  --csv FILE        the same records, one per line after a header
  --plot FILE.svg   an SVG line chart of GB/s against N, one line per implementation
  -h, --help        this text

exit status: 0 done; 1 an implementation failed its oracle check or a shape could not
run (the notes column says why); 2 a bad command line.
)HELP");
}

}  // namespace rmsnorm::cli
