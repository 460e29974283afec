"""The sharded-row ops in one process: opcheck, shards composed by hand against float64, errors.

The ranks' all-reduce is a plain sum here; test_distributed.py runs the same over processes.
"""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _support import DEVICES, assert_close, device_dtypes, make_inputs, reference, require_cuda_kernels  # noqa: E402

ops = torch.ops.rmsnorm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [True, False])
def test_opcheck(device, dtype, with_weight):
    require_cuda_kernels(device)
    x, w = make_inputs((3, 5, 64), dtype, device)
    w = w if with_weight else None
    xs, ws = x[..., 16:48], (w[16:48] if with_weight else None)  # a shard: strided rows
    sums = ops.partial_sum_squares(x)
    offset = 1.0 if with_weight else 0.0
    torch.library.opcheck(ops.partial_sum_squares.default, (xs,))
    torch.library.opcheck(ops.rms_norm_from_sums.default, (xs, ws, sums, 64, 1e-6, offset, "fp32"))
    torch.library.opcheck(ops.rms_norm_from_sums.default, (xs, ws, sums, 64, 1e-5, 0.0, "llama"))
    _, rstd = ops.rms_norm_from_sums(xs, ws, sums, 64, 1e-6, offset, "fp32")
    dy = torch.randn_like(xs)
    torch.library.opcheck(ops.partial_grad_dot.default, (dy, xs, ws, offset))
    dots = ops.partial_grad_dot(dy, xs, ws, offset)
    torch.library.opcheck(ops.rms_norm_from_sums_bwd.default, (dy, xs, ws, rstd, dots, 64, offset, with_weight))
    torch.library.opcheck(ops.rms_norm_from_sums_bwd.default, (dy, xs, ws, rstd, dots, 64, offset, False))


def _sharded(x, w, dy, bounds, eps=1e-6, offset=0.0, cast="fp32"):
    """y, dx, dw of the steps over column shards [bounds[i], bounds[i+1]), sums added between."""
    n = x.shape[-1]
    shards = list(zip(bounds[:-1], bounds[1:]))
    ws = [w[a:b] if w is not None else None for a, b in shards]
    sums = sum(ops.partial_sum_squares(x[..., a:b]) for a, b in shards)
    fwd = [ops.rms_norm_from_sums(x[..., a:b], wi, sums, n, eps, offset, cast) for (a, b), wi in zip(shards, ws)]
    rstd = fwd[0][1]
    for _, r in fwd:  # every shard computes the same rstd from the same sums
        assert torch.equal(r, rstd)
    dots = sum(ops.partial_grad_dot(dy[..., a:b], x[..., a:b], wi, offset) for (a, b), wi in zip(shards, ws))
    bwd = [
        ops.rms_norm_from_sums_bwd(dy[..., a:b], x[..., a:b], wi, rstd, dots, n, offset, w is not None)
        for (a, b), wi in zip(shards, ws)
    ]
    y = torch.cat([f[0] for f in fwd], -1)
    dx = torch.cat([b_[0] for b_ in bwd], -1)
    dw = torch.cat([b_[1] for b_ in bwd]) if w is not None else None
    return y, dx, dw


def _reference_grads(x, w, dy, eps, offset):
    x64 = x.double().requires_grad_()
    w64 = w.double().requires_grad_() if w is not None else None
    y64 = reference(x64, w64, eps, offset)
    grads = torch.autograd.grad(y64, [t for t in (x64, w64) if t is not None], dy.double())
    return y64.detach(), grads[0], (grads[1] if w is not None else None)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("bounds", [(0, 500, 1000), (0, 334, 667, 1000), (0, 1, 999, 1000), (0, 1000)], ids=str)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_shards_compose_to_the_unsharded_op(device, dtype, bounds, offset):
    require_cuda_kernels(device)
    x, w = make_inputs((2, 7, 1000), dtype, device)
    if offset:
        w = w - 1
    dy = make_inputs((2, 7, 1000), dtype, device, seed=1)[0]
    y, dx, dw = _sharded(x, w, dy, list(bounds), offset=offset)
    y64, dx64, dw64 = _reference_grads(x, w, dy, 1e-6, offset)
    assert_close(y, y64, what="y")
    # As in test_autograd: dx's error is relative to the largest |dx|, dw's to the largest |dw|.
    assert_close(dx, dx64, scale=dx64.abs().max().item(), what="dx")
    assert_close(dw, dw64, scale=dw64.abs().max().item(), what="dw")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("cast", ["fp32", "llama"])
def test_one_shard_is_the_plain_op_bit_for_bit(dtype, cast):
    x, w = make_inputs((9, 4, 300), dtype, "cpu")
    dy = make_inputs((9, 4, 300), dtype, "cpu", seed=2)[0]
    y, rstd = ops.rms_norm_fwd(x, w, 1e-6, 0.0, cast)
    sums = ops.partial_sum_squares(x)
    y1, rstd1 = ops.rms_norm_from_sums(x, w, sums, 300, 1e-6, 0.0, cast)
    assert torch.equal(y, y1) and torch.equal(rstd, rstd1)
    dx, dw = ops.rms_norm_bwd(dy, x, w, rstd, 1e-6, 0.0, True)
    dots = ops.partial_grad_dot(dy, x, w, 0.0)
    dx1, dw1 = ops.rms_norm_from_sums_bwd(dy, x, w, rstd, dots, 300, 0.0, True)
    assert torch.equal(dx, dx1) and torch.equal(dw, dw1)


def test_errors():
    x, w = make_inputs((4, 64), torch.float32, "cpu")
    sums = ops.partial_sum_squares(x)
    with pytest.raises(ValueError, match="full_cols"):
        ops.rms_norm_from_sums(x, w, sums, 63, 1e-6, 0.0, "fp32")
    with pytest.raises(ValueError, match="sums has shape"):
        ops.rms_norm_from_sums(x, w, sums[:3], 64, 1e-6, 0.0, "fp32")
    with pytest.raises(TypeError, match="sums has dtype"):
        ops.rms_norm_from_sums(x, w, sums.double(), 64, 1e-6, 0.0, "fp32")
    with pytest.raises(ValueError, match="last dimension"):
        ops.partial_sum_squares(x[:, :0])
    with pytest.raises(ValueError, match="dy has shape"):
        ops.partial_grad_dot(x[:2], x, w, 0.0)
    with pytest.raises(ValueError, match="dots has shape"):
        ops.rms_norm_from_sums_bwd(x, x, w, sums, sums[:2], 64, 0.0, True)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.partial_grad_dot(x, x, w[:-1], 0.0)
