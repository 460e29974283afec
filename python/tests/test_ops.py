"""The custom ops: opcheck, values against float64 and PyTorch, layouts, errors."""

import math
import warnings

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed")
try:
    import rmsnorm
except ImportError as e:  # the package without its compiled library: not built or installed
    pytest.skip(f"the rmsnorm extension is not built ({e})", allow_module_level=True)

import torch.nn.functional as F  # noqa: E402

from _support import (  # noqa: E402
    DEVICES,
    HAS_CUDA,
    assert_close,
    device_dtypes,
    hf_llama,
    make_inputs,
    reference,
    require_cuda_kernels,
)

ops = torch.ops.rmsnorm


# ---------------------------------------------------------------------------------------
# opcheck: schema, fake kernels, autograd registration, torch.compile (aot_dispatch)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_weight", [True, False])
def test_opcheck(device, dtype, with_weight):
    require_cuda_kernels(device)
    x, w = make_inputs((3, 5, 64), dtype, device)
    w = w if with_weight else None
    torch.library.opcheck(ops.rms_norm.default, (x, w, 1e-6, 0.0, "fp32"))
    torch.library.opcheck(ops.rms_norm.default, (x, w, 1e-5, 1.0 if with_weight else 0.0, "llama"))
    # rms_norm_fwd is the differentiable one: inputs that require grad test its autograd.
    xg = x.clone().requires_grad_()
    wg = w.clone().requires_grad_() if with_weight else None
    torch.library.opcheck(ops.rms_norm_fwd.default, (xg, wg, 1e-6, 0.0, "fp32"))
    _, rstd = ops.rms_norm_fwd(x, w, 1e-6, 0.0, "fp32")
    dy = torch.randn_like(x)
    torch.library.opcheck(ops.rms_norm_bwd.default, (dy, x, w, rstd, 1e-6, 0.0, with_weight))
    torch.library.opcheck(ops.rms_norm_bwd.default, (dy, x, w, None, 1e-6, 0.0, False))
    torch.library.opcheck(ops.rms_norm_.default, (x.clone(), w, 1e-6, 0.0, "fp32"))


# ---------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device,dtype", device_dtypes())
@pytest.mark.parametrize("shape", [(4096,), (1, 1), (7, 1000), (2, 3, 127), (2, 1, 3, 64)], ids=str)
def test_forward_matches_float64_reference(device, dtype, shape):
    require_cuda_kernels(device)
    x, w = make_inputs(shape, dtype, device)
    y = rmsnorm.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device and y.is_contiguous()
    assert_close(y, reference(x, w), what="y with weight")
    assert_close(rmsnorm.rms_norm(x, None, 1e-5), reference(x, None, 1e-5), what="y without weight")
    assert_close(rmsnorm.rms_norm(x, w, 1e-6, offset=1.0), reference(x, w, 1e-6, 1.0), what="y with offset 1")


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_forward_matches_torch_rms_norm(device, dtype):
    require_cuda_kernels(device)
    x, w = make_inputs((33, 4096), dtype, device)
    assert_close(rmsnorm.rms_norm(x, w, 1e-6), F.rms_norm(x, (4096,), w, 1e-6), dtype, what="vs F.rms_norm")


_LLAMA_CASES = [  # every dtype with its own weight, and 16-bit x with a float32 weight
    pytest.param(*p.values, wfp32, marks=p.marks, id=f"{p.id}{'-fp32-weight' if wfp32 else ''}")
    for p in device_dtypes()
    for wfp32 in (False, True)
    if not wfp32 or p.values[1] in (torch.float16, torch.bfloat16)
]


@pytest.mark.parametrize("device,dtype,weight_fp32", _LLAMA_CASES)
def test_llama_cast_matches_hugging_face(device, dtype, weight_fp32):
    require_cuda_kernels(device)
    x, w = make_inputs((17, 2048), dtype, device, weight_dtype=torch.float32 if weight_fp32 else None)
    got, want = rmsnorm.rms_norm(x, w, 1e-6, cast="llama"), hf_llama(x, w, 1e-6)
    if dtype == torch.float64:  # Hugging Face computes in float32; the library in float64
        want = reference(x, w)
    # Hugging Face returns the promoted dtype: float32 for a float32 weight.
    assert got.dtype == want.dtype
    # Identical roundings, but the fp32 sums of squares may round differently: x * rstd
    # can land one ulp of x's dtype apart, hence x's dtype's tolerance.
    assert_close(got, want, dtype, what="llama cast")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_float32_weight_with_16_bit_x(device, dtype):
    require_cuda_kernels(device)
    x, w = make_inputs((9, 512), dtype, device, weight_dtype=torch.float32)
    y = rmsnorm.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype  # fp32 cast: x's dtype
    assert_close(y, reference(x, w), what="fp32 weight")


@pytest.mark.parametrize("device", DEVICES)
def test_eps_and_zero_rows(device):
    require_cuda_kernels(device)
    x, w = make_inputs((4, 256), torch.float32, device)
    x[1] = 0  # a zero row: 0 * rsqrt(eps)
    for eps in (0.0, 1e-6, 0.5):
        y = rmsnorm.rms_norm(x, w, eps)
        if eps == 0.0:
            assert_close(y[[0, 2, 3]], reference(x[[0, 2, 3]], w, 0.0))
        else:
            assert_close(y, reference(x, w, eps), what=f"eps {eps}")
    empty = torch.empty(0, 3, 256, device=device)
    assert rmsnorm.rms_norm(empty, w).shape == (0, 3, 256)


# ---------------------------------------------------------------------------------------
# Layouts: strided views are read in place; a copy only where the docs say so
# ---------------------------------------------------------------------------------------


def _copies_made(fn):
    """How many copy kernels (aten::copy_) ran inside fn: the binding's .contiguous() calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes about its own cycles
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            fn()
    return sum(1 for e in prof.events() if e.name == "aten::copy_")


def _views(device, dtype):
    """(name, x, zero-copy expected)"""
    g = torch.Generator().manual_seed(1)

    def rnd(*s):
        return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

    n = 96
    qkv = rnd(10, 3 * 4 * n)
    return [
        ("row slice", rnd(12, 2 * n)[:, :n], True),
        ("every other row", rnd(12, n)[::2], True),
        ("3-D slice of the middle dim", rnd(4, 6, n)[:, 1:5], True),
        ("transposed leading dims", rnd(5, 4, n).transpose(0, 1), True),
        ("QKV head view", qkv[:, 4 * n : 8 * n].view(10, 4, n), True),
        ("size-1 dims anywhere", rnd(3, 1, 4, 1, n)[:, :, 1:], True),
        ("three stride groups", rnd(4, 5, 6, n).permute(1, 0, 2, 3), False),
        ("two stride groups after a permute", rnd(4, 5, 6, n).permute(2, 0, 1, 3), True),
        ("strided last dim", rnd(7, 2 * n)[:, ::2], False),
        ("broadcast rows", rnd(1, n).expand(6, n), False),
    ]


@pytest.mark.parametrize("device,dtype", device_dtypes())
def test_strided_inputs(device, dtype):
    require_cuda_kernels(device)
    for name, x, zero_copy in _views(device, dtype):
        w = make_inputs((x.shape[-1],), dtype, device)[1]
        y = rmsnorm.rms_norm(x, w, 1e-6)
        assert y.shape == x.shape and y.is_contiguous(), name
        assert_close(y, reference(x, w), what=name)
        if device == "cpu":
            copies = _copies_made(lambda: rmsnorm.rms_norm(x, w, 1e-6))
            assert (copies == 0) == zero_copy, f"{name}: {copies} copies"


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_on_a_qkv_slice(device):
    require_cuda_kernels(device)
    tokens, heads, d = 6, 4, 64
    qkv = torch.randn(tokens, 3 * heads * d, device=device)
    before = qkv.clone()
    w = make_inputs((d,), torch.float32, device)[1]
    k = qkv[:, heads * d : 2 * heads * d].view(tokens, heads, d)
    out = rmsnorm.rms_norm_(k, w, 1e-6)
    assert out is k
    assert_close(k, reference(before[:, heads * d : 2 * heads * d].view(tokens, heads, d), w), what="k")
    assert torch.equal(qkv[:, : heads * d], before[:, : heads * d]), "q was written"
    assert torch.equal(qkv[:, 2 * heads * d :], before[:, 2 * heads * d :]), "v was written"
    with pytest.raises(ValueError, match="leading"):
        rmsnorm.rms_norm_(torch.randn(4, 5, 6, d, device=device).permute(1, 0, 2, 3), w)


# ---------------------------------------------------------------------------------------
# Errors: a Python exception with a clear message, never a crash
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_errors(device):
    require_cuda_kernels(device)
    x, w = make_inputs((4, 64), torch.float32, device)
    with pytest.raises(ValueError, match="weight must have shape"):
        rmsnorm.rms_norm(x, w[:-1])
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.rms_norm(x, w[:-1], 1e-6, 0.0, "fp32")  # the op itself, not only the wrapper
    with pytest.raises(TypeError, match="weight has dtype"):
        rmsnorm.rms_norm(x.half(), w.bfloat16())
    with pytest.raises(TypeError, match="weight has dtype"):
        rmsnorm.rms_norm(x, w.half())
    with pytest.raises(TypeError, match="dtype"):
        rmsnorm.rms_norm(x.int(), None)
    for eps in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="eps"):
            rmsnorm.rms_norm(x, w, eps)
    with pytest.raises(ValueError, match="cast"):
        rmsnorm.rms_norm(x, w, cast="bf16")
    with pytest.raises(ValueError, match="offset"):
        rmsnorm.rms_norm(x, None, offset=1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        rmsnorm.rms_norm(torch.tensor(1.0, device=device))
    with pytest.raises(ValueError, match="last dimension"):
        rmsnorm.rms_norm(torch.empty(3, 0, device=device))
    # the backward op checks its arguments too
    with pytest.raises(ValueError, match="dy has shape"):
        ops.rms_norm_bwd(x[:2], x, w, None, 1e-6, 0.0, True)
    with pytest.raises(TypeError, match="dy has dtype"):
        ops.rms_norm_bwd(x.double(), x, w, None, 1e-6, 0.0, True)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_errors():
    require_cuda_kernels("cuda")
    x, w = make_inputs((4, 64), torch.float32, "cuda")
    with pytest.raises(ValueError, match="same device"):
        rmsnorm.rms_norm(x, w.cpu())
    with pytest.raises(ValueError, match="same device"):
        rmsnorm.rms_norm(x.cpu(), w)
    with pytest.raises(TypeError, match="float64"):
        rmsnorm.rms_norm(x.double(), w.double())
