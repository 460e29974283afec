"""The custom ops: loading the compiled library, fake kernels, autograd, the functional API.

The schemas and the CPU/CUDA kernels are registered in C++ (python/csrc/torch_ops.cpp):

    rmsnorm::rms_norm(x, weight, eps, offset, cast) -> y            inference, no autograd
    rmsnorm::rms_norm_fwd(x, weight, eps, offset, cast) -> (y, rstd)  what autograd wraps
    rmsnorm::rms_norm_bwd(dy, x, weight, rstd, eps, offset, want_dw) -> (dx, dw)
    rmsnorm::rms_norm_(x!, weight, eps, offset, cast) -> ()          in place

This module adds what belongs in Python: fake kernels (shapes and dtypes only, so that
torch.compile traces the ops without running them) and the autograd formula.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["rms_norm", "rms_norm_", "library_path", "has_cuda_kernels"]

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


# ---------------------------------------------------------------------------------------
# Functional API
# ---------------------------------------------------------------------------------------

_rms_norm_op = torch.ops.rmsnorm.rms_norm.default
_rms_norm_fwd_op = torch.ops.rmsnorm.rms_norm_fwd.default
_rms_norm_inplace_op = torch.ops.rmsnorm.rms_norm_.default

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
