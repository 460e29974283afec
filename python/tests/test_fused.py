"""The fused ops: the residual add (fused_add_rms_norm, in place and out of place, autograd) and
the 8-bit outputs (rms_norm_quant): opcheck, values against float64 and against PyTorch's own
formulas bit for bit, torch.compile, errors."""

import math

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
    make_inputs,
    reference,
    require_cuda_kernels,
)

ops = torch.ops.rmsnorm
FP8 = torch.float8_e4m3fn


def require_fused(device, what="add"):
    """Skips on a device whose backend does not serve the fusion yet."""
    require_cuda_kernels(device)
    if device == "cpu":
        return
    x = torch.ones(1, 8, device=device)
    try:
        if what == "add":
            rmsnorm.fused_add_rms_norm(x, x.clone())
        else:
            rmsnorm.rms_norm_quant(x)
    except NotImplementedError as e:
        pytest.skip(f"the CUDA backend does not serve this fusion yet ({e})")


def _inputs(shape, dtype, device, r_dtype=None, seed=0):
    x, w = make_inputs(shape, dtype, device, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype=r_dtype or dtype, device=device)
    return x, r, w




# ---------------------------------------------------------------------------------------
# opcheck: schemas, fake kernels, autograd registration, torch.compile (aot_dispatch)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("r_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_weight", [True, False])
def test_opcheck_fused_add(device, r_dtype, with_weight):
    require_fused(device)
    x, r, w = _inputs((3, 5, 64), torch.bfloat16, device, r_dtype)
    w = w if with_weight else None
    off = 1.0 if with_weight else 0.0
    ops_ = ops
    torch.library.opcheck(ops_.fused_add_rms_norm.default, (x, r, w, 1e-6, off, "fp32"))
    torch.library.opcheck(ops_.fused_add_rms_norm.default, (x, r, w, 1e-5, 0.0, "llama"))
    xg, rg = x.clone().requires_grad_(), r.clone().requires_grad_()
    wg = w.clone().requires_grad_() if with_weight else None
    torch.library.opcheck(ops_.fused_add_rms_norm_fwd.default, (xg, rg, wg, 1e-6, off, "fp32"))
    _, r_out, rstd = ops_.fused_add_rms_norm_fwd(x, r, w, 1e-6, 0.0, "fp32")
    dy, dr_out = torch.randn_like(x), torch.randn_like(r_out)
    torch.library.opcheck(
        ops_.fused_add_rms_norm_bwd.default,
        (dy, dr_out, r_out, w, rstd, 1e-6, 0.0, with_weight, torch.bfloat16, r_dtype != torch.bfloat16),
    )
    torch.library.opcheck(
        ops_.fused_add_rms_norm_bwd.default, (dy, dr_out, r_out, w, None, 1e-6, 0.0, False, torch.bfloat16, False)
    )
    torch.library.opcheck(ops_.fused_add_rms_norm_.default, (x.clone(), r.clone(), w, 1e-6, off, "fp32"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qdtype", [FP8, torch.int8])
@pytest.mark.parametrize("kind", ["static", "row", "group"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_opcheck_quant(device, qdtype, kind, with_residual):
    require_fused(device, "quant")
    x, r, w = _inputs((3, 5, 256), torch.bfloat16, device, torch.float32)
    scale = torch.tensor([0.02], device=device) if kind == "static" else None
    ub = torch.tensor([2.0], device=device) if kind != "static" else None
    res = r if with_residual else None
    for col, pow2 in ((False, False), (True, True)) if kind == "group" else ((False, kind == "row"),):
        torch.library.opcheck(
            ops.rms_norm_quant.default, (x, w, res, 1e-6, 0.0, "fp32", qdtype, kind, scale, 128, ub, col, pow2)
        )
    torch.library.opcheck(
        ops.rms_norm_quant.default, (x, w, res, 1e-6, 0.0, "fp32", qdtype, kind, scale, 128, ub, False, False,
                                     "reciprocal")
    )


# ---------------------------------------------------------------------------------------
# The residual add: values
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,r_dtype", RESIDUAL_DTYPES, ids=RESIDUAL_IDS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 1000), (2, 3, 127), (4096,)], ids=str)
def test_fused_add_values(device, dtype, r_dtype, shape):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 is CPU-only")
    require_fused(device)
    x, r, w = _inputs(shape, dtype, device, r_dtype)
    y, r_out = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6)
    assert y.dtype == dtype and r_out.dtype == r_dtype and y.shape == x.shape == r_out.shape
    # residual_out is PyTorch's own `x + residual` in float32 (float64 for float64) rounded
    # once to the residual's dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert torch.equal(r_out, (x.to(acc) + r.to(acc)).to(r_dtype))
    # y is the norm of the rounded sum: rms_norm of residual_out itself, to the bit when the
    # residual has x's dtype; within x's tolerance of the float64 norm of residual_out always
    assert_close(y, reference(r_out, w), dtype, what="y")
    if r_dtype == dtype:
        assert torch.equal(y, rmsnorm.rms_norm(r_out, w, 1e-6))
    for offset, cast in ((1.0, "fp32"), (0.0, "llama")):
        y2, _ = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6, offset=offset, cast=cast)
        if r_dtype == dtype:
            assert torch.equal(y2, rmsnorm.rms_norm(r_out, w, 1e-6, offset=offset, cast=cast)), (offset, cast)
        else:
            assert_close(y2, reference(r_out, w, 1e-6, offset), dtype, what=f"offset {offset} cast {cast}")
    y3, _ = rmsnorm.fused_add_rms_norm(x, r, None, 1e-6)
    assert_close(y3, reference(r_out), dtype, what="no weight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("r_dtype", [torch.bfloat16, torch.float32])
def test_fused_add_in_place_is_vllms_contract(device, r_dtype):
    require_fused(device)
    x, r, w = _inputs((33, 512), torch.bfloat16, device, r_dtype)
    want_y, want_r = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6)
    xi, ri = x.clone(), r.clone()
    out = rmsnorm.fused_add_rms_norm(xi, ri, w, 1e-6, inplace=True)
    assert out[0] is xi and out[1] is ri
    assert torch.equal(xi, want_y) and torch.equal(ri, want_r)
    # on strided views of bigger buffers (a (tokens, hidden) slice), in place too
    big_x, big_r = torch.zeros(33, 600, dtype=x.dtype, device=device), torch.zeros(33, 700, dtype=r.dtype, device=device)
    big_x[:, 40:552], big_r[:, 100:612] = x, r
    rmsnorm.fused_add_rms_norm(big_x[:, 40:552], big_r[:, 100:612], w, 1e-6, inplace=True)
    assert torch.equal(big_x[:, 40:552], want_y) and torch.equal(big_r[:, 100:612], want_r)
    assert not big_x[:, :40].any() and not big_r[:, 612:].any()


@pytest.mark.parametrize("device", DEVICES)
def test_fused_add_strided_inputs_give_the_same_bits(device):
    require_fused(device)
    x, r, w = _inputs((6, 4, 256), torch.bfloat16, device, torch.float32)
    want = rmsnorm.fused_add_rms_norm(x, r, w)
    wide = torch.zeros(6, 4, 300, dtype=r.dtype, device=device)
    wide[..., 20:276] = r
    xs, rs = x.transpose(0, 1).contiguous().transpose(0, 1), wide[..., 20:276]
    got = rmsnorm.fused_add_rms_norm(xs, rs, w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# ---------------------------------------------------------------------------------------
# The residual add: autograd
# ---------------------------------------------------------------------------------------


def _ref_add(x, r, w, eps=1e-6, offset=0.0):
    s = x.double() + r.double()
    return reference(s, w, eps, offset), s


@pytest.mark.parametrize("with_weight,offset,cast", [(True, 0.0, "fp32"), (True, 1.0, "fp32"), (False, 0.0, "llama")])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_fused_add_gradcheck_float64_cpu(with_weight, offset, cast, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, 6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.9 + 0.2 * torch.rand(9, generator=g, dtype=torch.float64)).requires_grad_()
    view = (lambda t: t) if layout == "contiguous" else (lambda t: t[:, ::2])

    def fn(x, r, w):  # both outputs take part in the loss
        y, r_out = rmsnorm.fused_add_rms_norm(view(x), view(r), w if with_weight else None, 1e-5, offset=offset, cast=cast)
        return y, r_out * 0.5

    assert torch.autograd.gradcheck(fn, (x, r, w))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,r_dtype", RESIDUAL_DTYPES[:5], ids=RESIDUAL_IDS[:5])
def test_fused_add_gradients_match_float64(device, dtype, r_dtype):
    require_fused(device)
    x, r, w = _inputs((64, 1000), dtype, device, r_dtype)
    dy = make_inputs((64, 1000), dtype, device, seed=1)[0]
    dr_out = make_inputs((64, 1000), r_dtype, device, seed=2)[0]

    def grads(fn, x, r, w):
        x, r, w = (t.detach().clone().requires_grad_() for t in (x, r, w))
        y, r_out = fn(x, r, w)
        return torch.autograd.grad((y, r_out), (x, r, w), (dy.to(y.dtype), dr_out.to(r_out.dtype)))

    dx, dr, dw = grads(lambda x, r, w: rmsnorm.fused_add_rms_norm(x, r, w, 1e-6), x, r, w)
    assert dx.dtype == dtype and dr.dtype == r_dtype and dw.dtype == w.dtype
    # The float64 reference takes the rounded sum as the norm's input, as the op does.
    _, r_out = rmsnorm.fused_add_rms_norm(x, r, w, 1e-6)
    s = r_out.double().requires_grad_()
    w64 = w.double().requires_grad_()
    y64 = reference(s, w64)
    ds, dw64 = torch.autograd.grad((y64, s), (s, w64), (dy.double(), dr_out.double()))
    assert_close(dx, ds, dtype, scale=ds.abs().max().item(), what="dx")
    assert_close(dr, ds, r_dtype if r_dtype != torch.float32 else dtype, scale=ds.abs().max().item(), what="dr")
    assert_close(dw, dw64, dtype, scale=dw64.abs().max().item(), what="dw")
    if r_dtype == dtype:
        assert torch.equal(dx, dr)  # one gradient for both
    else:
        assert torch.equal(dx, dr.to(dtype))  # one fp32 value rounded twice


@pytest.mark.parametrize("device", DEVICES)
def test_fused_add_partial_gradients(device):
    """Only y used, only residual_out used, and inputs that do not all require grad."""
    require_fused(device)
    x, r, w = _inputs((8, 256), torch.float32, device)
    for use in ("y", "r_out"):
        xg, rg, wg = x.clone().requires_grad_(), r.clone().requires_grad_(), w.clone().requires_grad_()
        y, r_out = rmsnorm.fused_add_rms_norm(xg, rg, wg)
        (y if use == "y" else r_out).sum().backward()
        x64, r64, w64 = (t.double().requires_grad_() for t in (x, r, w))
        y64, s64 = _ref_add(x64, r64, w64)
        (y64 if use == "y" else s64).sum().backward()
        for got, want, name in ((xg.grad, x64.grad, "dx"), (rg.grad, r64.grad, "dr"), (wg.grad, w64.grad, "dw")):
            if want is None:
                assert got is None or not got.any(), f"{use}: {name}"
            else:
                assert_close(got, want, scale=want.abs().max().item() + 1e-30, what=f"{use}: {name}")
    xg = x.clone().requires_grad_()
    y, _ = rmsnorm.fused_add_rms_norm(xg, r, w)  # only x requires grad
    y.sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape


@pytest.mark.parametrize("device", DEVICES)
def test_fused_add_compile_fullgraph(device):
    require_fused(device)
    torch._dynamo.reset()
    x, r, w = _inputs((4, 8, 256), torch.bfloat16, device, torch.float32)

    def layer(x, r, w):  # a decoder layer's seam: the sublayer's output added, then the next norm
        y, r_out = rmsnorm.fused_add_rms_norm(x * 2, r, w, 1e-6, offset=0.5)
        return y.float().sum() + r_out.float().sum()  # float sums: compiled and eager may add in other orders

    def step(fn):
        xg, rg, wg = (t.detach().clone().requires_grad_() for t in (x, r, w))
        out = fn(xg, rg, wg)
        out.backward()
        return out.detach(), xg.grad, rg.grad, wg.grad

    eager, compiled = step(layer), step(torch.compile(layer, fullgraph=True))
    for name, a, b in zip(("out", "dx", "dr", "dw"), eager, compiled):
        torch.testing.assert_close(b, a, msg=name)

    def in_place(x, r, w):
        rmsnorm.fused_add_rms_norm(x, r, w, inplace=True)
        return x * 1, r * 1

    want = in_place(x.clone(), r.clone(), w)
    got = torch.compile(in_place, fullgraph=True)(x.clone(), r.clone(), w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------
# Quantised outputs
# ---------------------------------------------------------------------------------------


def _torch_quant(y, s, qdtype, division="exact"):
    """PyTorch's formulas: (y / s).clamp(-448, 448).to(fp8); torch.round(y / s).clamp(-127, 127).to(int8).
    division="reciprocal": y * (1 / s) in their place, 1 / s rounded to float32 first (vLLM's)."""
    t = y.float() / s if division == "exact" else y.float() * torch.reciprocal(s)
    if qdtype == FP8:
        return t.clamp(-448, 448).to(FP8)
    return torch.round(t).clamp(-127, 127).to(torch.int8)


def _qmax(qdtype):
    return 448.0 if qdtype == FP8 else 127.0


def _dynamic_scales(y, group, qdtype, ub=None, pow2=False):
    """The documented rule on y (float32): max(min(amax, ub) / qmax, 1 / (qmax * 512))."""
    qmax = _qmax(qdtype)
    amax = y.float().unflatten(-1, (-1, group)).abs().amax(-1)
    if ub is not None:
        amax = torch.minimum(amax, ub)
    # A tensor divisor: PyTorch's CUDA division by a Python scalar multiplies by its reciprocal,
    # which can land one ulp away from the correctly rounded quotient the rule asks for.
    s = torch.maximum(amax / torch.full_like(amax, qmax), torch.tensor(1.0 / (qmax * 512), dtype=torch.float32, device=y.device))
    if pow2:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    return s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qdtype", [FP8, torch.int8])
@pytest.mark.parametrize("kind", ["static", "row", "group"])
@pytest.mark.parametrize("division", ["exact", "reciprocal"])
def test_quant_is_pytorchs_formula_on_the_fp32_y(device, qdtype, kind, division):
    """float32 x: rms_norm's y is float32, so q must be PyTorch's quantisation of it, bit for bit
    (with division="reciprocal", of y * (1 / s))."""
    require_fused(device, "quant")
    x, w = make_inputs((33, 512), torch.float32, device)
    y = rmsnorm.rms_norm(x, w, 1e-6)
    ub = torch.tensor([1.5], device=device)
    for pow2, use_ub in ((False, False), (True, True)) if kind != "static" else ((False, False),):
        if kind == "static":
            s = torch.tensor([y.abs().max().item() / 300], device=device)  # some values saturate
            q, scales = rmsnorm.rms_norm_quant(x, w, qdtype=qdtype, scale=s, division=division)
            assert scales is s
            want_s = s
        else:
            group = 512 if kind == "row" else 128
            q, scales = rmsnorm.rms_norm_quant(
                x, w, qdtype=qdtype, scale=kind, group_size=group, pow2_scales=pow2, scale_ub=ub if use_ub else None,
                division=division,
            )
            want_s = _dynamic_scales(y, group, qdtype, ub if use_ub else None, pow2)
            assert scales.shape == want_s.shape
            assert torch.equal(scales, want_s), f"pow2={pow2} ub={use_ub}"
        s_b = want_s.repeat_interleave(512 // want_s.shape[-1], -1) if kind != "static" else want_s
        want_q = _torch_quant(y, s_b, qdtype, division)
        assert q.dtype == qdtype
        assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8)), f"pow2={pow2} ub={use_ub}"


def test_quant_conversions_match_torchs_casts():
    """The 8-bit conversions on 2^20 float32 values (every exponent the formats reach, ties and
    the values around them, beyond +-448): a row of ones with eps 0 normalises to exactly 1,
    so y is the weight itself, and with a static scale of 1 the op quantises the weight.
    Against `w.clamp(-448, 448).to(torch.float8_e4m3fn)` and `torch.round(w).clamp(-127, 127)`."""
    g = torch.Generator().manual_seed(3)
    n = 1 << 16
    ties = torch.arange(0, 256, dtype=torch.int32).to(torch.uint8).view(FP8).float()
    ties = ties[torch.isfinite(ties)].sort().values
    mids = (ties[1:] + ties[:-1]) / 2
    special = torch.cat([mids, mids.nextafter(torch.tensor(0.0)), mids.nextafter(torch.tensor(1e9)), ties])
    special = torch.cat([special, -special, torch.arange(-130, 131, dtype=torch.float32) + 0.5])
    special = special[special != 0]  # the op's w + offset turns -0 into +0: a weight of zero says nothing here
    for chunk in range(16):
        bits = torch.randint(0, 1 << 31, (n,), generator=g, dtype=torch.int64)
        exps = torch.randint(100, 136, (n,), generator=g, dtype=torch.int64)  # 2^-27 .. 2^8
        v = ((bits & 0x807FFFFF) | (exps << 23)).to(torch.int32).view(torch.float32)
        if chunk == 0:
            v[: special.numel()] = special
        x = torch.ones(2, n)
        x[1] = -1
        one = torch.ones(1)
        p = 0.0
        q8, _ = rmsnorm.rms_norm_quant(x, v, p, qdtype=FP8, scale=one)
        qi, _ = rmsnorm.rms_norm_quant(x, v, p, qdtype=torch.int8, scale=one)
        y = torch.stack([v, -v])
        assert torch.equal(q8.view(torch.uint8), y.clamp(-448, 448).to(FP8).view(torch.uint8)), chunk
        assert torch.equal(qi, torch.round(y).clamp(-127, 127).to(torch.int8)), chunk


@pytest.mark.parametrize("device", DEVICES)
def test_quant_llama_cast_quantises_hugging_faces_y(device):
    """cast="llama" with a float32 weight: y is LlamaRMSNorm's (float32), then quantised."""
    require_fused(device, "quant")
    x, w = make_inputs((17, 1024), torch.bfloat16, device, weight_dtype=torch.float32)
    y = rmsnorm.rms_norm(x, w, 1e-6, cast="llama")
    assert y.dtype == torch.float32
    q, s = rmsnorm.rms_norm_quant(x, w, cast="llama")
    assert torch.equal(s, _dynamic_scales(y, 1024, FP8))
    assert torch.equal(q.view(torch.uint8), _torch_quant(y, s, FP8).view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("qdtype", [FP8, torch.int8])
def test_quant_16_bit_inputs_against_float64(device, dtype, qdtype):
    """The float32 y of 16-bit x is not observable; q against the float64 y within one code step
    where y / s lies within float32 error of a code boundary, and nearly always exact."""
    require_fused(device, "quant")
    x, w = make_inputs((64, 1024), dtype, device)
    for kind in ("row", "group"):
        q, s = rmsnorm.rms_norm_quant(x, w, qdtype=qdtype, scale=kind)
        y64 = reference(x, w).cpu()
        s_b = s.cpu().double().repeat_interleave(1024 // s.shape[-1], -1)
        t = y64 / s_b
        want = (
            t.clamp(-448, 448).float().to(FP8).double() if qdtype == FP8 else torch.round(t).clamp(-127, 127)
        )  # the float rounding of t before the fp8 one is exact here only where it does not matter
        got = q.cpu().double() if qdtype == torch.int8 else q.cpu().float().double()
        step = (got - want).abs()
        mismatches = (step > 0).sum().item()
        assert mismatches <= 0.001 * q.numel(), f"{kind}: {mismatches} codes differ from the float64 ones"
        # where they differ, by one code step: at most 1/8 relative for fp8, 1 for int8
        bound = (want.abs() / 8 + 2.0**-9) if qdtype == FP8 else torch.ones_like(want)
        assert bool((step <= bound).all()), kind
        amax = y64.unflatten(-1, (-1, 1024 // s.shape[-1])).abs().amax(-1)
        torch.testing.assert_close(s.cpu().double(), amax / _qmax(qdtype), rtol=1e-5, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_quant_layouts_residual_and_zero_rows(device):
    require_fused(device, "quant")
    x, r, w = _inputs((2, 9, 512), torch.bfloat16, device, torch.float32)
    x[0, 3] = 0
    r[0, 3] = 0
    q, s, r_out = rmsnorm.rms_norm_quant(x, w, residual=r, scale="group", column_major_scales=True)
    # the residual add first, as fused_add_rms_norm: q of its y, residual_out the same, r untouched
    _, r_want = rmsnorm.fused_add_rms_norm(x, r, w)
    assert torch.equal(r_out, r_want)
    q2, s2 = rmsnorm.rms_norm_quant(r_out, w.float(), scale="group")  # the norm of the fp32 r_out
    assert torch.equal(s, s2) and torch.equal(q.view(torch.uint8), q2.view(torch.uint8))
    # column-major: (..., groups) with each group's scales contiguous over the rows
    assert s.shape == (2, 9, 4) and s.stride() == (9, 1, 18)
    # an all-zero row: zeros, with the minimum scale (no 0 / 0)
    assert not q[0, 3].float().any()
    assert torch.equal(s[0, 3], torch.full((4,), 1.0 / (448 * 512), device=device))
    # strided x (a slice of a wider buffer) gives the same bytes
    wide = torch.zeros(2, 9, 700, dtype=x.dtype, device=device)
    wide[..., 64:576] = x
    q3, s3 = rmsnorm.rms_norm_quant(wide[..., 64:576], w, scale="row")
    q4, s4 = rmsnorm.rms_norm_quant(x, w, scale="row")
    assert s3.shape == (2, 9, 1) and torch.equal(s3, s4) and torch.equal(q3.view(torch.uint8), q4.view(torch.uint8))


@pytest.mark.parametrize("device", DEVICES)
def test_quant_compile_fullgraph(device):
    require_fused(device, "quant")
    torch._dynamo.reset()
    x, r, w = _inputs((4, 8, 256), torch.bfloat16, device, torch.float32)

    def fn(x, r, w):
        q, s, r_out = rmsnorm.rms_norm_quant(x * 2, w, residual=r, scale="group", column_major_scales=True)
        return q.float() * s.repeat_interleave(128, -1), r_out

    want = fn(x, r, w)
    got = torch.compile(fn, fullgraph=True)(x, r, w)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch._dynamo.reset()


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_fused_ops_capture_in_cuda_graphs():
    require_fused("cuda")
    require_fused("cuda", "quant")
    x, r, w = _inputs((64, 4096), torch.bfloat16, "cuda", torch.bfloat16)
    x_in, r_in = x.clone(), r.clone()

    def step():
        y, r_out = rmsnorm.fused_add_rms_norm(x_in, r_in, w)
        q, s = rmsnorm.rms_norm_quant(x_in, w, scale="group")
        return y, r_out, q, s

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    x2, r2, _ = _inputs((64, 4096), torch.bfloat16, "cuda", torch.bfloat16, seed=5)
    x_in.copy_(x2)
    r_in.copy_(r2)
    graph.replay()
    torch.cuda.synchronize()
    want_y, want_r = rmsnorm.fused_add_rms_norm(x2, r2, w)
    want_q, want_s = rmsnorm.rms_norm_quant(x2, w, scale="group")
    assert torch.equal(static[0], want_y) and torch.equal(static[1], want_r)
    assert torch.equal(static[2].view(torch.uint8), want_q.view(torch.uint8)) and torch.equal(static[3], want_s)


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_fused_errors(device):
    require_fused(device)
    x, r, w = _inputs((4, 256), torch.bfloat16, device)
    with pytest.raises(ValueError, match="residual has shape"):
        rmsnorm.fused_add_rms_norm(x, r[:2], w)
    with pytest.raises(TypeError, match="residual has dtype"):
        rmsnorm.fused_add_rms_norm(x, r.half(), w)
    with pytest.raises(TypeError, match="residual has dtype"):
        ops.fused_add_rms_norm(x.float(), r, w.float(), 1e-6, 0.0, "fp32")
    with pytest.raises(ValueError, match="eps"):
        rmsnorm.fused_add_rms_norm(x, r, w, -1.0)
    with pytest.raises(TypeError, match="in place"):
        rmsnorm.fused_add_rms_norm(x, r, w.float(), cast="llama", inplace=True)
    x4, r4 = (torch.randn(4, 5, 6, 256, device=device, dtype=torch.bfloat16).permute(1, 0, 2, 3) for _ in range(2))
    with pytest.raises(ValueError, match="leading"):  # three stride groups: no view, and no copy in place
        rmsnorm.fused_add_rms_norm(x4, r4, w, inplace=True)
    with pytest.raises(ValueError, match="scale must be"):
        rmsnorm.rms_norm_quant(x, w, scale="tensor")
    with pytest.raises(TypeError, match="qdtype"):
        rmsnorm.rms_norm_quant(x, w, qdtype=torch.float16)
    with pytest.raises(ValueError, match="group_size"):
        rmsnorm.rms_norm_quant(x, w, scale="group", group_size=96)
    with pytest.raises(ValueError, match="one element"):
        rmsnorm.rms_norm_quant(x, w, scale=torch.ones(2, device=device))
    with pytest.raises(TypeError, match="float32"):
        rmsnorm.rms_norm_quant(x, w, scale=torch.ones(1, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="scale_ub"):
        rmsnorm.rms_norm_quant(x, w, scale=torch.ones(1, device=device), scale_ub=torch.ones(1, device=device))
    with pytest.raises(ValueError, match="column_major_scales"):
        rmsnorm.rms_norm_quant(x, w, scale="row", column_major_scales=True)
    with pytest.raises(ValueError, match="division"):
        rmsnorm.rms_norm_quant(x, w, division="approximate")
    with pytest.raises(TypeError, match="dtype"):
        rmsnorm.rms_norm(torch.zeros(2, 8, dtype=FP8, device=device))
    if device == "cpu":
        with pytest.raises(NotImplementedError, match="f64"):
            rmsnorm.rms_norm_quant(x.double(), w.double())
