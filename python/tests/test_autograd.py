"""Autograd: gradcheck in float64, gradients against a float64 reference in every dtype."""

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

from _support import DEVICES, assert_close, device_dtypes, make_inputs, reference, require_cuda_kernels  # noqa: E402


@pytest.mark.parametrize(
    "with_weight,offset,cast",
    [(True, 0.0, "fp32"), (True, 1.0, "fp32"), (True, 0.0, "llama"), (False, 0.0, "fp32")],
)
@pytest.mark.parametrize("layout", ["contiguous", "strided rows", "batched"])
def test_gradcheck_float64_cpu(with_weight, offset, cast, layout):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 8, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.9 + 0.2 * torch.rand(9, generator=g, dtype=torch.float64)).requires_grad_()
    view = {
        "contiguous": lambda b: b,
        "strided rows": lambda b: b[:, ::2],  # (3, 4, 9): rows 2*9 apart
        "batched": lambda b: b.transpose(0, 1),  # (8, 3, 9): two stride groups
    }[layout]

    def fn(b, w):
        return rmsnorm.rms_norm(view(b), w if with_weight else None, 1e-5, offset=offset, cast=cast)

    assert torch.autograd.gradcheck(fn, (base, w))


def _grads(fn, x, w, dy):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w)
    return (y,) + torch.autograd.grad(y, (x, w), dy)


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("offset", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(64, 1000), (2, 16, 4096)], ids=str)
def test_gradients_match_float64_reference(device, dtype, offset, shape):
    require_cuda_kernels(device)
    x, w = make_inputs(shape, dtype, device)
    dy = make_inputs(shape, dtype, device, seed=1)[0]
    y, dx, dw = _grads(lambda x, w: rmsnorm.rms_norm(x, w, 1e-6, offset=offset), x, w, dy)
    y64, dx64, dw64 = _grads(lambda x, w: reference(x, w, 1e-6, offset), x.double(), w.double(), dy.double())
    assert dx.dtype == dtype and dw.dtype == w.dtype
    assert_close(y, y64, what="y")
    # dx = rstd * (dy*w - x_hat * mean(dy*w*x_hat)): terms of the row's size cancel, so the
    # error is relative to the largest |dx| of the tensor, not to each element.
    assert_close(dx, dx64, scale=dx64.abs().max().item(), what="dx")
    # dw sums over all rows in fp32, then rounds once to w's dtype.
    assert_close(dw, dw64, scale=dw64.abs().max().item(), what="dw")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cast", ["fp32", "llama"])
def test_float32_weight_gradients(device, dtype, cast):
    require_cuda_kernels(device)
    x, w = make_inputs((32, 512), dtype, device, weight_dtype=torch.float32)
    y = rmsnorm.rms_norm(x, w, 1e-6, cast=cast)
    dy = torch.randn(y.shape, dtype=y.dtype, device=device)
    _, dx, dw = _grads(lambda x, w: rmsnorm.rms_norm(x, w, 1e-6, cast=cast), x, w, dy)
    _, dx64, dw64 = _grads(lambda x, w: reference(x, w, 1e-6), x.double(), w.double(), dy.double())
    assert dx.dtype == dtype and dw.dtype == torch.float32
    assert_close(dx, dx64, dtype, scale=dx64.abs().max().item(), what="dx")
    assert_close(dw, dw64, dtype, scale=dw64.abs().max().item(), what="dw")


@pytest.mark.parametrize("device", DEVICES)
def test_partial_requires_grad(device):
    require_cuda_kernels(device)
    x, w = make_inputs((8, 256), torch.float32, device)
    dy = torch.randn_like(x)
    # only x
    xg = x.clone().requires_grad_()
    rmsnorm.rms_norm(xg, w).backward(dy)
    _, dx64, _ = _grads(lambda x, w: reference(x, w), x.double(), w.double(), dy.double())
    assert_close(xg.grad, dx64, scale=dx64.abs().max().item(), what="dx")
    # only the weight
    wg = w.clone().requires_grad_()
    rmsnorm.rms_norm(x, wg).backward(dy)
    _, _, dw64 = _grads(lambda x, w: reference(x, w), x.double(), w.double(), dy.double())
    assert_close(wg.grad, dw64, scale=dw64.abs().max().item(), what="dw")
    # no weight at all
    xg = x.clone().requires_grad_()
    rmsnorm.rms_norm(xg).backward(dy)
    x64 = x.double().requires_grad_()
    reference(x64).backward(dy.double())
    assert_close(xg.grad, x64.grad, scale=x64.grad.abs().max().item(), what="dx without weight")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_and_broadcast_gradients(device):
    """Gradients through strided inputs, and a broadcast dy (from .sum()), which is copied."""
    require_cuda_kernels(device)
    base = torch.randn(6, 3, 2 * 128, device=device, dtype=torch.float64 if device == "cpu" else torch.float32)
    w = torch.rand(128, device=device, dtype=base.dtype) + 0.5
    for view in (lambda b: b[:, :, :128], lambda b: b[::2, :, 128:].transpose(0, 1)):
        b1 = base.clone().requires_grad_()
        w1 = w.clone().requires_grad_()
        rmsnorm.rms_norm(view(b1), w1).sum().backward()
        b2 = base.clone().requires_grad_()
        w2 = w.clone().requires_grad_()
        reference(view(b2), w2).sum().backward()
        assert_close(b1.grad, b2.grad, scale=b2.grad.abs().max().item(), what="dx")
        assert_close(w1.grad, w2.grad, scale=w2.grad.abs().max().item(), what="dw")


@pytest.mark.parametrize("device", DEVICES)
def test_weight_gradient_is_deterministic(device):
    require_cuda_kernels(device)
    x, w = make_inputs((4096, 256), torch.bfloat16, device)
    dy = torch.randn_like(x)
    first = _grads(lambda x, w: rmsnorm.rms_norm(x, w), x, w, dy)[2]
    for _ in range(3):
        assert torch.equal(first, _grads(lambda x, w: rmsnorm.rms_norm(x, w), x, w, dy)[2])
