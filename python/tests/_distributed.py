"""Running a test body on several processes of this machine, as the ranks of a process group.

    results = run_ranks(_body, world_size=2, args=(...,))    # [body(rank, world, *args) per rank]

The ranks meet through a TCP store on 127.0.0.1 at a free port, and gloo binds to the
loopback interface only. Processes come from a fork server that has imported torch and
rmsnorm once, so a rank starts in a fraction of a second rather than importing torch again.
Every rank and the whole run are bounded in time: a rank that fails reports its traceback,
and ranks still running at the deadline are terminated and reported.
"""

from __future__ import annotations

import datetime
import io
import multiprocessing
import os
import queue
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist

# What a multi-process test needs of torch; a test module skips with this reason otherwise.
UNAVAILABLE = (
    "torch.distributed is not available in this build of torch"
    if not dist.is_available()
    else ("gloo is not available in this build of torch" if not dist.is_gloo_available() else "")
)

# What a test over NCCL (one rank on this machine's GPU) needs besides: the marks of a
# parameter (`pytest.param(..., marks=NEEDS_NCCL)`), or of a test (`@needs_nccl`).
NEEDS_NCCL = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not (dist.is_available() and dist.is_nccl_available()), reason="this build of torch has no NCCL"),
]


def needs_nccl(test):
    for mark in NEEDS_NCCL:
        test = mark(test)
    return test


# A rank that is still running after this many seconds is stopped and the test fails: the
# tests' bodies take a few seconds, so this only bounds a hang (a rank waiting forever in a
# collective because another died).
DEFAULT_TIMEOUT_S = 90

_context = None


def _fork_server():
    global _context
    if _context is None:
        # fork() from the test process itself would copy its OpenMP thread pools (not fork-safe);
        # a fork server is a fresh process that forks before any pool exists.
        _context = multiprocessing.get_context("forkserver")
        # What the ranks import, once: torch (seconds), rmsnorm, and the Llama of the FSDP2
        # test (seconds more; skipped silently when transformers is not installed).
        _context.set_forkserver_preload(
            ["torch", "torch.distributed.tensor", "rmsnorm", "transformers.models.llama.modeling_llama"]
        )
    return _context


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(body, rank, world_size, port, backend, results, args):
    try:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # ranks talk over the loopback only
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # the project's NCCL setting, before the group exists
        if backend == "nccl":
            torch.cuda.set_device(rank)
        # Ranks share the machine's cores: one intra-op thread each.
        torch.set_num_threads(1)
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=DEFAULT_TIMEOUT_S),
        )
        try:
            # Tensors travel as bytes: a queue would share their storage through file
            # descriptors that vanish when this process exits.
            buffer = io.BytesIO()
            torch.save(body(rank, world_size, *args), buffer)
            results.put((rank, True, buffer.getvalue()))
        finally:
            dist.destroy_process_group()
    except BaseException:  # reported to the test, which fails with it
        results.put((rank, False, traceback.format_exc()))


def run_ranks(body, world_size: int, args: tuple = (), backend: str = "gloo", timeout_s: float = DEFAULT_TIMEOUT_S):
    """Runs body(rank, world_size, *args) on `world_size` processes in one process group;
    returns the ranks' results in rank order. Fails the test with the first rank's error."""
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    ctx = _fork_server()
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(body, rank, world_size, port, backend, results, args), daemon=True)
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    outcome: dict[int, tuple[bool, object]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(outcome) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rank, ok, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs) and results.empty():
                    break  # a rank died without reporting (a crash)
                continue
            outcome[rank] = (ok, value)
            if not ok:
                break  # the other ranks may wait forever for the failed one
    finally:
        for p in procs:
            p.join(timeout=5 if len(outcome) == world_size else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    failed = [(r, v) for r, (ok, v) in sorted(outcome.items()) if not ok]
    if failed:
        pytest.fail(f"rank {failed[0][0]} of {world_size} failed:\n{failed[0][1]}", pytrace=False)
    if len(outcome) < world_size:
        missing = sorted(set(range(world_size)) - set(outcome))
        codes = {r: procs[r].exitcode for r in missing}
        pytest.fail(f"ranks {missing} of {world_size} did not finish within {timeout_s} s (exit codes {codes})")
    return [torch.load(io.BytesIO(outcome[r][1]), weights_only=False) for r in range(world_size)]
