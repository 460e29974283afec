"""python -m rmsnorm.bench: check rmsnorm against PyTorch, then time it against its peers.

The protocol is docs/performance.md's:
- Correctness first: rmsnorm's forward and backward against a float64 reference and
  F.rms_norm on the device (prints "Correctness check PASSED"), and each peer's forward
  output against the same reference and against rmsnorm's before its shape is timed.
- GB/s of model bytes: forward 2*M*N*s (read x, write y), backward 3*M*N*s (read x and dy,
  write dx); the weight, dw and rstd are left out as small.
- The median, over replays, of a CUDA graph of back-to-back calls on rotating inputs (and
  fresh outputs) whose working set is at least 4x the L2 cache, so neither launch overhead
  nor L2 hits are measured. Random normal inputs, a weight near 1.
- The copy of the same bytes (clone; in the CPU's forward table copy_ into a preallocated
  tensor) in the same run is the ceiling. On CUDA it is the faster of the graph and a plain
  loop of the same calls: a clone is a memcpy, which a graph may run as a copy-engine node
  (on the H200, the graph's clone moved 2.7 TB/s on six of the seven shapes of 2^28
  elements and more at tree 608669d; the faster of the two, 4.2 at 024c8c3).
- Decode shapes: microseconds per call in a CUDA graph, and as plain eager calls (host
  overhead included), the latter also under torch.inference_mode() for rmsnorm and clone.
- The fused forms (--no-fused to skip): the residual add (4*M*N*s: read x and r, write y
  and r_out; with --f32-residual also a float32 residual, 2*M*N*s + 8*M*N) and the 8-bit
  outputs: per-row fp8 and per-row int8 (M*N*s + M*N + 4*M), static fp8 (M*N*s + M*N; a
  scale of 6/448), group-128 fp8 (M*N*s + M*N + 4*M*N/128; shapes whose N is a multiple of
  128), rmsnorm's fused ops against
  eager PyTorch and torch.compile of the same formula, FlashInfer where it has the form (the
  residual add, in place on copies of the inputs, and the static fp8 output), and the copy
  of the same bytes. On a device whose backend does not serve a fused form yet, its rmsnorm
  cell says so.
- The peers beyond PyTorch (Liger, QuACK, FlashInfer) are timed where they import, and
  named with the reason in the notes where they do not.

On a machine without CUDA it runs the same tables on the CPU with plain loops: a smoke
test, not a measurement. The forward table then sets rmsnorm beside PyTorch's own CPU
kernel, torch.nn.functional.rms_norm ("torch_fused"), eager PyTorch and the copy.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import rmsnorm

IMPLS = ("rmsnorm", "rmsnorm_recip", "torch_eager", "torch_fused", "torch_compile", "liger", "quack", "flashinfer",
         "copy")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# The shapes of docs/performance.md's peer tables.
FORWARD_SIZES = [(4096, 1024), (4096, 4096), (4096, 8192), (16384, 16384), (16384, 32768), (16384, 65536),
                 (4096, 131072), (2048, 262144), (262144, 128), (262144, 64)]
BACKWARD_SIZES = [(16384, 2048), (16384, 8192), (16384, 16384), (8192, 32768), (4096, 65536), (262144, 128)]
DECODE_SIZES = [(1, 4096), (32, 8192)]
FUSED_SIZES = [(4096, 4096), (16384, 8192), (16384, 16384), (16384, 32768)]
QUICK_FUSED = [(4096, 4096), (16384, 8192)]
CPU_FUSED = [(256, 1024)]
# FlashInfer where it has the fused form: the residual add and the static fp8 output
# (flashinfer_calls).
# rmsnorm_recip: the 8-bit outputs with division="reciprocal" (vLLM's y * (1 / s)).
FUSED_IMPLS = ("rmsnorm", "rmsnorm_recip", "torch_eager", "torch_compile", "flashinfer", "copy")
QUICK_FORWARD = [(4096, 1024), (4096, 4096), (16384, 8192), (262144, 128)]
QUICK_BACKWARD = [(16384, 2048), (16384, 8192)]
CPU_FORWARD = [(256, 1024), (64, 8192), (8192, 128)]  # small: the CPU run is a smoke test
CPU_BACKWARD = [(256, 1024), (4096, 128)]
CPU_DECODE = [(1, 4096)]
# Passes over the calls before a CPU figure: the first touch of each block malloc hands out
# is a page fault, and the warm-up leaves the heap holding touched pages of every size the
# calls ask for (keep_cpu_memory has malloc keep them, large blocks included).
CPU_WARM_UP_PASSES = 5

WORKING_SET_L2_MULTIPLE = 4  # rotate inputs until the working set is >= 4x L2
OUTPUT_BUDGET_BYTES = 4 << 30  # outputs kept alive inside one graph (each call gets fresh memory)
MAX_CALLS_PER_GRAPH = 64
CHECK_ROWS = 256  # rows compared with the float64 reference per timed shape


def keep_cpu_memory() -> bool:
    """Has glibc's malloc serve every block from its heap and keep what is freed (no mmap of
    large blocks, no trimming), so that each call's fresh CPU tensors reuse pages already
    touched. Without it, blocks of 32 MB and more (4096 x 4096 bf16) are mapped afresh and
    page-faulted on every call, whatever the warm-up: rmsnorm and torch.compile moved 4-5
    GB/s there against 20-30 for the same loops in `rmsnorm bench --device cpu`. The same
    for every implementation and the copy; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------
# The implementations
# ---------------------------------------------------------------------------------------


def eager_rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The seed's baseline: float32 statistics, normalise, cast back, times the weight."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps)).to(x.dtype) * w


def eager_add_rms_norm(x, r, w, eps):
    """A decoder layer's seam as Hugging Face writes it: the residual add, then the norm."""
    r = x + r
    return eager_rms_norm(r, w, eps), r


def eager_add_rms_norm_f32r(x, r, w, eps):
    """The same seam with a float32 residual stream (Megatron's recipe): the sum in float32,
    normalised, y back in x's dtype."""
    r = x.float() + r
    variance = r.pow(2).mean(-1, keepdim=True)
    return (r * torch.rsqrt(variance + eps)).to(x.dtype) * w, r


def eager_rms_norm_quant(x, w, eps, qdtype=torch.float8_e4m3fn, scale="row", group=128):
    """The norm, then vLLM's reference quantisation of its output, as rmsnorm.rms_norm_quant's
    arguments name it: a static per-tensor scale (a one-element float32 tensor), or scales
    computed a row ("row") or a row and group of `group` columns ("group": DeepSeek-V3's
    activations), max(amax / qmax, 1 / (qmax * 512)); fp8 saturated at +-448, int8 rounded
    half to even and saturated at +-127. Returns (q, scales)."""
    y = eager_rms_norm(x, w, eps).float()
    qmax = 127.0 if qdtype == torch.int8 else 448.0
    static = isinstance(scale, torch.Tensor)
    # (..., groups, columns a group): the row as one group, or its groups
    parts = y.unflatten(-1, (-1, group)) if not static and scale == "group" else y.unsqueeze(-2)
    s = scale if static else (parts.abs().amax(-1, keepdim=True) / qmax).clamp(min=1.0 / (qmax * 512))
    t = parts / s
    if qdtype == torch.int8:
        t = t.round()
    q = t.clamp(-qmax, qmax).to(qdtype).flatten(-2)
    return q, (s if static else s.squeeze(-1))


# The 8-bit kinds of the fused tables: per-row fp8, static fp8, group-128 fp8, per-row int8.
QUANT_KINDS = ("quant", "quant_static", "quant_group", "quant_int8")


def fused_impls(kind: str, eps: float, wanted: list[str], copy_elements: int,
                static_scale: Optional[torch.Tensor] = None, device: str = "cuda") -> list[Impl]:
    """(x, r, w) -> outputs, for the residual add ("add"; "add_f32r" with a float32 residual)
    and the 8-bit outputs (QUANT_KINDS; "quant_static" divides by `static_scale`). A peer
    without the kind, or not importable, is left out of its table."""
    def ours_with(division):
        return {
            "add": lambda x, r, w: rmsnorm.fused_add_rms_norm(x, r, w, eps),
            "add_f32r": lambda x, r, w: rmsnorm.fused_add_rms_norm(x, r, w, eps),
            "quant": lambda x, r, w: rmsnorm.rms_norm_quant(x, w, eps, scale="row", division=division),
            "quant_static": lambda x, r, w: rmsnorm.rms_norm_quant(x, w, eps, scale=static_scale,
                                                                   division=division),
            "quant_group": lambda x, r, w: rmsnorm.rms_norm_quant(x, w, eps, scale="group", division=division),
            "quant_int8": lambda x, r, w: rmsnorm.rms_norm_quant(x, w, eps, qdtype=torch.int8, scale="row",
                                                                 division=division),
        }[kind]
    ours = ours_with("exact")
    eager = {"add": lambda x, r, w: eager_add_rms_norm(x, r, w, eps),
             "add_f32r": lambda x, r, w: eager_add_rms_norm_f32r(x, r, w, eps),
             "quant": lambda x, r, w: eager_rms_norm_quant(x, w, eps),
             "quant_static": lambda x, r, w: eager_rms_norm_quant(x, w, eps, scale=static_scale),
             "quant_group": lambda x, r, w: eager_rms_norm_quant(x, w, eps, scale="group"),
             "quant_int8": lambda x, r, w: eager_rms_norm_quant(x, w, eps, qdtype=torch.int8)}[kind]
    impls = []
    for name in wanted:
        if name == "rmsnorm":
            impls.append(Impl(name, ours))
        elif name == "rmsnorm_recip" and kind in QUANT_KINDS:
            impls.append(Impl(name, ours_with("reciprocal")))
        elif name == "torch_eager":
            impls.append(Impl(name, eager))
        elif name == "torch_compile":
            impls.append(Impl(name, torch.compile(eager, dynamic=False)))
        elif name == "flashinfer":
            module, _ = _flashinfer_norm(device)
            calls = flashinfer_calls(module, eps, static_scale) if module else {}
            if kind in calls:
                impls.append(Impl(name, calls[kind], in_place=kind == "add"))
        elif name == "copy":  # the same bytes: x and r cloned (add), half the model bytes of x (quant)
            impls.append(Impl(name, (lambda x, r, w: (x.clone(), r.clone())) if kind not in QUANT_KINDS
                              else (lambda x, r, w: x.view(-1)[:copy_elements].clone())))
    return impls


@dataclass
class Impl:
    name: str
    fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]  # (x, w) -> y; None: unavailable
    note: str = ""
    in_place: bool = False  # writes its outputs over its inputs: checked and timed on copies


def make_impls(device: str, eps: float, wanted: list[str]) -> list[Impl]:
    impls = []
    for name in wanted:
        if name == "rmsnorm":
            impls.append(Impl(name, lambda x, w: rmsnorm.rms_norm(x, w, eps)))
        elif name == "torch_eager":
            impls.append(Impl(name, lambda x, w: eager_rms_norm(x, w, eps)))
        elif name == "torch_fused":
            # PyTorch's own kernel (on the CPU its only one). eps is passed: F.rms_norm's
            # default, None, is torch.finfo(x.dtype).eps, not the bench's. The weight has x's
            # dtype, so the result does too (no promotion to float32).
            impls.append(Impl(name, lambda x, w: F.rms_norm(x, (x.shape[-1],), w, eps)))
        elif name == "torch_compile":
            compiled = torch.compile(eager_rms_norm, dynamic=False)  # one static graph per shape
            impls.append(Impl(name, lambda x, w, c=compiled: c(x, w, eps)))
        elif name == "liger":
            impls.append(_liger(device, eps))
        elif name == "quack":
            impls.append(_quack(device, eps))
        elif name == "flashinfer":
            module, why = _flashinfer_norm(device)
            impls.append(Impl(name, flashinfer_calls(module, eps)["forward"] if module else None, why))
        elif name == "copy":
            impls.append(Impl(name, lambda x, w: x.clone()))
    return impls


def _liger(device: str, eps: float) -> Impl:
    if device != "cuda":
        return Impl("liger", None, "Triton kernels: CUDA only")
    try:
        from liger_kernel.transformers.functional import liger_rms_norm
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return Impl("liger", None, f"not importable ({type(e).__name__}: {e})")
    # casting_mode "llama" (the default) is the seed baseline's rounding; in_place=False keeps
    # dy intact across the replays of the backward graph.
    return Impl("liger", lambda x, w: liger_rms_norm(x, w, eps, in_place=False))


def _quack(device: str, eps: float) -> Impl:
    if device != "cuda":
        return Impl("quack", None, "CuTe DSL kernels: CUDA only")
    try:
        from quack.rmsnorm import rmsnorm as quack_rmsnorm
    except Exception as e:  # noqa: BLE001
        return Impl("quack", None, f"not importable ({type(e).__name__}: {e})")
    return Impl("quack", lambda x, w: quack_rmsnorm(x, w, eps=eps))


def _flashinfer_norm(device: str):
    """flashinfer.norm, or None and why not."""
    if device != "cuda":
        return None, "CUDA kernels: CUDA only"
    try:
        import flashinfer.norm as module
    except Exception as e:  # noqa: BLE001
        return None, f"not importable ({type(e).__name__}: {e})"
    return module, ""


def flashinfer_calls(module, eps: float, static_scale: Optional[torch.Tensor] = None) -> dict[str, Callable]:
    """FlashInfer's norms (`module`: flashinfer.norm) called as the bench calls each form:
    "forward" (x, w) -> y; "add" (x, r, w) -> (y, r_out), FusedAddRMSNorm, which writes r + x
    over r and y over x (vLLM's in-place contract: the bench hands it copies); with a
    `static_scale`, "quant_static" (x, r, w) -> (q, scale), fp8 of y / scale into a tensor
    made here."""
    def add(x, r, w):
        module.fused_add_rmsnorm(x, r, w, eps)
        return x, r

    def quant_static(x, r, w):
        q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
        module.rmsnorm_quant(q, x, w, static_scale, eps)
        return q, static_scale

    calls = {"forward": lambda x, w: module.rmsnorm(x, w, eps), "add": add}
    if static_scale is not None:
        calls["quant_static"] = quant_static
    return calls


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


class Timer:
    """Median seconds per call of a list of calls run back to back."""

    def __init__(self, device: str, reps: int):
        self.device = device
        self.reps = reps
        self.cuda = device == "cuda"
        self.stream = torch.cuda.Stream() if self.cuda else None

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def warm_up(self, calls):
        """Runs each distinct call once (compiles, autotunes, fills the allocator's cache)."""
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                for c in calls:
                    c()
            torch.cuda.current_stream().wait_stream(self.stream)
        else:
            for _ in range(CPU_WARM_UP_PASSES):
                for c in calls:
                    c()
        self._sync()

    def graph(self, calls) -> float:
        """All calls captured in one CUDA graph; the graph replayed `reps` times."""
        graph = torch.cuda.CUDAGraph()
        keep = []  # outputs stay alive: every call writes fresh memory, as in a real model
        with torch.cuda.graph(graph, stream=self.stream):
            for c in calls:
                keep.append(c())
        graph.replay()
        self._sync()
        times = []
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(self.reps):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / len(calls))
        del keep, graph
        return statistics.median(times)

    def loop(self, calls) -> float:
        """Plain calls, back to back: on CUDA, host overhead shows once the kernels are short."""
        times = []
        start, end = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if self.cuda else (None, None)
        for _ in range(self.reps):
            if self.cuda:
                start.record()
                for c in calls:
                    c()
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) * 1e-3
            else:
                t0 = time.perf_counter()
                for c in calls:
                    c()
                seconds = time.perf_counter() - t0
            times.append(seconds / len(calls))
        return statistics.median(times)


def l2_bytes(device: str) -> int:
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return int(getattr(props, "L2_cache_size", 0) or (50 << 20))
    return 32 << 20  # a typical CPU last-level cache; the CPU run is a smoke test anyway


def rotation(model_bytes: int, out_bytes: int, device: str) -> tuple[int, int]:
    """(input sets, calls per graph): the sets cover >= 4x L2; the calls are at least one
    pass over the sets, and more (up to a budget of live outputs) to amortise the replay."""
    sets = max(1, math.ceil(WORKING_SET_L2_MULTIPLE * l2_bytes(device) / model_bytes))
    calls = max(sets, min(MAX_CALLS_PER_GRAPH, OUTPUT_BUDGET_BYTES // max(out_bytes, 1)))
    return sets, calls


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------

# Two roundings to the output dtype (the eager baseline and the llama cast round twice), on
# O(1) outputs, plus float32 accumulation: |err| <= tol * (|ref| + 1).
CHECK_TOL = {torch.float32: 2e-5, torch.float16: 4 * 2.0**-11, torch.bfloat16: 4 * 2.0**-8}


def reference(x, w, eps):
    x64 = x.double()
    return x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w.double()


TOL_16 = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def _close(got, ref, dtype, scale=1.0) -> Optional[str]:
    err = (got.double() - ref).abs()
    bound = CHECK_TOL[dtype] * (ref.abs() + scale)
    worst = (err / bound).max().item()
    return None if worst <= 1.0 else f"max error {err.max().item():.3g} ({worst:.1f}x the tolerance)"


def make_inputs(rows, cols, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, cols, generator=g, device=device, dtype=torch.float32).to(dtype)
    w = (1 + 0.1 * torch.randn(cols, generator=g, device=device, dtype=torch.float32)).to(dtype)
    return x, w


def grads(fn, x, w, dy):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    return y, dx, dw


def correctness_check(device: str, dtype: torch.dtype, eps: float) -> list[str]:
    """rmsnorm vs float64 and F.rms_norm, forward and backward; returns the failures."""
    failures = []
    shapes = [(1, 4096), (37, 1000), (64, 8192), (4096, 128), (8, 65536)]
    for rows, cols in shapes:
        x, w = make_inputs(rows, cols, dtype, device, seed=rows + cols)
        dy = make_inputs(rows, cols, dtype, device, seed=rows + cols + 1)[0]
        y, dx, dw = grads(lambda x, w: rmsnorm.rms_norm(x, w, eps), x, w, dy)
        y64, dx64, dw64 = grads(lambda x, w: reference(x, w, eps), x.double(), w.double(), dy.double())
        for what, got, ref, scale in (
            ("y vs float64", y, y64, 1.0),
            ("y vs F.rms_norm", y, F.rms_norm(x, (cols,), w, eps).double(), 1.0),
            ("dx vs float64", dx, dx64, dx64.abs().max().item()),
            ("dw vs float64", dw, dw64, dw64.abs().max().item()),
        ):
            problem = _close(got, ref, dtype, scale)
            if problem:
                failures.append(f"{rows}x{cols} {what}: {problem}")
    return failures


# ---------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------


@dataclass
class Record:
    op: str  # forward, backward, decode
    dtype: str
    rows: int
    cols: int
    impl: str
    gbps: Optional[float]
    us: Optional[float]
    device: str
    commit: str
    mode: str  # graph, plain, plain_inference (decode); graph or loop (forward/backward)
    note: str = ""


class Bench:
    def __init__(self, args, device: str, device_name: str, commit: str):
        self.args = args
        self.device = device
        self.device_name = device_name
        self.commit = commit
        self.dtype = DTYPES[args.dtype]
        self.esize = torch.tensor([], dtype=self.dtype).element_size()
        self.timer = Timer(device, args.reps)
        self.impls = make_impls(device, args.eps, args.impls)
        self.records: list[Record] = []

    def record(self, op, rows, cols, impl, seconds, mode, model_bytes, note=""):
        ok = seconds is not None
        self.records.append(Record(op, self.args.dtype, rows, cols, impl, model_bytes / seconds / 1e9 if ok else None,
                                   seconds * 1e6 if ok else None, self.device_name, self.commit, mode, note))

    def _time(self, calls_per_set, sets, calls, copy=False):
        """Warm up on every set, then time `calls` calls rotating over the sets. The copy (copy=True)
        takes the faster of a graph and a plain loop (the module's docstring says why)."""
        self.timer.warm_up(calls_per_set)
        seq = [calls_per_set[k % sets] for k in range(calls)]
        if self.timer.cuda:
            seconds = self.timer.graph(seq)
            if copy:
                looped = self.timer.loop(seq)
                if looped < seconds:
                    return looped, "loop"
            return seconds, "graph"
        return self.timer.loop(seq), "loop"

    # forward ---------------------------------------------------------------------------
    def forward(self, rows, cols):
        model_bytes = 2 * rows * cols * self.esize
        sets, calls = rotation(model_bytes, rows * cols * self.esize, self.device)
        if self.device == "cpu":
            sets, calls = 2, 4
        inputs = [make_inputs(rows, cols, self.dtype, self.device, seed=i) for i in range(sets)]
        x0, w0 = inputs[0]
        ref = reference(x0[:CHECK_ROWS], w0, self.args.eps)
        # rmsnorm's answer on the checked rows, made before anything is timed and held in a
        # float64 tensor of its own (a view of an output could be overwritten by a later call),
        # from the same x, weight and eps every peer gets.
        with torch.no_grad():
            ours = rmsnorm.rms_norm(x0, w0, self.args.eps)[:CHECK_ROWS].double()
        for impl in self.impls:
            if impl.fn is None:
                continue
            try:
                with torch.no_grad():
                    if impl.name != "copy":
                        got = impl.fn(x0, w0)[:CHECK_ROWS]
                        # Against float64, then against rmsnorm, in float64 (_close), with the
                        # tolerance of two roundings to the dtype: a peer that rounds like
                        # LlamaRMSNorm (x * rstd to the dtype, then * w: F.rms_norm and eager
                        # PyTorch) is at most that far from rmsnorm's one rounding.
                        problem = _close(got, ref, self.dtype)
                        if not problem and impl.name != "rmsnorm":
                            problem = _close(got, ours, self.dtype)
                            problem = problem and f"{problem} against rmsnorm"
                        if problem:
                            self.record("forward", rows, cols, impl.name, None, "-", model_bytes, f"wrong: {problem}")
                            continue
                    seconds, mode = self._time(self._forward_calls(impl, inputs), sets, calls, impl.name == "copy")
                self.record("forward", rows, cols, impl.name, seconds, mode, model_bytes)
            except Exception as e:  # noqa: BLE001 - a peer that fails on a shape is reported, not fatal
                self.record("forward", rows, cols, impl.name, None, "-", model_bytes, _short(e))
            _free()

    def _forward_calls(self, impl, inputs):
        """One call per input set. On the CPU the copy writes into a tensor allocated here, once
        (copy_ is clone with an out= argument), so that it measures the memory traffic and not
        fresh pages. rmsnorm.rms_norm and F.rms_norm have no out= argument: each allocates its
        result, and the CPU warm-up (CPU_WARM_UP_PASSES) lets the allocator settle on reusing
        those blocks. On CUDA every call gets fresh memory from the graph's pool, as in a model."""
        if impl.name == "copy" and not self.timer.cuda:
            outs = [torch.empty_like(x) for x, _ in inputs]
            return [lambda x=x, o=o: o.copy_(x) for (x, _), o in zip(inputs, outs)]
        return [lambda x=x, w=w, f=impl.fn: f(x, w) for x, w in inputs]

    # backward --------------------------------------------------------------------------
    def backward(self, rows, cols):
        model_bytes = 3 * rows * cols * self.esize
        sets, calls = rotation(model_bytes, rows * cols * self.esize, self.device)
        if self.device == "cpu":
            sets, calls = 2, 4
        eps = self.args.eps
        for impl in self.impls:
            if impl.fn is None:
                continue
            if impl.name == "flashinfer":  # its norms are inference ops: no autograd
                self.record("backward", rows, cols, impl.name, None, "-", model_bytes,
                            "n/a: FlashInfer's norms have no backward")
                continue
            try:
                if impl.name == "copy":  # the same bytes: 1.5*M*N elements read and written
                    n = rows * cols * 3 // 2
                    srcs = [torch.randn(n, device=self.device).to(self.dtype) for _ in range(sets)]
                    with torch.no_grad():
                        seconds, mode = self._time([lambda s=s: s.clone() for s in srcs], sets, calls, copy=True)
                    self.record("backward", rows, cols, impl.name, seconds, mode, model_bytes)
                    continue
                # check on a slice of rows (dw sums over them all)
                x, w = make_inputs(min(rows, CHECK_ROWS), cols, self.dtype, self.device, seed=7)
                dy = make_inputs(min(rows, CHECK_ROWS), cols, self.dtype, self.device, seed=8)[0]
                _, dx, dw = grads(impl.fn, x, w, dy)
                _, dx64, dw64 = grads(lambda x, w: reference(x, w, eps), x.double(), w.double(), dy.double())
                problem = _close(dx, dx64, self.dtype, dx64.abs().max().item()) or _close(
                    dw, dw64, self.dtype, dw64.abs().max().item())
                if problem:
                    self.record("backward", rows, cols, impl.name, None, "-", model_bytes, f"wrong: {problem}")
                    continue
                # forward once per set (on the timing stream, so that autograd runs the
                # backward there too); the graph then holds only the backward
                calls_per_set = []
                stream_ctx = torch.cuda.stream(self.timer.stream) if self.timer.cuda else _nullcontext()
                with stream_ctx:
                    w = make_inputs(rows, cols, self.dtype, self.device, seed=0)[1].requires_grad_()
                    for i in range(sets):
                        x = make_inputs(rows, cols, self.dtype, self.device, seed=i)[0].requires_grad_()
                        dy = make_inputs(rows, cols, self.dtype, self.device, seed=1000 + i)[0]
                        y = impl.fn(x, w)
                        calls_per_set.append(
                            lambda y=y, x=x, dy=dy, w=w: torch.autograd.grad(y, (x, w), dy, retain_graph=True))
                if self.timer.cuda:
                    torch.cuda.current_stream().wait_stream(self.timer.stream)
                seconds, mode = self._time(calls_per_set, sets, calls)
                del calls_per_set, y, x, dy, w
                self.record("backward", rows, cols, impl.name, seconds, mode, model_bytes)
            except Exception as e:  # noqa: BLE001
                self.record("backward", rows, cols, impl.name, None, "-", model_bytes, _short(e))
            _free()

    # decode ----------------------------------------------------------------------------
    def decode(self, rows, cols):
        model_bytes = 2 * rows * cols * self.esize
        x, w = make_inputs(rows, cols, self.dtype, self.device)
        n_graph, n_plain = 100, 200
        for impl in self.impls:
            if impl.fn is None:
                continue
            call = lambda f=impl.fn: f(x, w)  # noqa: E731
            try:
                # an ordinary call: grad mode on, inputs that do not require grad
                self.timer.warm_up([call])
                if self.timer.cuda:
                    self.record("decode", rows, cols, impl.name, self.timer.graph([call] * n_graph), "graph",
                                model_bytes)
                self.record("decode", rows, cols, impl.name, self.timer.loop([call] * n_plain), "plain", model_bytes)
                if impl.name in ("rmsnorm", "copy"):
                    with torch.inference_mode():
                        xi, wi = x.clone(), w.clone()
                        call_i = lambda f=impl.fn: f(xi, wi)  # noqa: E731
                        self.timer.warm_up([call_i])
                        seconds = self.timer.loop([call_i] * n_plain)
                    self.record("decode", rows, cols, impl.name, seconds, "plain_inference", model_bytes)
            except Exception as e:  # noqa: BLE001
                self.record("decode", rows, cols, impl.name, None, "-", model_bytes, _short(e))
            _free()


    # fused forms ----------------------------------------------------------------------
    def fused(self, kind, rows, cols):
        """The residual add ("add", "add_f32r") or an 8-bit output (QUANT_KINDS), checked then
        timed."""
        n = rows * cols
        model_bytes = {"add": 4 * n * self.esize, "add_f32r": 2 * n * self.esize + 8 * n,
                       "quant": n * self.esize + n + 4 * rows, "quant_static": n * self.esize + n,
                       "quant_group": n * self.esize + n + 4 * rows * (cols // 128),
                       "quant_int8": n * self.esize + n + 4 * rows}[kind]
        r_dtype = torch.float32 if kind == "add_f32r" else self.dtype
        sets, calls = rotation(model_bytes, model_bytes // 2, self.device)
        if self.device == "cpu":
            sets, calls = 2, 4
        inputs = []
        for i in range(sets):
            x, w = make_inputs(rows, cols, self.dtype, self.device, seed=i)
            inputs.append((x, make_inputs(rows, cols, r_dtype, self.device, seed=500 + i)[0], w))
        x0, r0, w0 = inputs[0]
        eps = self.args.eps
        wanted = [i for i in self.args.impls if i in FUSED_IMPLS]
        # A static scale that leaves y (about N(0, 1) times a weight near 1) mostly unsaturated.
        static_scale = torch.tensor([6.0 / 448.0], dtype=torch.float32, device=self.device)
        for impl in fused_impls(kind, eps, wanted, min(n, model_bytes // (2 * self.esize)), static_scale,
                                self.device):
            try:
                # An in-place peer gets copies of x and r, so that every impl reads the same
                # inputs (made inside the try: a device out of memory is reported, not fatal).
                own = [(x.clone(), r.clone(), w) for x, r, w in inputs] if impl.in_place else inputs
                with torch.no_grad():
                    if impl.name != "copy":
                        out = impl.fn(*((x0.clone(), r0.clone(), w0) if impl.in_place else (x0, r0, w0)))
                        problem = self._check_fused(kind, out, x0, r0, w0)
                        if problem:
                            self.record(kind, rows, cols, impl.name, None, "-", model_bytes, f"wrong: {problem}")
                            continue
                    seconds, mode = self._time(
                        [lambda a=a, f=impl.fn: f(*a) for a in own], sets, calls, impl.name == "copy"
                    )
                self.record(kind, rows, cols, impl.name, seconds, mode, model_bytes)
            except Exception as e:  # noqa: BLE001 - reported (a backend without the fusion says so)
                self.record(kind, rows, cols, impl.name, None, "-", model_bytes, _short(e))
            _free()

    def _check_fused(self, kind, out, x, r, w) -> Optional[str]:
        k = CHECK_ROWS
        if kind not in QUANT_KINDS:
            y, r_out = out
            s64 = x[:k].double() + r[:k].double()
            return _close(r_out[:k], s64, self.dtype) or _close(y[:k], reference(s64, w, self.args.eps), self.dtype)
        q, s = out
        int8 = q.dtype == torch.int8
        qmax = 127.0 if int8 else 448.0
        sk = s.double().reshape(1, 1) if s.numel() == 1 else s[:k].double()
        if sk.shape[-1] > 1:  # a scale a group of columns: each column's
            sk = sk.repeat_interleave(q.shape[-1] // sk.shape[-1], dim=-1)
        y64 = reference(x[:k], w, self.args.eps)
        y64 = torch.maximum(torch.minimum(y64, qmax * sk), -qmax * sk)  # a static scale saturates
        # within half a code step (int8: s / 2; fp8: 1/16 relative, s / 512 among the
        # subnormals) plus the 16-bit rounding of an eager y
        err = (q[:k].double() * sk - y64).abs()
        step = sk / 2 if int8 else y64.abs() / 16 + sk / 512
        bound = step + 4 * TOL_16[self.dtype] * y64.abs()
        return None if bool((err <= bound).all()) else f"q*s off by {err.max().item():.3g}"


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _short(e: Exception) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def _free():
    if torch.cuda.is_available():
        _clear_launch_error()
        torch.cuda.empty_cache()


def _clear_launch_error() -> None:
    """Takes (and drops) the CUDA runtime's last error. A peer whose launch is refused (an
    invalid configuration: FlashInfer's fused add on rows beyond its shared memory) leaves it
    set, and PyTorch's check after its next launch reports it as that launch's own failure:
    the copy after FlashInfer at 4096 x 65536 read "fails" (H100, 2026-12-07). The runtime is
    the one PyTorch loaded: dlopen by soname returns the library already in the process."""
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            ctypes.CDLL(name).cudaGetLastError()
            return
        except (OSError, AttributeError):
            continue


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------


def _cell(rec: Optional[Record], field: str) -> str:
    if rec is None:
        return "-"
    value = getattr(rec, field)
    if value is None:
        if rec.note.startswith("n/a"):
            return "n/a"
        return "wrong" if rec.note.startswith("wrong") else "fails"
    return f"{value:.1f}" if field == "gbps" else f"{value:.2f}"


def print_table(records, op, impls, title):
    rows = [r for r in records if r.op == op]
    if not rows:
        return
    shapes = sorted({(r.rows, r.cols) for r in rows}, key=lambda s: (s[1], s[0]))
    names = [i for i in impls if any(r.impl == i for r in rows)]
    print(f"\n{title}")
    head = f"{'M x N':>14}" + "".join(f"{n:>14}" for n in names)
    if "rmsnorm" in names and "copy" in names:
        head += f"{'rmsnorm/copy':>14}"
    print(head)
    for m, n in shapes:
        by_impl = {r.impl: r for r in rows if (r.rows, r.cols) == (m, n)}
        line = f"{f'{m} x {n}':>14}" + "".join(f"{_cell(by_impl.get(i), 'gbps'):>14}" for i in names)
        if "rmsnorm" in names and "copy" in names:
            a, b = by_impl.get("rmsnorm"), by_impl.get("copy")
            ratio = f"{a.gbps / b.gbps:.0%}" if a and b and a.gbps and b.gbps else "-"
            line += f"{ratio:>14}"
        print(line)


def print_decode(records, impls):
    rows = [r for r in records if r.op == "decode"]
    if not rows:
        return
    shapes = sorted({(r.rows, r.cols) for r in rows})
    print("\nDecode latency, us per call: CUDA graph / plain call / plain under torch.inference_mode()")
    print(f"{'impl':>14}" + "".join(f"{f'{m} x {n}':>26}" for m, n in shapes))
    for name in impls:
        if not any(r.impl == name for r in rows):
            continue
        line = f"{name:>14}"
        for m, n in shapes:
            by_mode = {r.mode: r for r in rows if r.impl == name and (r.rows, r.cols) == (m, n)}
            failed = next((r for r in rows if r.impl == name and (r.rows, r.cols) == (m, n) and r.us is None), None)
            if failed:
                cell = "fails"
            else:
                cell = " / ".join(_cell(by_mode.get(k), "us") for k in ("graph", "plain", "plain_inference"))
            line += f"{cell:>26}"
        print(line)


def print_notes(records, impls: list[Impl]):
    notes = [f"{i.name}: skipped, {i.note}" for i in impls if i.fn is None]
    notes += [f"{r.op} {r.rows}x{r.cols} {r.impl}: {r.note}" for r in records
              if r.note and not r.note.startswith("n/a")]
    # What does not apply is said once per table and implementation, not for every shape.
    notes += list(dict.fromkeys(f"{r.op} {r.impl}: {r.note}" for r in records if r.note.startswith("n/a")))
    if notes:
        print("\nNotes:")
        for n in notes:
            print(f"  - {n}")


def write_outputs(out_dir, records, meta):
    os.makedirs(out_dir, exist_ok=True)
    stem = f"rmsnorm-bench-{meta['dtype']}"
    with open(os.path.join(out_dir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "records": [asdict(r) for r in records]}, f, indent=1)
    with open(os.path.join(out_dir, stem + ".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(records[0]).keys()) if records else ["op"])
        writer.writeheader()
        for r in records:
            writer.writerow(asdict(r))
    paths = [stem + ".json", stem + ".csv"]
    if plot(os.path.join(out_dir, stem + ".png"), records, meta):
        paths.append(stem + ".png")
    print(f"\nWrote {', '.join(os.path.join(out_dir, p) for p in paths)}")


def plot(path, records, meta) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return False
    ops = [op for op in ("forward", "backward") if any(r.op == op and r.gbps for r in records)]
    if not ops:
        return False
    fig, axes = plt.subplots(1, len(ops), figsize=(7 * len(ops), 4.8), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for impl in IMPLS:
            pts = sorted((r.cols, r.gbps, r.rows) for r in records if r.op == op and r.impl == impl and r.gbps)
            if not pts:
                continue
            style = dict(linestyle="--", color="black") if impl == "copy" else {}
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (hidden size; M as in the table)")
        ax.set_ylabel("GB/s (model bytes)")
        ax.set_title(f"{op}, {meta['dtype']}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"rmsnorm on {meta['device']} ({meta['date']}, {meta['commit']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------


def git_commit() -> str:
    if os.environ.get("RMSNORM_COMMIT"):
        return os.environ["RMSNORM_COMMIT"]
    for where in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=where,
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def describe_device(device: str) -> str:
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        return f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {l2_bytes(device) >> 20} MB L2)"
    return f"CPU ({torch.get_num_threads()} threads)"


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        m, _, n = item.strip().lower().partition("x")
        if not (m.isdigit() and n.isdigit()):
            raise argparse.ArgumentTypeError(f"sizes: expected MxN[,MxN...], got '{item}'")
        sizes.append((int(m), int(n)))
    return sizes


def parse_impls(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"impls: unknown {unknown}; choose from {', '.join(IMPLS)}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rmsnorm.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--sizes", type=parse_sizes, help="forward shapes MxN,... (default: performance.md's)")
    ap.add_argument("--backward-sizes", type=parse_sizes, help="backward shapes (default: performance.md's)")
    ap.add_argument("--decode-sizes", type=parse_sizes, help="decode shapes (default: 1x4096,32x8192)")
    ap.add_argument("--quick", action="store_true", help="a few shapes and fewer repetitions")
    ap.add_argument("--impls", type=parse_impls, default=list(IMPLS), help=f"subset of {','.join(IMPLS)}")
    ap.add_argument("--no-forward", action="store_true")
    ap.add_argument("--no-backward", action="store_true")
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--no-fused", action="store_true", help="skip the residual add and fp8 output tables")
    ap.add_argument("--f32-residual", action="store_true",
                    help="also time the residual add with a float32 residual (16-bit --dtype)")
    ap.add_argument("--fused-sizes", type=parse_sizes, help="shapes of the fused tables (default: 4096x4096, ...)")
    ap.add_argument("--reps", type=int, help="graph replays (or loops) per figure; the median is reported")
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", metavar="DIR", help="write JSON, CSV and a PNG plot there")
    ap.add_argument("--commit", default=None, help="commit to record (default: git describe)")
    args = ap.parse_args(argv)
    args.reps = args.reps or (5 if args.quick or args.device == "cpu" else 20)

    device = args.device
    if device == "cuda" and not rmsnorm.has_cuda_kernels():
        print("This build of rmsnorm has no CUDA kernels; use --device cpu", file=sys.stderr)
        return 2
    if device == "cpu":
        print("No CUDA device: running on the CPU with plain loops. A smoke test, not a measurement.")
        if not keep_cpu_memory():
            print("(malloc could not be told to keep freed memory: large shapes may time page faults)")
    torch._dynamo.config.cache_size_limit = 256  # one compiled graph per shape
    # The backward is replayed (retain_graph=True), which compiled backwards with donated
    # buffers refuse.
    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 256
    if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
        torch._dynamo.config.accumulated_cache_size_limit = 1024

    dtype = DTYPES[args.dtype]
    commit = args.commit or git_commit()
    device_name = describe_device(device)
    meta = {"device": device_name, "dtype": args.dtype, "commit": commit, "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "eps": args.eps, "reps": args.reps,
            "working_set": f">= {WORKING_SET_L2_MULTIPLE}x L2 ({l2_bytes(device) >> 20} MB)"}
    print(f"rmsnorm bench: {device_name}, {args.dtype}, torch {torch.__version__}, commit {commit}, {meta['date']}")

    failures = correctness_check(device, dtype, args.eps)
    if failures:
        print("Correctness check FAILED:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("Correctness check PASSED (forward and backward vs float64 and F.rms_norm)")

    if device == "cpu":
        fwd, bwd, dec = CPU_FORWARD, CPU_BACKWARD, CPU_DECODE
    elif args.quick:
        fwd, bwd, dec = QUICK_FORWARD, QUICK_BACKWARD, DECODE_SIZES
    else:
        fwd, bwd, dec = FORWARD_SIZES, BACKWARD_SIZES, DECODE_SIZES
    fwd, bwd, dec = args.sizes or fwd, args.backward_sizes or args.sizes or bwd, args.decode_sizes or dec

    bench = Bench(args, device, device_name, commit)
    how = "CUDA graph, rotating inputs >= 4x L2" if device == "cuda" else "plain loop"
    if not args.no_forward:
        for m, n in fwd:
            bench.forward(m, n)
        print_table(bench.records, "forward", args.impls,
                    f"Forward, {args.dtype}, GB/s of 2*M*N*s ({how}, median of {args.reps})")
    if not args.no_backward:
        for m, n in bwd:
            bench.backward(m, n)
        print_table(bench.records, "backward", args.impls,
                    f"Backward (dx and dw), {args.dtype}, GB/s of 3*M*N*s ({how}, median of {args.reps})")
    if not args.no_decode:
        for m, n in dec:
            bench.decode(m, n)
        print_decode(bench.records, args.impls)
    if not args.no_fused:
        fused = args.fused_sizes or (CPU_FUSED if device == "cpu" else QUICK_FUSED if args.quick else FUSED_SIZES)
        tables = [
            ("add", f"Residual add + norm, {args.dtype}, GB/s of 4*M*N*s"),
            ("add_f32r", f"Residual add (float32 residual) + norm, {args.dtype}, GB/s of 2*M*N*s + 8*M*N"),
            ("quant", f"Norm + per-row fp8 output, {args.dtype}, GB/s of M*N*s + M*N + 4*M"),
            ("quant_static", f"Norm + static fp8 output, {args.dtype}, GB/s of M*N*s + M*N"),
            ("quant_group", f"Norm + group-128 fp8 output, {args.dtype}, GB/s of M*N*s + M*N + 4*M*N/128"),
            ("quant_int8", f"Norm + per-row int8 output, {args.dtype}, GB/s of M*N*s + M*N + 4*M"),
        ]
        if args.dtype == "fp32" or not args.f32_residual:
            tables = [t for t in tables if t[0] != "add_f32r"]
        for kind, title in tables:
            for m, n in fused:
                if kind != "quant_group" or n % 128 == 0:
                    bench.fused(kind, m, n)
            print_table(bench.records, kind, list(FUSED_IMPLS), f"{title} ({how}, median of {args.reps})")
    print_notes(bench.records, bench.impls)
    if args.out:
        write_outputs(args.out, bench.records, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
