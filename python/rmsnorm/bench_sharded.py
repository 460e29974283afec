"""python -m rmsnorm.bench_sharded: rows split across ranks, checked, then timed step by step.

    python -m rmsnorm.bench_sharded                       # one process: NCCL on a GPU, gloo on the CPU
    torchrun --nproc-per-node 4 -m rmsnorm.bench_sharded  # several ranks: each holds N / ranks columns

Each rank holds its columns of the same M x N rows. First the check: rms_norm(x_shard, w_shard,
group=...) forward and backward against the unsharded op's columns of this rank (prints
"Correctness check PASSED"). Then, per shape, microseconds per call (medians; back-to-back
calls on rotating inputs covering 4x the L2 cache, in a CUDA graph where the collective can
be captured, else plain calls) of:

    plain        the unsharded op on the rank's shard (rms_norm_fwd; rms_norm_bwd with dw)
    partial      partial_sum_squares (backward: partial_grad_dot)
    all-reduce   torch.distributed.all_reduce of one float32 a row (4*M bytes)
    apply        rms_norm_from_sums (backward: rms_norm_from_sums_bwd)
    sharded      the three together (rms_norm(..., group=...), and its backward)

and whether the sharded path stays within plain + all-reduce (the target). Without torchrun
the process group is made here: world size 1 on 127.0.0.1 at a free port.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist

import rmsnorm

from .bench import DTYPES, Timer, _close, describe_device, make_inputs, parse_sizes, reference, rotation

ops = torch.ops.rmsnorm
SIZES = [(4096, 4096), (4096, 8192), (16384, 8192), (1, 4096), (32, 8192)]
CPU_SIZES = [(256, 1024), (32, 4096)]


def _init(backend: str) -> None:
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, timeout=datetime.timedelta(seconds=120)
    )


def _shard(n: int) -> tuple[int, int]:
    rank, world = dist.get_rank(), dist.get_world_size()
    return rank * n // world, (rank + 1) * n // world


def check(device: str, dtype: torch.dtype, rows: int, cols: int) -> list[str]:
    """The sharded path against the unsharded op, forward and backward; returns the failures."""
    x, w = make_inputs(rows, cols, dtype, device)
    dy = make_inputs(rows, cols, dtype, device, seed=1)[0]
    a, b = _shard(cols)
    failures = []
    xs = x[:, a:b].clone().requires_grad_()
    ws = w[a:b].clone().requires_grad_()
    y = rmsnorm.rms_norm(xs, ws, 1e-6, group=dist.group.WORLD, full_cols=cols)
    dx, dw = torch.autograd.grad(y, (xs, ws), dy[:, a:b])
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_()
    y64 = reference(x64, w64, 1e-6)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    for name, got, want in (("y", y, y64[:, a:b]), ("dx", dx, dx64[:, a:b]), ("dw", dw, dw64[a:b])):
        problem = _close(got, want.detach(), dtype, scale=want.abs().max().item())
        if problem:
            failures.append(f"{rows}x{cols} {name}: {problem}")
    return failures


def _collective_timer(timer: Timer, calls) -> float:
    """A CUDA graph when the collective can be captured in one (NCCL can), else plain calls."""
    timer.warm_up(calls[:1])
    if timer.cuda:
        try:
            return timer.graph(calls)
        except Exception:  # noqa: BLE001  (a backend that cannot be captured: time plain calls)
            torch.cuda.synchronize()
    return timer.loop(calls)


def time_shape(device, dtype, rows, cols, reps) -> dict[str, float | None]:
    a, b = _shard(cols)
    n = b - a
    group = dist.group.WORLD
    model_bytes = 2 * rows * n * torch.finfo(dtype).bits // 8
    sets, count = rotation(model_bytes, model_bytes, device)
    inputs = [make_inputs(rows, n, dtype, device, seed=s) for s in range(sets)]
    dys = [make_inputs(rows, n, dtype, device, seed=100 + s)[0] for s in range(sets)]
    # Per-row sums for the apply steps timed alone (computed by torch: any positive values do).
    sums = inputs[0][0].float().pow(2).sum(-1)
    rstds = [ops.rms_norm_fwd(x, w, 1e-6, 0.0, "fp32")[1] for x, w in inputs]
    timer = Timer(device, reps)

    def pick(i):
        return inputs[i % sets][0], inputs[i % sets][1], dys[i % sets], rstds[i % sets]

    def calls(fn):
        return [lambda i=i: fn(*pick(i)) for i in range(count)]

    def reduce(t):
        dist.all_reduce(t, group=group)
        return t

    def sharded_fwd(x, w, dy, rstd):
        return ops.rms_norm_from_sums(x, w, reduce(ops.partial_sum_squares(x)), cols, 1e-6, 0.0, "fp32")

    def sharded_bwd(x, w, dy, rstd):
        dots = reduce(ops.partial_grad_dot(dy, x, w, 0.0))
        return ops.rms_norm_from_sums_bwd(dy, x, w, rstd, dots, cols, 0.0, True)

    row_buffer = torch.zeros(rows, dtype=torch.float32, device=device)
    plan = {
        "plain fwd": (False, lambda x, w, dy, r: ops.rms_norm_fwd(x, w, 1e-6, 0.0, "fp32")),
        "partial fwd": (False, lambda x, w, dy, r: ops.partial_sum_squares(x)),
        "all-reduce": (True, lambda x, w, dy, r: reduce(row_buffer)),
        "apply fwd": (False, lambda x, w, dy, r: ops.rms_norm_from_sums(x, w, sums, cols, 1e-6, 0.0, "fp32")),
        "sharded fwd": (True, sharded_fwd),
        "plain bwd": (False, lambda x, w, dy, r: ops.rms_norm_bwd(dy, x, w, r, 1e-6, 0.0, True)),
        "partial bwd": (False, lambda x, w, dy, r: ops.partial_grad_dot(dy, x, w, 0.0)),
        "apply bwd": (False, lambda x, w, dy, r: ops.rms_norm_from_sums_bwd(dy, x, w, r, sums, cols, 0.0, True)),
        "sharded bwd": (True, sharded_bwd),
    }
    out: dict[str, float | None] = {}
    for name, (collective, fn) in plan.items():
        try:
            cs = calls(fn)
            if collective:
                out[name] = _collective_timer(timer, cs)
            else:
                timer.warm_up(cs[:1])
                out[name] = timer.graph(cs) if timer.cuda else timer.loop(cs)
        except NotImplementedError:  # this build has no kernels of the steps for the device
            out[name] = None
    return out


def _us(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1e6:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmsnorm.bench_sharded", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", choices=["nccl", "gloo"], help="default: nccl on cuda, gloo on the cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--sizes", type=parse_sizes, help="shapes MxN of the whole rows (default: a few of 4096-16384)")
    ap.add_argument("--reps", type=int, default=20, help="repetitions per figure; the median is reported")
    args = ap.parse_args(argv)
    device, dtype = args.device, DTYPES[args.dtype]
    backend = args.backend or ("nccl" if device == "cuda" else "gloo")
    sizes = args.sizes or (SIZES if device == "cuda" else CPU_SIZES)
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    _init(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"rmsnorm {rmsnorm.__version__} sharded rows: {describe_device(device)}, {backend}, world size {world}, "
        f"{args.dtype}")
    try:
        failures = []
        for m, n in sizes[:2]:
            try:
                failures += check(device, dtype, min(m, 256), n)
            except NotImplementedError as e:
                say(f"check skipped: {str(e).splitlines()[0]}")
                failures = None
                break
        if failures:
            say("Correctness check FAILED:\n  " + "\n  ".join(failures))
            return 1
        if failures is not None:
            say("Correctness check PASSED")
        say("\nmicroseconds per call (shard: this rank's columns; all-reduce: 4*M bytes)")
        names = ["plain fwd", "partial fwd", "all-reduce", "apply fwd", "sharded fwd",
                 "plain bwd", "partial bwd", "apply bwd", "sharded bwd"]  # fmt: skip
        say(f"{'M x N':>14} {'shard':>7} " + " ".join(f"{c:>11}" for c in names) + "  within plain + all-reduce")
        for m, n in sizes:
            t = time_shape(device, dtype, m, n, args.reps)
            a, b = _shard(n)
            verdict = []
            for d in ("fwd", "bwd"):
                plain, ar, sh = t[f"plain {d}"], t["all-reduce"], t[f"sharded {d}"]
                verdict.append("n/a" if None in (plain, ar, sh) else ("yes" if sh <= plain + ar else "no"))
            cells = " ".join(f"{_us(t[c]):>11}" for c in names)
            say(f"{f'{m}x{n}':>14} {b - a:>7} {cells}  " + "/".join(verdict))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
