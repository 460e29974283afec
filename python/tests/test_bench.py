"""python -m rmsnorm.bench on the CPU: a tiny run of every table, whose checks must pass.

Each peer's output is compared with float64 and with rmsnorm's before it is timed; a peer
that disagrees shows "wrong" in its cell (and a "wrong: ..." note) instead of a figure. The
CPU forward table has PyTorch's own kernel, F.rms_norm (torch_fused), beside rmsnorm, eager
PyTorch and the copy.
"""

import re
import types

import pytest

pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm  # noqa: F401
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

import torch  # noqa: E402
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


class _StandIn:
    """flashinfer.norm's three calls, written in PyTorch with FlashInfer's argument order and
    in-place contract (fused_add_rmsnorm writes r + x over r and the norm over x;
    rmsnorm_quant writes into the fp8 tensor it is given), so that the bench's wrappers and
    its handling of an in-place peer run on the CPU."""

    @staticmethod
    def rmsnorm(x, w, eps):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)

    @staticmethod
    def fused_add_rmsnorm(x, r, w, eps):
        r.copy_((r.float() + x.float()).to(r.dtype))
        x.copy_(_StandIn.rmsnorm(r, w, eps))

    @staticmethod
    def rmsnorm_quant(out, x, w, scale, eps):
        y = _StandIn.rmsnorm(x, w, eps).float()
        out.copy_((y / scale).clamp(-448.0, 448.0).to(out.dtype))


def _bench_with_stand_in(monkeypatch, impls):
    import rmsnorm.bench as bench

    monkeypatch.setattr(bench, "_flashinfer_norm", lambda device: (_StandIn, ""))
    args = types.SimpleNamespace(dtype="bf16", reps=2, eps=1e-6, impls=impls)
    return bench, bench.Bench(args, "cpu", "cpu (test)", "test")


def test_flashinfer_is_checked_and_timed_on_its_own_copies(monkeypatch):
    # The residual add writes over x and r: checked on copies of x0 and r0 (else its outputs
    # would be compared with a reference made from what it overwrote: "wrong") and timed on
    # copies of every set, so that rmsnorm, timed after it, still reads the inputs it checked.
    bench, b = _bench_with_stand_in(monkeypatch, ["flashinfer", "rmsnorm", "copy"])
    for kind in ("add", "quant_static"):
        b.fused(kind, 64, 1024)
    b.forward(64, 1024)
    got = {(r.op, r.impl): r for r in b.records}
    for key in (("add", "flashinfer"), ("add", "rmsnorm"), ("quant_static", "flashinfer"),
                ("forward", "flashinfer"), ("forward", "rmsnorm")):
        assert key in got, f"{key} not timed: {sorted(got)}"
        assert got[key].gbps is not None, f"{key}: {got[key].note}"
    # FlashInfer has no per-row, group or int8 output, nor a float32 residual: left out.
    assert {i.name for i in bench.fused_impls("quant", 1e-6, ["flashinfer", "rmsnorm"], 1, None, "cpu")} == {"rmsnorm"}


def test_flashinfer_outputs_are_the_forms_the_checks_take(monkeypatch):
    bench, _ = _bench_with_stand_in(monkeypatch, ["flashinfer"])
    scale = torch.tensor([6.0 / 448.0])
    calls = bench.flashinfer_calls(_StandIn, 1e-6, scale)
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    r = torch.randn(8, 256, dtype=torch.bfloat16)
    w = torch.rand(256, dtype=torch.bfloat16) + 0.5
    y_ref, r_ref = bench.eager_add_rms_norm(x, r, w, 1e-6)
    y, r_out = calls["add"](x.clone(), r.clone(), w)
    assert torch.equal(r_out, r_ref)
    assert torch.allclose(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    q, s = calls["quant_static"](x, r, w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape and s is scale
    # Without a static scale there is no fp8 call to make.
    assert "quant_static" not in bench.flashinfer_calls(_StandIn, 1e-6)


def test_flashinfer_backward_reads_not_applicable(monkeypatch, capsys):
    # FlashInfer's norms are inference ops without autograd: its backward cell says so ("n/a")
    # instead of reporting a failure, and the other implementations are still timed.
    bench, b = _bench_with_stand_in(monkeypatch, ["flashinfer", "rmsnorm", "copy"])
    b.backward(64, 1024)
    got = {r.impl: r for r in b.records if r.op == "backward"}
    assert got["flashinfer"].gbps is None and got["flashinfer"].note.startswith("n/a"), got["flashinfer"]
    assert bench._cell(got["flashinfer"], "gbps") == "n/a"
    assert got["rmsnorm"].gbps is not None and got["copy"].gbps is not None
    # Said once in the notes, however many shapes the table has.
    b.backward(64, 512)
    bench.print_notes(b.records, [])
    out = capsys.readouterr().out
    assert out.count("FlashInfer's norms have no backward") == 1, out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_a_refused_peer_launch_is_not_reported_by_the_next_implementation():
    # A peer's refused launch leaves the CUDA runtime's last error set; PyTorch's check after
    # the next kernel would report it as that kernel's failure (the copy read "fails" after
    # FlashInfer's fused add at 4096 x 65536). The bench drops it after every implementation.
    import ctypes

    from rmsnorm import bench

    torch.cuda.init()
    cudart = ctypes.CDLL("libcudart.so.13")  # PyTorch's runtime, already in the process
    ptr = ctypes.c_void_p()
    assert cudart.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(1 << 62)) != 0  # refused: sets the error
    assert cudart.cudaPeekAtLastError() != 0
    bench._free()
    assert cudart.cudaPeekAtLastError() == 0
    x = torch.randn(4096, device="cuda")
    torch.testing.assert_close((x * 2).cpu(), x.cpu() * 2)
