"""python -m rmsnorm.bench_allreduce: the end of a tensor-parallel decoder layer, checked, then timed.

    python -m rmsnorm.bench_allreduce                       # one process: NCCL on a GPU, gloo on the CPU
    torchrun --nproc-per-node 8 -m rmsnorm.bench_allreduce  # 8 ranks, each with a partial output

Every rank holds a partial output of M x N (a row-parallel layer's; made from a seed of its
rank, so that every rank can make every other's) and the same residual and weight. First the
check, on every rank, of rmsnorm.fused_allreduce_add_rms_norm by each algorithm: "oneshot"'s
and "twoshot"'s residual_out bit for bit against the library's arithmetic (the partials
summed in float32 in rank order, the residual added in float32, one rounding), "nccl"'s
within the roundings of the collective's sum of the true sum (float64); y the norm of
residual_out, within the tolerance of the float64 norm (prints "Correctness check PASSED"). Then, per shape,
microseconds per call, the slowest rank's median (back-to-back calls on rotating inputs: in
a CUDA graph where the calls can be captured in one, else plain calls timed by CUDA events;
plain calls on the CPU), of:

    all-reduce   torch.distributed.all_reduce (sum) of M*N elements of the dtype, alone
    fused add    rmsnorm.fused_add_rms_norm of a partial and the residual, alone
    nccl + add   fused_allreduce_add_rms_norm(..., algorithm="nccl"): the all-reduce of a copy
                 of the partial, then fused_add_rms_norm of the sum
    oneshot      fused_allreduce_add_rms_norm(..., algorithm="oneshot") (CUDA): the partial
                 copied into symmetric memory, a barrier, one kernel, a barrier
    twoshot      fused_allreduce_add_rms_norm(..., algorithm="twoshot") (CUDA): each rank's
                 block of rows through the kernel, its outputs exchanged (three barriers)

and whether oneshot meets its target: nccl + add / oneshot >= 1.5 at up to 32 tokens (M),
and never slower (>= 1) above. Without torchrun the process group is made here: world size
1 on 127.0.0.1 at a free port. NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are set, unless already set, before the process group exists: the
project does not use NVLink multicast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.distributed as dist

import rmsnorm

from .bench import DTYPES, Timer, _close, _short, describe_device, make_inputs, parse_sizes, reference, rotation
from .bench_sharded import _init, _us

EPS = 1e-6
SIZES = [(m, n) for n in (4096, 8192) for m in (1, 8, 32, 128)]
CPU_SIZES = [(8, 1024), (32, 4096)]
ALGORITHMS = ("nccl", "oneshot", "twoshot")
# The algorithms over symmetric memory (CUDA only): their residual_out is the library's sum.
SYMMETRIC = ("oneshot", "twoshot")
COLUMNS = ("all-reduce", "fused add", "nccl + add", "oneshot", "twoshot")
# oneshot's target: at decode sizes the all-reduce's latency, not its bytes, is the cost, and
# one kernel reading the peers' buffers between two barriers is to beat it by this much.
TARGET_TOKENS, TARGET_RATIO = 32, 1.5
# Calls in one graph (or one timed loop). The protocol's rotation covers 4x the L2 cache,
# which at one token takes thousands of sets: thousands of collectives to capture, for a
# figure that is latency, not bytes. Capped, the small shapes run warm in L2, as a partial
# just written by the row-parallel layer would be.
MAX_CALLS = 128
# The project does not use NVLink multicast: read by NCCL when its communicator is made and
# by torch and NVSHMEM when symmetric memory is first set up, so set before either exists.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
MODES = {"graph": "CUDA graph", "events": "plain calls, CUDA events", "cpu": "plain calls, perf_counter"}


# ---------------------------------------------------------------------------------------
# Inputs: every rank can make every rank's
# ---------------------------------------------------------------------------------------


def _partial(rows, cols, dtype, device, rank, k=0):
    """Rank `rank`'s partial output in input set k: the seed is the rank's and the set's (set
    k's seeds, 1000 * (k + 1) + rank, never meet the shared inputs' below 1000)."""
    return make_inputs(rows, cols, dtype, device, seed=1000 * (k + 1) + rank)[0]


def _shared(rows, cols, dtype, device, k=0):
    """The residual and the weight of input set k, the same on every rank."""
    return make_inputs(rows, cols, dtype, device, seed=k + 1)


def _fused(algorithm, group):
    def call(x, residual, weight):
        return rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, EPS, group=group, algorithm=algorithm)

    return call


# ---------------------------------------------------------------------------------------
# Check
# ---------------------------------------------------------------------------------------


def check(device, dtype, rows, cols, algorithms, group) -> list[str]:
    """Each algorithm's (y, residual_out) against the models of the sum; returns the failures."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    partials = [_partial(rows, cols, dtype, device, r) for r in range(world)]
    residual, weight = _shared(rows, cols, dtype, device)
    # The true sum (float64), and the library's arithmetic: float32, one partial after the
    # other in rank order, then the residual, one rounding to the residual's dtype.
    r64 = torch.stack([p.double() for p in partials]).sum(0) + residual.double()
    s32 = partials[0].float()
    for p in partials[1:]:
        s32 = s32 + p.float()
    r_model = (s32 + residual.float()).to(residual.dtype)
    # The collective sums in the dtype, rounding after each of its world - 1 additions, each
    # of a partial sum no larger than the sum of the magnitudes.
    scale = (torch.stack([p.double().abs() for p in partials]).sum(0) + residual.double().abs()).max().item()
    failures = []
    for algorithm in algorithms:
        what = f"{rows}x{cols} {algorithm}"
        try:
            y, r_out = _fused(algorithm, group)(partials[rank], residual, weight)
        except Exception as e:  # noqa: BLE001  (reported: a call that raises fails the check)
            failures.append(f"{what}: {_short(e)}")
            continue
        if algorithm in SYMMETRIC:
            if not torch.equal(r_out, r_model):
                wrong = (r_out != r_model).sum().item()
                failures.append(f"{what} residual_out: {wrong} of {r_out.numel()} elements are not the float32 "
                                "rank-order sum's")
        else:
            problem = _close(r_out, r64, dtype, scale=scale)
            if problem:
                failures.append(f"{what} residual_out against the float64 sum: {problem}")
        # y is the norm of the residual_out it came with (nccl's differs from oneshot's by the
        # collective's roundings, which the check of residual_out has bounded).
        problem = _close(y, reference(r_out.double(), weight, EPS), dtype)
        if problem:
            failures.append(f"{what} y: {problem}")
    return failures


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _everywhere(flag: bool, group) -> bool:
    """True when `flag` is true on every rank: the ranks agree on a mode, so that a rank
    replaying a graph never waits in a collective for one looping over plain calls."""
    device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor([int(flag)], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return bool(t.item())


def _graph_median(timer: Timer, graph, n_calls: int) -> float:
    """Timer.graph's replays of a graph captured already."""
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(timer.reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / n_calls)
    return statistics.median(times)


def _time_collective(timer: Timer, calls, group) -> tuple[float, str, str]:
    """(seconds, mode, why not a graph): a CUDA graph where every rank could capture the calls
    in one (NCCL's all_reduce can be; the symmetric-memory barriers are tried), else plain
    calls on every rank."""
    timer.warm_up(calls)  # oneshot's first call allocates and exchanges its buffer: not in a graph
    if not timer.cuda:
        return timer.loop(calls), "cpu", ""
    graph, keep, why = torch.cuda.CUDAGraph(), [], ""
    try:
        with torch.cuda.graph(graph, stream=timer.stream):
            for c in calls:
                keep.append(c())  # outputs stay alive: every call writes fresh memory
    except Exception as e:  # noqa: BLE001  (a call that cannot be captured: time plain calls)
        torch.cuda.synchronize()
        why = _short(e)
    if _everywhere(not why, group):
        seconds = _graph_median(timer, graph, len(calls))
        del keep, graph
        return seconds, "graph", ""
    del keep, graph
    return timer.loop(calls), "events", why or "another rank could not capture the calls"


def time_shape(device, dtype, rows, cols, reps, algorithms, group):
    """Per column timed: (seconds, mode, why not a graph); and nccl + add's seconds as plain
    calls where only oneshot could not be captured (the ratio then compares one mode)."""
    rank = dist.get_rank(group)
    esize = torch.finfo(dtype).bits // 8
    # The bytes of a call: the partial and the residual read, y and residual_out written.
    model_bytes = 4 * rows * cols * esize
    sets, count = rotation(model_bytes, 2 * rows * cols * esize, device)
    if device == "cpu":
        sets, count = 2, 4  # a smoke test
    else:
        count = min(count, MAX_CALLS)
        sets = min(sets, count)
    inputs = [(_partial(rows, cols, dtype, device, rank, k), *_shared(rows, cols, dtype, device, k))
              for k in range(sets)]  # fmt: skip
    # Zeros stay zeros under repeated sums: the all-reduce alone rewrites its buffers forever.
    zeros = [torch.zeros(rows, cols, dtype=dtype, device=device) for _ in range(sets)]
    timer = Timer(device, reps)

    def calls(fn):
        return [lambda k=i % sets: fn(k) for i in range(count)]

    plan = {
        "all-reduce": (True, lambda k: dist.all_reduce(zeros[k], group=group)),
        "fused add": (False, lambda k: rmsnorm.fused_add_rms_norm(*inputs[k], EPS)),
    }
    for algorithm, column in (("nccl", "nccl + add"), ("oneshot", "oneshot"), ("twoshot", "twoshot")):
        if algorithm in algorithms:
            plan[column] = (True, lambda k, f=_fused(algorithm, group): f(*inputs[k]))
    out = {}
    for column, (collective, fn) in plan.items():
        cs = calls(fn)
        if collective:
            out[column] = _time_collective(timer, cs, group)
        else:
            timer.warm_up(cs[:sets])
            out[column] = (timer.graph(cs), "graph", "") if timer.cuda else (timer.loop(cs), "cpu", "")
    plain_nccl = None
    if out.get("oneshot", ("", ""))[1] == "events" and out.get("nccl + add", ("", ""))[1] == "graph":
        plain_nccl = timer.loop(calls(plan["nccl + add"][1]))
    return out, plain_nccl


def _slowest(values: list, group) -> list:
    """Each figure's maximum over the ranks (a collective's latency is its slowest rank's);
    None where it was not measured."""
    device = "cuda" if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor([-1.0 if v is None else v for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [None if v < 0 else v for v in t.tolist()]


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def parse_algorithms(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALGORITHMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"algorithms: unknown {unknown}; choose from {','.join(ALGORITHMS)}")
    return names


def _target(rows: int) -> float:
    return TARGET_RATIO if rows <= TARGET_TOKENS else 1.0


def _modes_line(column, modes) -> str:
    """How a column was timed: one mode for every shape, or the shapes of each."""
    by_mode: dict[str, list[str]] = {}
    for shape, (mode, why) in modes.items():
        by_mode.setdefault(MODES[mode] + (f" ({why})" if why else ""), []).append(shape)
    if len(by_mode) == 1:
        return f"  {column}: {next(iter(by_mode))}"
    return f"  {column}: " + "; ".join(f"{m} at {', '.join(s)}" for m, s in by_mode.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmsnorm.bench_allreduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", choices=["nccl", "gloo"], help="default: nccl on cuda, gloo on the cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--sizes", type=parse_sizes,
                    help="shapes MxN of the partial outputs (default: M 1, 8, 32, 128 by N 4096, 8192)")
    ap.add_argument("--reps", type=int, default=20, help="repetitions per figure; the median is reported")
    ap.add_argument("--algorithms", type=parse_algorithms, default=list(ALGORITHMS),
                    help="which of nccl,oneshot,twoshot to check and time (oneshot, twoshot: CUDA only)")
    args = ap.parse_args(argv)
    device, dtype = args.device, DTYPES[args.dtype]
    backend = args.backend or ("nccl" if device == "cuda" else "gloo")
    sizes = args.sizes or (SIZES if device == "cuda" else CPU_SIZES)
    for name, value in NO_MULTICAST.items():
        os.environ.setdefault(name, value)
    # A process group made by the caller (a test's ranks) is used as it is, and left to it.
    own_group = not dist.is_initialized()
    if own_group:
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        _init(backend)
    group = dist.group.WORLD
    backend = dist.get_backend(group)
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"rmsnorm {rmsnorm.__version__} all-reduce + residual add + norm: {describe_device(device)}, {backend}, "
        f"world size {world}, {args.dtype}, torch {torch.__version__}")
    say("  " + ", ".join(f"{name}={os.environ[name]}" for name in NO_MULTICAST))
    algorithms, skipped = [], {}
    for algorithm in args.algorithms:
        if algorithm in SYMMETRIC and device != "cuda":
            skipped[algorithm] = "CUDA only"
        elif algorithm in SYMMETRIC and world > rmsnorm._ops.MAX_ALLREDUCE_RANKS:
            skipped[algorithm] = f"at most {rmsnorm._ops.MAX_ALLREDUCE_RANKS} ranks"
        else:
            algorithms.append(algorithm)
    try:
        with torch.no_grad():
            return _run(args, device, dtype, sizes, algorithms, skipped, group, say)
    finally:
        if own_group:
            dist.destroy_process_group()


def _run(args, device, dtype, sizes, algorithms, skipped, group, say) -> int:
    world = dist.get_world_size(group)
    failures = []
    for m, n in sizes:
        failures += check(device, dtype, min(m, 256), n, algorithms, group)
    everyone = [None] * world
    dist.all_gather_object(everyone, failures, group=group)
    if any(everyone):
        lines = [f"rank {r}: {f}" if world > 1 else f for r, fs in enumerate(everyone) for f in fs]
        say("Correctness check FAILED:\n  " + "\n  ".join(lines))
        return 1
    what = {"nccl": "nccl's residual_out within the collective's roundings of the float64 sum",
            "oneshot": "oneshot's bit for bit the float32 rank-order sum",
            "twoshot": "twoshot's bit for bit the same"}
    say("Correctness check PASSED (on every rank: " + "; ".join([what[a] for a in algorithms] + [
        "y within the tolerance of the float64 norm"]) + ")")

    say(f"\nmicroseconds per call, the slowest rank's median of {args.reps} "
        f"(all-reduce: M*N {args.dtype} elements; fused add: one rank's, no collective)")
    say(f"{'M x N':>14} " + " ".join(f"{c:>11}" for c in COLUMNS) + f" {'nccl+add/oneshot':>17}  target")
    modes = {c: {} for c in COLUMNS}
    plain_ratios, verdicts = [], []
    for m, n in sizes:
        shape = f"{m}x{n}"
        out, plain_nccl = time_shape(device, dtype, m, n, args.reps, algorithms, group)
        figures = _slowest([out[c][0] if c in out else None for c in COLUMNS] + [plain_nccl], group)
        t = dict(zip(COLUMNS, figures))
        for c in COLUMNS:
            if c in out:
                modes[c][shape] = out[c][1:]
        nccl = figures[-1] if plain_nccl is not None else t["nccl + add"]
        if plain_nccl is not None:
            plain_ratios.append(f"{shape} {_us(nccl)}")
        ratio = nccl / t["oneshot"] if None not in (nccl, t["oneshot"]) and t["oneshot"] > 0 else None
        verdict = "n/a" if ratio is None else ("meets" if ratio >= _target(m) else "misses")
        if ratio is not None:
            verdicts.append((shape, ratio, verdict))
        cells = " ".join(f"{_us(t[c]):>11}" for c in COLUMNS)
        say(f"{shape:>14} {cells} {'n/a' if ratio is None else f'{ratio:.2f}x':>17}  {verdict}")

    say("\nHow each column was timed:")
    for c in COLUMNS:
        if modes[c]:
            say(_modes_line(c, modes[c]))
        else:
            algorithm = "nccl" if c == "nccl + add" else c
            say(f"  {c}: not timed ({skipped.get(algorithm, 'not asked for: --algorithms')})")
    if plain_ratios:
        say("  nccl+add/oneshot: where oneshot ran as plain calls and nccl + add in a graph, the ratio is of "
            "both as plain calls (nccl + add so: " + ", ".join(plain_ratios) + ")")
    if world == 1:
        say("  world size 1: nccl + add makes no collective call (the partial is the sum) and oneshot's barriers "
            "meet this rank alone; the table of several GPUs is torchrun --nproc-per-node N's")
    rule = f"nccl + add / oneshot >= {TARGET_RATIO}x at up to {TARGET_TOKENS} tokens, never slower above"
    if not verdicts:
        say(f"\nTarget ({rule}): n/a, oneshot not timed")
    else:
        missed = [f"{s} ({r:.2f}x)" for s, r, v in verdicts if v == "misses"]
        say(f"\nTarget ({rule}): " + (f"meets at all {len(verdicts)} shapes" if not missed else
            f"misses at {len(missed)} of {len(verdicts)} shapes: {', '.join(missed)}"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
