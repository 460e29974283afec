"""Fake kernels of the sharded-row ops (rows whose last dimension is split across ranks).

The schemas and the CPU/CUDA kernels are registered in C++ (python/csrc/torch_ops.cpp):

    rmsnorm::partial_sum_squares(x) -> sums                         sum of x**2 over the shard
    rmsnorm::rms_norm_from_sums(x, weight, sums, full_cols, eps, offset, cast) -> (y, rstd)
    rmsnorm::partial_grad_dot(dy, x, weight, offset) -> dots         sum of dy * (w + offset) * x
    rmsnorm::rms_norm_from_sums_bwd(dy, x, weight, rstd, dots, full_cols, offset, want_dw) -> (dx, dw)

``sums``, ``dots`` and ``rstd`` have shape ``x.shape[:-1]``, float32 (float64 for float64 x).
The reductions between the steps, and the autograd that strings them together, are in
rmsnorm/distributed.py, which needs torch.distributed; this module does not, so torch can
import it for the fake kernels wherever the library is loaded.
"""

from __future__ import annotations

import torch

from ._ops import _check, _out_dtype, _rstd_dtype

__all__: list[str] = []


def _check_rows(t: torch.Tensor, x: torch.Tensor, name: str) -> None:
    if t.device != x.device:
        raise ValueError(f"rmsnorm: {name} is on {t.device} but x is on {x.device}")
    if t.dtype != _rstd_dtype(x):
        raise TypeError(f"rmsnorm: {name} has dtype {t.dtype}; expected {_rstd_dtype(x)}")
    if t.shape != x.shape[:-1]:
        raise ValueError(
            f"rmsnorm: {name} has shape {tuple(t.shape)}; expected x.shape[:-1] = {tuple(x.shape[:-1])}"
        )


def _check_shard(x: torch.Tensor, full_cols: int) -> None:
    if x.dim() >= 1 and x.shape[-1] == 0:
        raise ValueError("rmsnorm: x's last dimension must not be empty (every rank needs a column of each row)")
    if full_cols < x.shape[-1]:
        raise ValueError(
            "rmsnorm: full_cols (the whole row's length) must be >= x's last dimension "
            f"({x.shape[-1]}), got {full_cols}"
        )


def _check_dy(dy: torch.Tensor, x: torch.Tensor) -> None:
    if dy.shape != x.shape or dy.dtype != x.dtype or dy.device != x.device:
        raise ValueError("rmsnorm: dy must have x's shape, dtype and device")


@torch.library.register_fake("rmsnorm::partial_sum_squares")
def _partial_sum_squares_fake(x):
    _check(x, None, 1e-6, 0.0, "fp32")
    _check_shard(x, x.shape[-1])
    return x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.register_fake("rmsnorm::rms_norm_from_sums")
def _rms_norm_from_sums_fake(x, weight, sums, full_cols, eps, offset, cast):
    _check(x, weight, eps, offset, cast)
    _check_shard(x, full_cols)
    _check_rows(sums, x, "sums")
    y = x.new_empty(x.shape, dtype=_out_dtype(x, weight, cast))
    return y, x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.register_fake("rmsnorm::partial_grad_dot")
def _partial_grad_dot_fake(dy, x, weight, offset):
    _check(x, weight, 1e-6, offset, "fp32")
    _check_shard(x, x.shape[-1])
    _check_dy(dy, x)
    return x.new_empty(x.shape[:-1], dtype=_rstd_dtype(x))


@torch.library.register_fake("rmsnorm::rms_norm_from_sums_bwd")
def _rms_norm_from_sums_bwd_fake(dy, x, weight, rstd, dots, full_cols, offset, want_dw):
    _check(x, weight, 1e-6, offset, "fp32")
    _check_shard(x, full_cols)
    _check_dy(dy, x)
    _check_rows(rstd, x, "rstd")
    _check_rows(dots, x, "dots")
    dx = x.new_empty(x.shape)
    dw = weight.new_empty(weight.shape) if (want_dw and weight is not None) else x.new_empty((0,))
    return dx, dw
