"""The custom ops: loading the compiled library, fake kernels, autograd, the functional API.

The schemas and the CPU/CUDA kernels are registered in C++ (python/csrc/torch_ops.cpp):

    rmsnorm::rms_norm(x, weight, eps, offset, cast) -> y            inference, no autograd
    rmsnorm::rms_norm_fwd(x, weight, eps, offset, cast) -> (y, rstd)  what autograd wraps
    rmsnorm::rms_norm_bwd(dy, x, weight, rstd, eps, offset, want_dw) -> (dx, dw)
    rmsnorm::rms_norm_(x!, weight, eps, offset, cast) -> ()          in place
    rmsnorm::fused_add_rms_norm(x, residual, weight, eps, offset, cast) -> (y, residual_out)
    rmsnorm::fused_add_rms_norm_fwd(...) -> (y, residual_out, rstd)   what autograd wraps
    rmsnorm::fused_add_rms_norm_(x!, residual!, weight, eps, offset, cast) -> ()   vLLM's, in place
    rmsnorm::fused_add_rms_norm_bwd(dy, dr_out, residual_out, weight, rstd, eps, offset,
                                    want_dw, dx_dtype, want_dr) -> (dx, dr, dw)
    rmsnorm::rms_norm_quant(x, weight, residual, eps, offset, cast, qdtype, scale_kind, scale,
                            group_size, scale_ub, column_major_scales, pow2_scales,
                            division="exact")
                            -> (q, scales, residual_out)
    rmsnorm::fused_allreduce_add_rms_norm(partials[], residual, weight, eps, offset, cast)
                            -> (y, residual_out)     the ranks' sum read directly, + residual

This module adds what belongs in Python: fake kernels (shapes and dtypes only, so that
torch.compile traces the ops without running them) and the autograd formulas.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

__all__ = [
    "fused_add_rms_norm",
    "has_cuda_kernels",
    "library_path",
    "rms_norm",
    "rms_norm_",
    "rms_norm_quant",
]

_LIBRARY_NAME = "librmsnorm_torch.so"


def _find_library() -> str:
    # RMSNORM_TORCH_LIBRARY points at a library built outside pip (a CMake build tree).
    override = os.environ.get("RMSNORM_TORCH_LIBRARY")
    if override:
        return override
    bundled = Path(__file__).with_name(_LIBRARY_NAME)
    if bundled.exists():
        return str(bundled)
    raise ImportError(
        f"rmsnorm: the compiled extension {_LIBRARY_NAME} is not next to {__file__}. "
        "Build and install it from the repository root with "
        "`pip install --no-build-isolation .` (see python/README.md), "
        "or set RMSNORM_TORCH_LIBRARY to a built library."
    )


_LIBRARY_PATH = _find_library()
torch.ops.load_library(_LIBRARY_PATH)


def library_path() -> str:
    """The path of the loaded shared library."""
    return _LIBRARY_PATH


def has_cuda_kernels() -> bool:
    """Whether this build registered CUDA kernels (the library and torch both have CUDA)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("rmsnorm::rms_norm", "CUDA")


# ---------------------------------------------------------------------------------------
# Argument checks shared by the fake kernels (the C++ kernels make the same checks, with the
# same exception types, so eager and torch.compile fail alike).
# ---------------------------------------------------------------------------------------

_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HALF = (torch.float16, torch.bfloat16)
_CASTS = ("fp32", "llama")


def _check(x: torch.Tensor, weight: torch.Tensor | None, eps: float, offset: float, cast: str) -> None:
    if x.dim() < 1:
        raise ValueError("rmsnorm: x must have at least one dimension (the normalised one)")
    if x.dtype not in _X_DTYPES or (x.dtype == torch.float64 and x.device.type == "cuda"):
        raise TypeError(
            f"rmsnorm: x has dtype {x.dtype}; expected float32, float16 or bfloat16 (float64 on the CPU)"
        )
    if cast not in _CASTS:
        raise ValueError(f'rmsnorm: cast must be "fp32" or "llama", got "{cast}"')
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"rmsnorm: eps must be finite and >= 0, got {eps}")
    if not math.isfinite(offset):
        raise ValueError(f"rmsnorm: offset must be finite, got {offset}")
    if weight is None:
        if offset != 0:
            raise ValueError(f"rmsnorm: offset must be 0 without a weight, got {offset}")
        return
    if weight.device != x.device:
        raise ValueError(
            f"rmsnorm: weight is on {weight.device} but x is on {x.device}; all tensors must be on the same device"
        )
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rmsnorm: weight must have shape ({x.shape[-1]},) to match x's last dimension, got {tuple(weight.shape)}"
        )
    if not (weight.dtype == x.dtype or (weight.dtype == torch.float32 and x.dtype in _HALF)):
        raise TypeError(
            f"rmsnorm: weight has dtype {weight.dtype} and x {x.dtype}; the weight must have x's dtype, "
            "or be float32 with float16/bfloat16 x"
        )


def _out_dtype(x: torch.Tensor, weight: torch.Tensor | None, cast: str) -> torch.dtype:
    # Under cast="llama", Hugging Face's LlamaRMSNorm returns float32 for a float32 weight.
    if cast == "llama" and weight is not None and weight.dtype == torch.float32 and x.dtype in _HALF:
        return torch.float32
    return x.dtype


def _rstd_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("rmsnorm::rms_norm")
def _rms_norm_fake(x, weight, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    return x.new_empty(x.shape, dtype=_out_dtype(x, weight, cast))


@torch.library.register_fake("rmsnorm::rms_norm_fwd")
def _rms_norm_fwd_fake(x, weight, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    y = x.new_empty(x.shape, dtype=_out_dtype(x, weight, cast))
    rstd = x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))
    return y, rstd


@torch.library.register_fake("rmsnorm::rms_norm_bwd")
def _rms_norm_bwd_fake(dy, x, weight, rstd, eps, offset, want_dw):
    _check(x, weight, eps, offset, "fp32")
    if dy.shape != x.shape or dy.dtype != x.dtype or dy.device != x.device:
        raise ValueError("rmsnorm: dy must have x's shape, dtype and device")
    dx = x.new_empty(x.shape)
    dw = weight.new_empty(weight.shape) if (want_dw and weight is not None) else x.new_empty((0,))
    return dx, dw


@torch.library.register_fake("rmsnorm::rms_norm_")
def _rms_norm_inplace_fake(x, weight, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    if _out_dtype(x, weight, cast) != x.dtype:
        raise TypeError('rmsnorm: rms_norm_ cannot write the float32 result of cast="llama" into 16-bit x in place')


def _check_residual(x: torch.Tensor, residual: torch.Tensor) -> None:
    if residual.device != x.device:
        raise ValueError(
            f"rmsnorm: residual is on {residual.device} but x is on {x.device}; all tensors must be on the same device"
        )
    if residual.shape != x.shape:
        raise ValueError(
            f"rmsnorm: residual has shape {tuple(residual.shape)} but x has {tuple(x.shape)}; they must match"
        )
    if not (residual.dtype == x.dtype or (residual.dtype == torch.float32 and x.dtype in _HALF)):
        raise TypeError(
            f"rmsnorm: residual has dtype {residual.dtype} and x {x.dtype}; the residual must have x's dtype, "
            "or be float32 with float16/bfloat16 x"
        )


@torch.library.register_fake("rmsnorm::fused_add_rms_norm")
def _fused_add_fake(x, residual, weight, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    _check_residual(x, residual)
    return x.new_empty(x.shape, dtype=_out_dtype(x, weight, cast)), residual.new_empty(x.shape)


# The library's limit on the ranks whose partials one call sums (kMaxAllReduceRanks).
MAX_ALLREDUCE_RANKS = 16


def _renamed(e: Exception, x_name: str) -> Exception:
    """The same error with the x of _check's and _check_residual's messages called x_name."""
    return type(e)(re.sub(r"\bx\b", x_name, str(e)))


def _check_partials(partials, residual, weight, eps, offset, cast) -> None:
    """fused_allreduce_add_rms_norm's rules, in the C++ kernel's order and with its exception
    types: partials[0] is checked as fused_add_rms_norm's x, the others against it."""
    if not 1 <= len(partials) <= MAX_ALLREDUCE_RANKS:
        raise ValueError(f"rmsnorm: partials: expected 1 to {MAX_ALLREDUCE_RANKS} tensors, got {len(partials)}")
    x0 = partials[0]
    try:
        _check(x0, weight, eps, offset, cast)
        _check_residual(x0, residual)
    except (TypeError, ValueError) as e:
        raise _renamed(e, "partials[0]") from None
    for k, p in enumerate(partials[1:], 1):
        name = f"partials[{k}]"
        # On CUDA a peer's buffer may be another device's memory mapped into this one.
        if x0.device.type == "cuda" and p.device.type != "cuda":
            raise ValueError(
                f"rmsnorm: {name} is on {p.device} but partials[0] is on {x0.device}; "
                "with CUDA partials every partial must be a CUDA tensor"
            )
        if x0.device.type != "cuda" and p.device != x0.device:
            raise ValueError(
                f"rmsnorm: {name} is on {p.device} but partials[0] is on {x0.device}; "
                "all tensors must be on the same device"
            )
        if p.dtype != x0.dtype:
            raise TypeError(
                f"rmsnorm: {name} has dtype {p.dtype} but partials[0] has {x0.dtype}; all partials must have one dtype"
            )
        if p.shape != x0.shape:
            raise ValueError(
                f"rmsnorm: {name} has shape {tuple(p.shape)} but partials[0] has {tuple(x0.shape)}; "
                "all partials must have one shape"
            )
        if any(n > 1 and a != b for n, a, b in zip(x0.shape, x0.stride(), p.stride())):
            raise ValueError(
                f"rmsnorm: {name} has strides {p.stride()} but partials[0] has {x0.stride()}; "
                "all partials must share one layout"
            )


@torch.library.register_fake("rmsnorm::fused_allreduce_add_rms_norm")
def _fused_allreduce_add_fake(partials, residual, weight, eps, offset, cast):
    _check_partials(partials, residual, weight, eps, offset, cast)
    x0 = partials[0]
    return x0.new_empty(x0.shape, dtype=_out_dtype(x0, weight, cast)), residual.new_empty(x0.shape)


@torch.library.register_fake("rmsnorm::fused_add_rms_norm_fwd")
def _fused_add_fwd_fake(x, residual, weight, eps, offset, cast):
    y, residual_out = _fused_add_fake(x, residual, weight, eps, offset, cast)
    return y, residual_out, x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.register_fake("rmsnorm::fused_add_rms_norm_")
def _fused_add_inplace_fake(x, residual, weight, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    _check_residual(x, residual)
    if _out_dtype(x, weight, cast) != x.dtype:
        raise TypeError(
            'rmsnorm: fused_add_rms_norm_ cannot write the float32 result of cast="llama" into 16-bit x in place'
        )


@torch.library.register_fake("rmsnorm::fused_add_rms_norm_bwd")
def _fused_add_bwd_fake(dy, dr_out, residual_out, weight, rstd, eps, offset, want_dw, dx_dtype, want_dr):
    if dy.shape != residual_out.shape or dr_out.shape != residual_out.shape:
        raise ValueError("rmsnorm: dy and dr_out must have residual_out's shape")
    dx = residual_out.new_empty(residual_out.shape, dtype=dx_dtype)
    dr = residual_out.new_empty(residual_out.shape) if want_dr else residual_out.new_empty((0,))
    dw = weight.new_empty(weight.shape) if (want_dw and weight is not None) else residual_out.new_empty((0,))
    return dx, dr, dw


_QDTYPES = (torch.float8_e4m3fn, torch.int8)
_SCALE_KINDS = ("static", "row", "group")
_DIVISIONS = ("exact", "reciprocal")


@torch.library.register_fake("rmsnorm::rms_norm_quant")
def _rms_norm_quant_fake(
    x, weight, residual, eps, offset, cast, qdtype, scale_kind, scale, group_size, scale_ub, column_major, pow2,
    division="exact",
):
    _check(x, weight, eps, offset, cast)
    if x.dtype == torch.float64:
        raise NotImplementedError("rmsnorm: x: f64 has no quantised output (quantised outputs take f32, f16 or bf16 x)")
    if residual is not None:
        _check_residual(x, residual)
    if qdtype not in _QDTYPES:
        raise TypeError(f"rmsnorm: qdtype must be torch.float8_e4m3fn or torch.int8, got {qdtype}")
    if scale_kind not in _SCALE_KINDS:
        raise ValueError(f'rmsnorm: scale must be a tensor (static), "row" or "group", got "{scale_kind}"')
    if division not in _DIVISIONS:
        raise ValueError(f'rmsnorm: division must be "exact" or "reciprocal", got "{division}"')
    q = x.new_empty(x.shape, dtype=qdtype)
    lead = tuple(x.shape[:-1])
    if scale_kind == "static":
        scales = x.new_empty((0,), dtype=torch.float32)
    elif scale_kind == "row":
        scales = x.new_empty(lead + (1,), dtype=torch.float32)
    else:
        if group_size < 1 or x.shape[-1] % group_size != 0:
            raise ValueError(f"rmsnorm: group_size must divide x's last dimension ({x.shape[-1]}), got {group_size}")
        groups = x.shape[-1] // group_size
        if column_major:
            rows = x.numel() // x.shape[-1]
            scales = x.new_empty((groups, rows), dtype=torch.float32).t().view(lead + (groups,))
        else:
            scales = x.new_empty(lead + (groups,), dtype=torch.float32)
    residual_out = residual.new_empty(x.shape) if residual is not None else x.new_empty((0,))
    return q, scales, residual_out


# ---------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------


def _setup_context(ctx, inputs, output):
    x, weight, eps, offset, _cast = inputs
    _y, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(x, weight, rstd)
    ctx.eps = eps
    ctx.offset = offset


def _backward(ctx, dy, _drstd):
    x, weight, rstd = ctx.saved_tensors
    want_dw = weight is not None and ctx.needs_input_grad[1]
    # The llama cast's roundings count as identities; a float32 y (16-bit x, float32 weight)
    # gets its gradient in x's dtype, which the kernel reads.
    dx, dw = torch.ops.rmsnorm.rms_norm_bwd(dy.to(x.dtype), x, weight, rstd, ctx.eps, ctx.offset, want_dw)
    return (dx if ctx.needs_input_grad[0] else None), (dw if want_dw else None), None, None, None


torch.library.register_autograd("rmsnorm::rms_norm_fwd", _backward, setup_context=_setup_context)


def _fused_add_setup_context(ctx, inputs, output):
    x, residual, weight, eps, offset, _cast = inputs
    _y, residual_out, rstd = output
    ctx.mark_non_differentiable(rstd)
    ctx.save_for_backward(residual_out, weight, rstd)
    ctx.eps = eps
    ctx.offset = offset
    ctx.x_dtype = x.dtype
    ctx.r_dtype = residual.dtype


def _fused_add_backward(ctx, dy, dr_out, _drstd):
    residual_out, weight, rstd = ctx.saved_tensors
    # Outputs that took no part in the loss get no gradient: zeros of their shape.
    dy = torch.zeros_like(residual_out, dtype=ctx.x_dtype) if dy is None else dy.to(ctx.x_dtype)
    dr_out = torch.zeros_like(residual_out) if dr_out is None else dr_out.to(ctx.r_dtype)
    want_dw = weight is not None and ctx.needs_input_grad[2]
    want_dr = ctx.r_dtype != ctx.x_dtype and ctx.needs_input_grad[1]  # else dr is dx
    dx, dr, dw = torch.ops.rmsnorm.fused_add_rms_norm_bwd(
        dy, dr_out, residual_out, weight, rstd, ctx.eps, ctx.offset, want_dw, ctx.x_dtype, want_dr
    )
    dx_out = dx if ctx.needs_input_grad[0] else None
    dr_res = (dr if want_dr else dx) if ctx.needs_input_grad[1] else None
    return dx_out, dr_res, (dw if want_dw else None), None, None, None


torch.library.register_autograd(
    "rmsnorm::fused_add_rms_norm_fwd", _fused_add_backward, setup_context=_fused_add_setup_context
)


# ---------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------

_rms_norm_op = torch.ops.rmsnorm.rms_norm.default
_rms_norm_fwd_op = torch.ops.rmsnorm.rms_norm_fwd.default
_rms_norm_inplace_op = torch.ops.rmsnorm.rms_norm_.default
_fused_add_op = torch.ops.rmsnorm.fused_add_rms_norm.default
_fused_add_fwd_op = torch.ops.rmsnorm.fused_add_rms_norm_fwd.default
_fused_add_inplace_op = torch.ops.rmsnorm.fused_add_rms_norm_.default
_fused_allreduce_add_op = torch.ops.rmsnorm.fused_allreduce_add_rms_norm.default
_rms_norm_quant_op = torch.ops.rmsnorm.rms_norm_quant.default

# Set by rmsnorm.distributed (when torch.distributed is available): serves a call with a
# process group, or on a DTensor sharded on its last dimension; returns None otherwise.
_distributed_route = None


def _route(x, weight, eps, offset, cast, group, full_cols):
    if _distributed_route is None:
        if group is not None:
            raise RuntimeError("rmsnorm: group= needs torch.distributed, which this build of torch lacks")
        return None
    return _distributed_route(x, weight, eps, offset, cast, group, full_cols)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    cast: str = "fp32",
    group=None,
    full_cols: int | None = None,
) -> torch.Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x**2, -1) + eps) * (weight + offset)``.

    x: float32, float16 or bfloat16 (float64 on the CPU), any leading dimensions. Its last
        dimension must be contiguous for a zero-copy call; leading dimensions may be strided
        (slices, a head view of a fused QKV buffer) as long as they form at most two stride
        groups. Anything else is normalised from a contiguous copy.
    weight: (x.shape[-1],) of x's dtype, or float32 with 16-bit x; None means 1.
    offset: added to the weight: 0 for Llama/Mistral/Qwen, 1 for Gemma's ``(1 + w)``.
    cast: "fp32" (all math in fp32, one rounding; also Gemma) or "llama" (Hugging Face
        LlamaRMSNorm's roundings: ``x * rstd`` rounded to x's dtype, then times the weight in
        the promoted dtype, so a float32 weight with 16-bit x gives a float32 result).

    group: a torch.distributed process group over whose ranks the last dimension is split:
        x and weight are this rank's columns, the result too (see rmsnorm.distributed,
        rms_norm_sharded). full_cols: the whole row's length, by default x.shape[-1] times
        the group's size. A DTensor sharded on its last dimension takes the same path.

    The result is a new contiguous tensor of x's shape. Differentiable in x and weight.
    """
    if group is not None or type(x) is not torch.Tensor:
        routed = _route(x, weight, eps, offset, cast, group, full_cols)
        if routed is not None:
            return routed
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return _rms_norm_fwd_op(x, weight, eps, offset, cast)[0]
    return _rms_norm_op(x, weight, eps, offset, cast)


def rms_norm_(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    cast: str = "fp32",
    group=None,
    full_cols: int | None = None,
) -> torch.Tensor:
    """In-place :func:`rms_norm` of ``x`` (no copy fallback, no autograd); returns ``x``.

    With a process group (or a DTensor sharded on its last dimension), the result of the
    sharded path is copied into x.
    """
    if group is not None or type(x) is not torch.Tensor:
        with torch.no_grad():
            routed = _route(x, weight, eps, offset, cast, group, full_cols)
        if routed is not None:
            x.copy_(routed)
            return x
    _rms_norm_inplace_op(x, weight, eps, offset, cast)
    return x


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    offset: float = 0.0,
    cast: str = "fp32",
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the norm after it, in one pass: returns ``(y, residual_out)``.

    ``residual_out = x + residual`` is added in float32 and rounded once to the residual's
    dtype; ``y = rms_norm(residual_out, weight, eps, offset=offset, cast=cast)``, the norm of
    the rounded sum (what the next layer reads: Hugging Face's and vLLM's order). ``y``
    equals :func:`rms_norm` applied to ``residual_out`` (bit for bit when the residual has
    x's dtype).

    x: float32, float16 or bfloat16 (float64 on the CPU); residual: x's shape, x's dtype or
        float32 with 16-bit x (an fp32 residual stream); weight, offset, cast as in
        :func:`rms_norm` (``cast="llama"`` rounds to x's dtype).
    inplace: vLLM's ``fused_add_rms_norm`` contract: x is overwritten with y and residual
        with residual_out, and the two are returned (no autograd, no copy fallback).

    Out of place it is differentiable in x, residual and weight: x and residual receive the
    same gradient, the norm's plus the one arriving at residual_out, in one pass.
    """
    if inplace:
        _fused_add_inplace_op(x, residual, weight, eps, offset, cast)
        return x, residual
    wants_grad = x.requires_grad or residual.requires_grad or (weight is not None and weight.requires_grad)
    if torch.is_grad_enabled() and wants_grad:
        y, residual_out, _ = _fused_add_fwd_op(x, residual, weight, eps, offset, cast)
        return y, residual_out
    return _fused_add_op(x, residual, weight, eps, offset, cast)


def rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    qdtype: torch.dtype = torch.float8_e4m3fn,
    scale: torch.Tensor | str = "row",
    group_size: int = 128,
    scale_ub: torch.Tensor | None = None,
    column_major_scales: bool = False,
    pow2_scales: bool = False,
    residual: torch.Tensor | None = None,
    offset: float = 0.0,
    cast: str = "fp32",
    division: str = "exact",
):
    """RMSNorm with an 8-bit output: returns ``(q, scales)``, or ``(q, scales, residual_out)``
    when given a residual (then the norm is of ``residual_out = x + residual``, as in
    :func:`fused_add_rms_norm`; the residual itself is left alone).

    y is computed in float32 as :func:`rms_norm` computes it before its final rounding
    (never rounded to 16 bits under ``cast="fp32"``), then ``q = sat(y / s)``: the correctly
    rounded float32 division, then for ``torch.float8_e4m3fn`` round to nearest even
    saturated at +-448 (``(y / s).clamp(-448, 448).to(torch.float8_e4m3fn)`` bit for bit),
    for ``torch.int8`` round half to even saturated at +-127. With ``division="reciprocal"``
    the quotient is ``y * (1 / s)``, ``1 / s`` rounded once to float32, as vLLM's fused
    norm-and-quantise kernels compute it: faster on the GPU (one multiply a value), and one
    code away from the exact quotient's where ``y / s`` lies within a float32 rounding of a
    boundary between codes. (A static scale outside ``[2**-64, 2**64]`` is divided by exactly
    either way.)

    scale: a one-element float32 tensor (a static per-tensor scale; returned as the scales),
        ``"row"`` (one scale a row, shape ``x.shape[:-1] + (1,)``) or ``"group"`` (one a row
        and group of ``group_size`` columns, shape ``x.shape[:-1] + (N // group_size,)``;
        with ``column_major_scales`` laid out group-major in memory, as DeepSeek-V3's GEMMs
        read them). A computed scale is ``max(min(amax, scale_ub) / qmax, 1 / (qmax * 512))``
        (qmax 448 or 127), rounded up to a power of two with ``pow2_scales``; ``scale_ub`` is
        an optional one-element float32 tensor capping the amax.

    Not differentiable.
    """
    if isinstance(scale, torch.Tensor):
        kind, static = "static", scale
    elif scale in ("row", "group"):
        kind, static = scale, None
    else:
        raise ValueError(f'rmsnorm: scale must be a tensor (static), "row" or "group", got {scale!r}')
    q, scales, residual_out = _rms_norm_quant_op(
        x, weight, residual, eps, offset, cast, qdtype, kind, static, group_size, scale_ub,
        column_major_scales, pow2_scales, division,
    )
    if static is not None:
        scales = static
    return (q, scales) if residual is None else (q, scales, residual_out)
