"""torch.ops.rmsnorm.fused_allreduce_add_rms_norm: the ranks' partials read directly, summed in
rank order, the residual add and the norm, in one process.

- residual_out bit for bit against a model of the arithmetic written with torch (the sum in
  float32 in the partials' order, plus the residual in float32, rounded once; float64 for
  float64), y bit for bit against fused_add_rms_norm of an exact zero and that residual_out;
  1 to 16 partials, every dtype pair, with and without a weight, offset, the llama cast;
- one partial is fused_add_rms_norm bit for bit; strided partials read in place;
- refusals naming the argument, before anything is written;
- opcheck, torch.compile (fullgraph) against eager;
- on a GPU: partials in separate buffers of one device against the CPU.

rmsnorm.fused_allreduce_add_rms_norm(..., algorithm="oneshot"), which calls this op on
symmetric memory, is tested in test_allreduce.py.
"""

import re

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _support import (  # noqa: E402
    DEVICES,
    HAS_CUDA,
    RESIDUAL_DTYPES,
    RESIDUAL_IDS,
    assert_close,
    reference,
    require_cuda_kernels,
)

op = torch.ops.rmsnorm.fused_allreduce_add_rms_norm

COUNTS = [1, 2, 3, 5, 16]
SHAPES = [(3, 5, 96), (7, 1000), (1, 1)]


def _inputs(count, shape, dtype, r_dtype, w_dtype=None, device="cpu", seed=0):
    """`count` random partials (each rank's differs), a residual and a weight near 1."""
    partials = []
    for k in range(count):
        g = torch.Generator().manual_seed(1000 * seed + k)
        partials.append(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=dtype, device=device))
    g = torch.Generator().manual_seed(1000 * seed + 999)
    residual = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype=r_dtype, device=device)
    weight = (1 + 0.2 * torch.randn(shape[-1], generator=g, dtype=torch.float64)).to(
        dtype=w_dtype or dtype, device=device
    )
    return partials, residual, weight


def model_residual_out(partials, residual):
    """The library's arithmetic for residual_out, in torch: the partials summed one after the
    other in their order in the accumulator's precision, the residual added, one rounding."""
    acc = torch.float64 if residual.dtype == torch.float64 else torch.float32
    s = partials[0].to(acc)
    for p in partials[1:]:
        s = s + p.to(acc)
    return (s + residual.to(acc)).to(residual.dtype)


def model_y(partials, r_out, weight, eps, offset, cast):
    """y is the norm of residual_out, whatever the partials were: fused_add_rms_norm of an
    exact zero of the partials' dtype (0 + r is r in the accumulator, so its residual_out is
    r_out itself) with r_out as the residual, which keeps the dtype pair, and so y's dtype
    and the llama cast's rounding, of the call under test."""
    zero = torch.zeros_like(partials[0])
    y, r_again = rmsnorm.fused_add_rms_norm(zero, r_out, weight, eps, offset=offset, cast=cast)
    assert torch.equal(r_again, r_out)
    return y


def _variants(dtype):
    """(weight dtype or None, offset, cast): no weight, a weight, Gemma's offset, the llama
    cast, and with 16-bit partials a float32 weight under both casts."""
    out = [(None, 0.0, "fp32"), (dtype, 0.0, "fp32"), (dtype, 1.0, "fp32"), (dtype, 0.0, "llama")]
    if dtype in (torch.float16, torch.bfloat16):
        out += [(torch.float32, 0.0, "fp32"), (torch.float32, 0.0, "llama")]
    return out


# ---------------------------------------------------------------------------------------
# Values (CPU)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("dtype,r_dtype", RESIDUAL_DTYPES, ids=RESIDUAL_IDS)
def test_against_the_model(count, dtype, r_dtype):
    for shape in SHAPES:
        for w_dtype, offset, cast in _variants(dtype):
            what = f"{count} partials {shape} weight {w_dtype} offset {offset} {cast}"
            partials, residual, weight = _inputs(count, shape, dtype, r_dtype, w_dtype or dtype, seed=count)
            weight = weight if w_dtype is not None else None
            before = [p.clone() for p in partials], residual.clone()
            y, r_out = op(partials, residual, weight, 1e-6, offset, cast)
            assert r_out.dtype == r_dtype and r_out.shape == residual.shape, what
            assert y.dtype == rmsnorm._ops._out_dtype(partials[0], weight, cast) and y.shape == residual.shape, what
            assert torch.equal(r_out, model_residual_out(partials, residual)), f"{what}: residual_out"
            assert torch.equal(y, model_y(partials, r_out, weight, 1e-6, offset, cast)), f"{what}: y"
            assert all(torch.equal(a, b) for a, b in zip(partials, before[0])), f"{what}: a partial was written"
            assert torch.equal(residual, before[1]), f"{what}: the residual was written"


@pytest.mark.parametrize("dtype,r_dtype", RESIDUAL_DTYPES, ids=RESIDUAL_IDS)
def test_one_partial_is_fused_add(dtype, r_dtype):
    for w_dtype, offset, cast in _variants(dtype):
        (x,), residual, weight = _inputs(1, (4, 9, 200), dtype, r_dtype, w_dtype or dtype, seed=3)
        weight = weight if w_dtype is not None else None
        y, r_out = op([x], residual, weight, 1e-5, offset, cast)
        want_y, want_r = rmsnorm.fused_add_rms_norm(x, residual, weight, 1e-5, offset=offset, cast=cast)
        assert torch.equal(y, want_y) and torch.equal(r_out, want_r), (w_dtype, offset, cast)
        assert y.dtype == want_y.dtype


def test_the_order_is_the_partials():
    # Partials whose float32 sum depends on the order: 1 + 2^-24 + 2^-24 rounds to 1 when added
    # left to right but not when the small ones are added first.
    one, tiny = torch.ones(2, 8), torch.full((2, 8), 2.0**-24)
    residual = torch.full((2, 8), 0.5)
    _, forward = op([one, tiny, tiny], residual, None, 1e-6, 0.0, "fp32")
    _, backward = op([tiny, tiny, one], residual, None, 1e-6, 0.0, "fp32")
    assert torch.equal(forward, torch.full((2, 8), 1.5))
    assert torch.equal(backward, torch.full((2, 8), 1.5 + 2.0**-23))


def test_strided_partials_are_read_in_place():
    count, dtype = 4, torch.bfloat16
    partials, residual, weight = _inputs(count, (6, 96), dtype, torch.float32, seed=5)
    want = op(partials, residual, weight, 1e-6, 0.0, "fp32")
    # Every partial a slice of a wider buffer (one row stride for all): a (batch, rows) view.
    wide = [torch.randn(6, 160).to(dtype) for _ in range(count)]
    for w_, p in zip(wide, partials):
        w_[:, 32:128] = p
    sliced = [w_[:, 32:128] for w_ in wide]
    got = op(sliced, residual, weight, 1e-6, 0.0, "fp32")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # A transposed last dimension is no view: the partials are read from contiguous copies.
    transposed = [p.t().contiguous().t() for p in partials]
    got = op(transposed, residual.t().contiguous().t(), weight, 1e-6, 0.0, "fp32")
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    # No rows: empty outputs.
    y, r_out = op([p[:0] for p in partials], residual[:0], weight, 1e-6, 0.0, "fp32")
    assert y.shape == r_out.shape == (0, 96)


# ---------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------


def _refusals():
    partials, residual, weight = _inputs(3, (3, 5, 64), torch.bfloat16, torch.float32, torch.float32, seed=7)
    p0, p1, p2 = partials
    transposed = p1.transpose(0, 1).contiguous().transpose(0, 1)  # p1's shape, other strides
    return {
        "no partials": (([], residual, weight), ValueError, "partials: expected 1 to 16 tensors, got 0"),
        "17 partials": (([p0] * 17, residual, weight), ValueError, "partials: expected 1 to 16 tensors, got 17"),
        "shape": (([p0, p1[:, :2], p2], residual, weight), ValueError, "partials[1] has shape (3, 2, 64)"),
        "dtype": (([p0, p1, p2.half()], residual, weight), TypeError, "partials[2] has dtype"),
        "strides": (([p0, transposed, p2], residual, weight), ValueError, "partials[1] has strides"),
        "partials[0] dtype": (([p0.int(), p1, p2], residual, weight), TypeError, "partials[0] has dtype"),
        "residual shape": (
            (partials, residual[:, :2], weight),
            ValueError,
            "residual has shape (3, 2, 64) but partials[0] has (3, 5, 64)",
        ),
        "residual dtype": ((partials, residual.half(), weight), TypeError, "residual has dtype"),
        "weight shape": (
            (partials, residual, weight[:10]),
            ValueError,
            "weight must have shape (64,) to match partials[0]'s last dimension",
        ),
        "weight dtype": ((partials, residual, weight.double()), TypeError, "weight has dtype"),
    }


@pytest.mark.parametrize("name", list(_refusals()))
def test_refusals_name_the_argument(name):
    args, kind, text = _refusals()[name]
    partials, residual, weight = args
    before = [p.clone() for p in partials], residual.clone()
    with pytest.raises(kind, match=r"^rmsnorm: " + re.escape(text)):
        op(partials, residual, weight, 1e-6, 0.0, "fp32")
    # The fake kernel refuses alike (torch.compile fails as eager does).
    with pytest.raises(kind, match=r"^rmsnorm: " + re.escape(text)):
        rmsnorm._ops._fused_allreduce_add_fake(partials, residual, weight, 1e-6, 0.0, "fp32")
    assert all(torch.equal(a, b) for a, b in zip(partials, before[0])) and torch.equal(residual, before[1])


def test_cast_and_offset_refusals():
    partials, residual, weight = _inputs(2, (2, 32), torch.float32, torch.float32)
    with pytest.raises(ValueError, match="cast must be"):
        op(partials, residual, weight, 1e-6, 0.0, "bf16")
    with pytest.raises(ValueError, match="offset must be 0"):
        op(partials, residual, None, 1e-6, 1.0, "fp32")


def test_wrapper_refuses_an_unknown_algorithm():
    # Checked before the process group is looked at: no group is needed to be told.
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"algorithm must be one of 'nccl', 'oneshot', 'twoshot', got 'ring'"):
        rmsnorm.fused_allreduce_add_rms_norm(x, x.clone(), algorithm="ring")


# ---------------------------------------------------------------------------------------
# opcheck, torch.compile
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("count", [1, 3])
@pytest.mark.parametrize("r_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32, None], ids=["wbf16", "wfloat32", "nowt"])
def test_opcheck(device, count, r_dtype, w_dtype):
    require_cuda_kernels(device)
    # A float32 weight under the llama cast gives a float32 y: the fake kernel must say so.
    partials, residual, weight = _inputs(count, (3, 5, 64), torch.bfloat16, r_dtype, w_dtype, device=device)
    weight = weight if w_dtype is not None else None
    offset = 1.0 if w_dtype is not None else 0.0
    torch.library.opcheck(op.default, (partials, residual, weight, 1e-6, offset, "fp32"))
    torch.library.opcheck(op.default, (partials, residual, weight, 1e-5, 0.0, "llama"))


def test_compile_fullgraph():
    torch._dynamo.reset()
    partials, residual, weight = _inputs(3, (4, 8, 128), torch.bfloat16, torch.float32, seed=11)

    def layer(a, b, c, r, w):  # the partials made inside the graph, so that inductor writes code around the op
        return op([a * 2, b, c], r, w, 1e-6, 0.5, "fp32")

    compiled = torch.compile(layer, fullgraph=True)
    got = compiled(*partials, residual, weight)
    want = layer(*partials, residual, weight)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


# ---------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("dtype,r_dtype", RESIDUAL_DTYPES[:5], ids=RESIDUAL_IDS[:5])
def test_cuda_against_cpu(count, dtype, r_dtype):
    require_cuda_kernels("cuda")
    for shape in [(3, 5, 96), (64, 4096)]:
        for w_dtype, offset, cast in _variants(dtype):
            what = f"{count} partials {shape} weight {w_dtype} offset {offset} {cast}"
            partials, residual, weight = _inputs(count, shape, dtype, r_dtype, w_dtype or dtype, seed=count)
            weight = weight if w_dtype is not None else None
            want_y, want_r = op(partials, residual, weight, 1e-6, offset, cast)
            # Each partial in a buffer of its own, as the ranks' buffers are.
            cuda = [p.cuda() for p in partials]
            y, r_out = op(cuda, residual.cuda(), weight.cuda() if weight is not None else None, 1e-6, offset, cast)
            # residual_out is defined to the bit (additions in rank order, one rounding); y
            # within the table of the float64 norm of it (the GPU adds the squares in
            # another order than the CPU).
            assert torch.equal(r_out.cpu(), want_r), f"{what}: residual_out"
            assert y.dtype == want_y.dtype, what
            assert_close(y, reference(want_r, weight, 1e-6, offset), dtype, what=f"{what}: y")
