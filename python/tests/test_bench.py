"""python -m rmsnorm.bench on the CPU: a tiny run of every table, whose checks must pass.

Each peer's output is compared with float64 and with rmsnorm's before it is timed; a peer
that disagrees shows "wrong" in its cell (and a "wrong: ..." note) instead of a figure. The
CPU forward table has PyTorch's own kernel, F.rms_norm (torch_fused), beside rmsnorm, eager
PyTorch and the copy.
"""

import re

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm  # noqa: F401
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _support import run_module  # noqa: E402

IMPLS = ["rmsnorm", "torch_eager", "torch_fused", "copy"]  # torch.compile left out: minutes of C++


def run_bench(*args):
    return run_module("rmsnorm.bench", "--device", "cpu", "--reps", "2", *args)


def test_cpu_bench_checks_every_peer():
    out = run_bench(
        "--impls", ",".join(IMPLS),
        "--sizes", "64x1024",
        "--backward-sizes", "64x1024",
        "--decode-sizes", "1x1024",
        "--fused-sizes", "64x1024",
        "--f32-residual",
    )
    assert "Correctness check PASSED" in out, out
    # No cell or note says a peer disagreed, or that one could not run.
    assert not re.search(r"\bwrong\b", out), out
    assert not re.search(r"\bfails\b", out), out
    # The forward table times all four: a figure (not "-") in every column.
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Forward,"))
    columns = lines[head + 1].split()
    assert columns[:3] == ["M", "x", "N"] and columns[3:3 + len(IMPLS)] == IMPLS, lines[head + 1]
    cells = lines[head + 2].split()
    assert cells[:3] == ["64", "x", "1024"], lines[head + 2]
    for name, cell in zip(IMPLS, cells[3:3 + len(IMPLS)]):
        assert re.fullmatch(r"\d+\.\d", cell), f"{name}: {cell!r} in\n{out}"
    # The float32 residual's table (--f32-residual): rmsnorm checked, then timed beside eager
    # PyTorch and the copy.
    head = next(i for i, line in enumerate(lines) if line.startswith("Residual add (float32 residual)"))
    assert lines[head + 1].split()[3:6] == ["rmsnorm", "torch_eager", "copy"], lines[head + 1]
    cells = lines[head + 2].split()
    assert cells[:3] == ["64", "x", "1024"], lines[head + 2]
    assert all(re.fullmatch(r"\d+\.\d", cell) for cell in cells[3:6]), lines[head + 2]
    # The 8-bit tables (per-row fp8, static fp8, group-128 fp8, per-row int8): rmsnorm checked
    # against float64 (within half a code step), then timed beside eager PyTorch and the copy.
    for title in ("Norm + per-row fp8 output", "Norm + static fp8 output", "Norm + group-128 fp8 output",
                  "Norm + per-row int8 output"):
        head = next(i for i, line in enumerate(lines) if line.startswith(title))
        assert lines[head + 1].split()[3:6] == ["rmsnorm", "torch_eager", "copy"], lines[head + 1]
        cells = lines[head + 2].split()
        assert cells[:3] == ["64", "x", "1024"], lines[head + 2]
        assert all(re.fullmatch(r"\d+\.\d", cell) for cell in cells[3:6]), f"{title}: {lines[head + 2]}"
