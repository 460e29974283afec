"""rmsnorm.fused_allreduce_add_rms_norm on 1, 2 and 4 processes of this machine (gloo over 127.0.0.1).

- against torch.distributed.all_reduce + fused_add_rms_norm: bit for bit from the collective's
  own sum, and bit for bit from the inputs of all ranks where the sum is exact in any order;
  float32, bfloat16, float16 (and float64), with and without a weight, a float32 residual
  stream, the llama cast, Gemma's offset; in place and out of place;
- world size 1: no collective, the plain fused op's bytes;
- errors naming the argument, before anything is communicated; no process group;
  algorithm= refusals (an unknown one; "oneshot" or "twoshot" on the CPU; more than 16 ranks);
- torch.compile (fullgraph) against eager;
- on a GPU, NCCL at world size 1, by each algorithm ("oneshot", "twoshot": the symmetric-memory
  buffer, its barriers and the fused op; the buffer grown once and then reused).

The op that "oneshot" calls is tested against a model of its arithmetic, with up to 16
partials, in test_allreduce_op.py.
"""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _distributed import UNAVAILABLE, needs_nccl, run_ranks  # noqa: E402
from _support import assert_close, run_module  # noqa: E402

if UNAVAILABLE:
    pytest.skip(UNAVAILABLE, allow_module_level=True)

import torch.distributed as dist  # noqa: E402

WORLD_SIZES = [2, 4]
SHAPE = (3, 5, 96)

# (dtype, residual dtype, weight dtype or None, cast, offset)
_CASES = [
    (torch.float32, torch.float32, torch.float32, "fp32", 0.0),
    (torch.bfloat16, torch.bfloat16, None, "fp32", 0.0),
    (torch.float16, torch.float16, torch.float16, "fp32", 1.0),
    (torch.bfloat16, torch.float32, torch.float32, "fp32", 0.0),
    (torch.bfloat16, torch.bfloat16, torch.bfloat16, "llama", 0.0),
    (torch.float16, torch.float16, None, "llama", 0.0),
    (torch.float64, torch.float64, torch.float64, "fp32", 0.0),
]
_KINDS = ["exact", "random"]


def _inputs(case, kind, rank):
    """Rank `rank`'s partial output, and the residual and weight every rank shares.

    "exact": multiples of 1/16 below 1 in magnitude, whose sums over up to 4 ranks are exact
    in every dtype, whatever the order; "random": normal data, whose sum depends on the order."""
    dtype, r_dtype, w_dtype, _, _ = case
    g = torch.Generator().manual_seed(100 + rank)
    if kind == "exact":
        x = torch.randint(-15, 16, SHAPE, generator=g).double() / 16
    else:
        x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    residual = torch.randn(SHAPE, generator=g, dtype=torch.float64) * 2
    weight = 1 + 0.2 * torch.randn(SHAPE[-1], generator=g, dtype=torch.float64)
    return x.to(dtype), residual.to(r_dtype), (weight.to(w_dtype) if w_dtype is not None else None)


def _call(case, x, residual, weight, **kw):
    _, _, _, cast, offset = case
    return rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, 1e-6, offset=offset, cast=cast, **kw)


def _body(rank, world):
    out = []
    for case in _CASES:
        for kind in _KINDS:
            x, residual, weight = _inputs(case, kind, rank)
            x0, r0 = x.clone(), residual.clone()
            y, r_out = _call(case, x, residual, weight)
            untouched = torch.equal(x, x0) and torch.equal(residual, r0)
            # The collective's own sum, for the reference (gloo sums the same bytes the same way).
            s = x0.clone()
            dist.all_reduce(s)
            # In place: the all-reduce on x's storage, then y into x and r_out into residual.
            xi, ri = x0.clone(), r0.clone()
            yi, r_outi = _call(case, xi, ri, weight, inplace=True)
            same_storage = yi is xi and r_outi is ri
            out.append((y, r_out, untouched, s, yi, r_outi, same_storage))
    return out


@pytest.mark.parametrize("world", WORLD_SIZES)
def test_against_all_reduce_then_fused_add(world):
    ranks = run_ranks(_body, world)
    i = 0
    for case in _CASES:
        dtype, _, _, cast, offset = case
        for kind in _KINDS:
            what = f"{dtype} residual {case[1]} weight {case[2]} {cast} offset {offset} {kind}"
            partials = [_inputs(case, kind, r)[0] for r in range(world)]
            _, residual, weight = _inputs(case, kind, 0)
            y0, r0 = ranks[0][i][:2]
            for rank, (y, r_out, untouched, s, yi, r_outi, same_storage) in enumerate(r[i] for r in ranks):
                assert untouched, f"{what}: rank {rank}: x_partial or residual modified out of place"
                assert same_storage, f"{what}: rank {rank}: in place did not return x_partial and residual"
                # Every rank has the same bytes, which are the fused op's on the collective's sum.
                assert torch.equal(y, y0) and torch.equal(r_out, r0), f"{what}: rank {rank} differs from rank 0"
                want_y, want_r = rmsnorm.fused_add_rms_norm(s, residual, weight, 1e-6, offset=offset, cast=cast)
                assert torch.equal(y, want_y) and torch.equal(r_out, want_r), f"{what}: rank {rank} out of place"
                assert torch.equal(yi, want_y) and torch.equal(r_outi, want_r), f"{what}: rank {rank} in place"
                assert y.dtype == want_y.dtype and r_out.dtype == residual.dtype
                sum64 = torch.stack([p.double() for p in partials]).sum(0)
                if kind == "exact":
                    # An exact sum: the reference is computed here from all ranks' inputs.
                    assert torch.equal(s, sum64.to(dtype)), what
                    local = sum64.to(dtype)
                    want_y, want_r = rmsnorm.fused_add_rms_norm(local, residual, weight, 1e-6, offset=offset, cast=cast)
                    assert torch.equal(y, want_y) and torch.equal(r_out, want_r), f"{what}: against one process"
                else:
                    # The sum in the collective's order: within a few roundings of each partial sum.
                    scale = torch.stack([p.double().abs() for p in partials]).sum(0).max().item()
                    assert_close(s, sum64, dtype, scale=scale, what=f"{what}: sum")
            i += 1


def _world1_body(rank, world):
    def no_collective(*args, **kwargs):
        raise AssertionError("a group of one rank must not call all_reduce")

    dist.all_reduce = no_collective  # this rank's process only
    out = []
    for case in _CASES:
        x, residual, weight = _inputs(case, "random", 0)
        y, r_out = _call(case, x, residual, weight)
        want = rmsnorm.fused_add_rms_norm(x, residual, weight, 1e-6, offset=case[4], cast=case[3])
        xi, ri = x.clone(), residual.clone()
        yi, r_outi = _call(case, xi, ri, weight, inplace=True, group=dist.group.WORLD)
        out_of_place = torch.equal(y, want[0]) and torch.equal(r_out, want[1])
        out.append((out_of_place, torch.equal(yi, want[0]), torch.equal(r_outi, want[1])))
    return out


def test_world_size_1_makes_no_collective():
    (result,) = run_ranks(_world1_body, 1)
    for case, checks in zip(_CASES, result):
        assert all(checks), (case, checks)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def _error_body(rank, world):
    x, residual, weight = _inputs(_CASES[0], "random", rank)
    x16 = x.to(torch.bfloat16)
    w32 = weight.float()
    calls = {
        "residual shape": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual[:, :2], weight),
        "weight shape": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight[:10]),
        "x dtype": lambda: rmsnorm.fused_allreduce_add_rms_norm(x.int(), residual, None),
        "residual dtype": lambda: rmsnorm.fused_allreduce_add_rms_norm(x16, residual.half(), None),
        "weight dtype": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight.half()),
        "x not a tensor": lambda: rmsnorm.fused_allreduce_add_rms_norm(x.tolist(), residual),
        "cast": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, cast="bf16"),
        "offset without weight": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, None, offset=1.0),
        "group type": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, group="world"),
        "requires grad": lambda: rmsnorm.fused_allreduce_add_rms_norm(x.requires_grad_(), residual, weight),
        "llama in place": lambda: rmsnorm.fused_allreduce_add_rms_norm(
            x16, residual.to(torch.bfloat16), w32, cast="llama", inplace=True
        ),
        "strided in place": lambda: rmsnorm.fused_allreduce_add_rms_norm(
            x.transpose(0, 1), residual.transpose(0, 1), weight, inplace=True
        ),
        "algorithm": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, algorithm="two-shot"),
        "oneshot on the CPU": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, algorithm="oneshot"),
        "twoshot on the CPU": lambda: rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, algorithm="twoshot"),
    }
    out = {}
    for name, call in calls.items():
        x.requires_grad_(False)
        try:
            call()
            out[name] = None
        except Exception as e:  # noqa: BLE001  (reported to the test)
            out[name] = (type(e).__name__, str(e))
    # A group without this rank: every rank creates it, rank 0 alone is in it.
    sub = dist.new_group([0])
    try:
        y, _ = rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, group=sub)
        alone = torch.equal(y, rmsnorm.fused_add_rms_norm(x, residual, weight)[0])  # rank 0: no collective
        out["not a member"] = None if rank != 0 else ("ok", str(alone))
    except Exception as e:  # noqa: BLE001
        out["not a member"] = (type(e).__name__, str(e))
    # Nothing was communicated by the failed calls: the next collective pairs up as usual.
    y, _ = rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight)
    out["after"] = y
    return out


def test_errors_name_the_argument():
    ranks = run_ranks(_error_body, 2)
    expected = {
        "residual shape": ("ValueError", "residual has shape"),
        "weight shape": ("ValueError", "weight must have shape"),
        "x dtype": ("TypeError", "x_partial has dtype"),
        "residual dtype": ("TypeError", "residual has dtype"),
        "weight dtype": ("TypeError", "weight has dtype"),
        "x not a tensor": ("TypeError", "x_partial must be a tensor"),
        "cast": ("ValueError", "cast must be"),
        "offset without weight": ("ValueError", "offset must be 0"),
        "group type": ("TypeError", "group must be"),
        "requires grad": ("RuntimeError", "gradients are not supported"),
        "llama in place": ("TypeError", "inplace=True cannot write"),
        "strided in place": ("ValueError", "contiguous x_partial"),
        "algorithm": ("ValueError", "algorithm must be one of 'nccl', 'oneshot', 'twoshot', got 'two-shot'"),
        "oneshot on the CPU": ("ValueError", "algorithm='oneshot' needs CUDA tensors"),
        "twoshot on the CPU": ("ValueError", "algorithm='twoshot' needs CUDA tensors"),
    }
    for rank, out in enumerate(ranks):
        for name, (kind, text) in expected.items():
            assert out[name] is not None, f"rank {rank}: {name}: no error"
            assert out[name][0] == kind and text in out[name][1], (rank, name, out[name])
            assert out[name][1].startswith("rmsnorm.fused_allreduce_add_rms_norm: "), out[name][1]
        if rank == 0:
            assert out["not a member"] == ("ok", "True")
        else:
            assert out["not a member"][0] == "ValueError" and "not a member" in out["not a member"][1]
    assert torch.equal(ranks[0]["after"], ranks[1]["after"])


def _too_many_ranks_body(rank, world):
    # A group of 17 as this call sees it: oneshot refuses it before looking at the device.
    dist.get_world_size = lambda group=None: 17  # this rank's process only
    x, residual, weight = _inputs(_CASES[0], "random", rank)
    try:
        rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, algorithm="oneshot")
    except ValueError as e:
        return str(e)
    return None


def test_oneshot_refuses_more_than_16_ranks():
    (message,) = run_ranks(_too_many_ranks_body, 1)
    assert message is not None and message.startswith("rmsnorm.fused_allreduce_add_rms_norm: ")
    assert "at most 16 ranks' partials, the group has 17" in message, message


def test_without_a_process_group():
    if dist.is_initialized():
        pytest.skip("this process has a default process group")
    x = torch.randn(2, 8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        rmsnorm.fused_allreduce_add_rms_norm(x, torch.randn(2, 8))


# ---------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------


def _compile_body(rank, world):
    case = _CASES[1]
    x, residual, weight = _inputs(case, "random", rank)

    def out_of_place(x, residual, weight):
        return rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, 1e-6, group=dist.group.WORLD)

    def in_place(x, residual, weight):
        rmsnorm.fused_allreduce_add_rms_norm(x, residual, weight, 1e-6, inplace=True)

    results = []
    for fn in (torch.compile(out_of_place, fullgraph=True), out_of_place):
        results.append((*fn(x, residual, weight), x.clone(), residual.clone()))
    # In place through AOT autograd's functionalisation (the all-reduce and the op on graph
    # inputs become out-of-place ops and copies back) without inductor's code generation,
    # which the out-of-place call has already exercised: compiling is slow on a small machine.
    for fn in (torch.compile(in_place, fullgraph=True, backend="aot_eager"), in_place):
        xi, ri = x.clone(), residual.clone()
        fn(xi, ri, weight)
        results.append((xi, ri))
    return results


def test_under_torch_compile():
    # The fused op is opaque to the compiler and the all-reduce is traced: the same bytes as eager.
    for rank, (compiled, eager, compiled_i, eager_i) in enumerate(run_ranks(_compile_body, 2, timeout_s=300)):
        for got, want in zip(compiled, eager):
            assert torch.equal(got, want), f"rank {rank}: out of place"
        x, residual, _ = _inputs(_CASES[1], "random", rank)
        assert torch.equal(compiled[2], x) and torch.equal(compiled[3], residual)
        for got, want in zip(compiled_i, eager_i):
            assert torch.equal(got, want), f"rank {rank}: in place"
        assert torch.equal(compiled_i[0], eager[0])


# ---------------------------------------------------------------------------------------
# On a GPU: NCCL at world size 1
# ---------------------------------------------------------------------------------------


def _nccl_body(rank, world, algorithm):
    from rmsnorm import allreduce

    out = []
    for case in _CASES[:5]:
        x, residual, weight = (t.cuda() if t is not None else None for t in _inputs(case, "random", 0))
        got = _call(case, x, residual, weight, algorithm=algorithm)
        want = rmsnorm.fused_add_rms_norm(x, residual, weight, 1e-6, offset=case[4], cast=case[3])
        xi, ri = x.clone(), residual.clone()
        got_i = _call(case, xi, ri, weight, inplace=True, algorithm=algorithm)
        same_storage = got_i[0] is xi and got_i[1] is ri
        out.append([t.cpu() for t in (*got, *want, xi, ri)] + [same_storage])
    # A partial larger than any before grows the symmetric buffer once; smaller ones reuse it.
    buffers = []
    for rows in (64, 2, 64):
        x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        residual = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
        got = rmsnorm.fused_allreduce_add_rms_norm(x, residual, None, algorithm=algorithm)
        want = rmsnorm.fused_add_rms_norm(x, residual, None)
        out.append([t.cpu() for t in (*got, *want, x, residual)] + [True])
        buffers.append([(entry[1].numel(), id(entry[2])) for entry in allreduce._SYMMETRIC_BUFFERS.values()])
    return out, buffers


@needs_nccl
@pytest.mark.parametrize("algorithm", ["nccl", "oneshot", "twoshot"])
def test_nccl_world_size_1(algorithm):
    ((out, buffers),) = run_ranks(_nccl_body, 1, args=(algorithm,), backend="nccl", timeout_s=180)
    for y, r_out, y_want, r_want, yi, ri, same_storage in out[: len(_CASES[:5])]:
        # One rank: its partial is the sum ("nccl": no collective; "oneshot", "twoshot": the
        # symmetric buffer is the op's one partial, which is fused_add_rms_norm bit for bit;
        # "twoshot"'s one block is every row).
        assert torch.equal(y, y_want) and torch.equal(r_out, r_want)
        assert torch.equal(yi, y_want) and torch.equal(ri, r_want) and same_storage
    for y, r_out, y_want, r_want, _, _, _ in out[len(_CASES[:5]) :]:
        assert torch.equal(y, y_want) and torch.equal(r_out, r_want)
    if algorithm == "nccl":
        assert buffers == [[], [], []]
    else:
        # One buffer for the group and device: 64 x 4096 bfloat16 is the largest partial,
        # a power of two of bytes; the smaller ones after it kept the same handle.
        # "twoshot" keeps y and residual_out beside the partial: three regions, 4 x as much.
        regions = 1 if algorithm == "oneshot" else 4
        assert len(buffers[0]) == 1 and buffers[0][0][0] == regions * 64 * 4096 * 2, buffers
        assert buffers[1] == buffers[0] and buffers[2] == buffers[0], buffers


# ---------------------------------------------------------------------------------------
# python -m rmsnorm.bench_allreduce
# ---------------------------------------------------------------------------------------

_BENCH_HEADER = "M x N  all-reduce   fused add  nccl + add     oneshot     twoshot  nccl+add/oneshot  target"


def test_bench_allreduce_smoke():
    """python -m rmsnorm.bench_allreduce checks, then times, on this machine's device at world
    size 1: gloo on the CPU; on a GPU, NCCL with oneshot and twoshot checked and timed too."""
    out = run_module("rmsnorm.bench_allreduce", "--sizes", "8x256", "--reps", "2", timeout=180)
    assert "Correctness check PASSED" in out, out
    assert _BENCH_HEADER in out, out
    # 8x256, all-reduce, fused add, nccl + add, oneshot, twoshot, the ratio, the verdict
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["8x256"])
    assert all(float(cell) > 0 for cell in row[1:4]), row
    if torch.cuda.is_available():
        assert "oneshot's bit for bit" in out and "twoshot's bit for bit" in out, out
        assert float(row[4]) > 0 and float(row[5]) > 0, row
        assert row[6].endswith("x") and row[7] in ("meets", "misses"), row
    else:
        assert row[4:] == ["n/a", "n/a", "n/a", "n/a"], row
        assert "oneshot: not timed (CUDA only)" in out, out
        assert "twoshot: not timed (CUDA only)" in out, out


def _bench_body(rank, world, corrupt_rank):
    import contextlib
    import io

    from rmsnorm import bench_allreduce

    if rank == corrupt_rank:  # this rank's process only: its nccl + add returns a wrong y
        real = rmsnorm.fused_allreduce_add_rms_norm

        def wrong(*args, **kwargs):
            y, r_out = real(*args, **kwargs)
            return y * 1.25, r_out

        rmsnorm.fused_allreduce_add_rms_norm = wrong
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        rc = bench_allreduce.main(["--device", "cpu", "--sizes", "8x256", "--reps", "2"])
    return rc, text.getvalue(), dist.is_initialized()


@pytest.mark.parametrize("corrupt_rank", [None, 1], ids=["right", "rank-1-wrong"])
def test_bench_allreduce_two_ranks(corrupt_rank):
    """Two ranks in a process group made by the caller (which the bench leaves to it): the
    check on every rank, rank 0 prints, and a wrong result on another rank fails the run
    on both, before anything is timed."""
    (rc0, text0, kept0), (rc1, text1, kept1) = run_ranks(_bench_body, 2, args=(corrupt_rank,), timeout_s=180)
    assert kept0 and kept1
    assert text1 == "", text1
    assert "gloo, world size 2" in text0, text0
    if corrupt_rank is None:
        assert rc0 == 0 and rc1 == 0, text0
        assert "Correctness check PASSED" in text0 and _BENCH_HEADER in text0, text0
        assert any(line.split()[:1] == ["8x256"] for line in text0.splitlines()), text0
    else:
        assert rc0 == 1 and rc1 == 1, text0
        assert "Correctness check FAILED" in text0 and "rank 1: 8x256 nccl y: max error" in text0, text0
        assert "rank 0:" not in text0 and _BENCH_HEADER not in text0, text0
