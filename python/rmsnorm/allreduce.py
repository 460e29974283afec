"""The end of a tensor-parallel decoder layer: all-reduce, residual add and RMSNorm.

    y, residual = rmsnorm.fused_allreduce_add_rms_norm(x_partial, residual, weight, eps, group=tp_group)

is ``torch.distributed.all_reduce`` (sum) of the ranks' partial outputs on ``group``, then
:func:`rmsnorm.fused_add_rms_norm` of the sum. This module is that path: PyTorch's own
collective followed by the library's fused residual add. A fused kernel doing the all-reduce
itself (through symmetric memory) is planned; this path stays its fallback for the sizes and
topologies where the fused kernel does not pay.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist

from . import _ops

__all__ = ["fused_allreduce_add_rms_norm"]

_NAME = "rmsnorm.fused_allreduce_add_rms_norm"


def _world_size(group) -> int:
    """The size of `group` (None: the default group), with a clear error for a group this
    call cannot use."""
    if not dist.is_available():
        raise RuntimeError(f"{_NAME}: torch.distributed is not available in this build of torch")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{_NAME}: group: no process group is initialised; call torch.distributed.init_process_group "
            "first (group=None means the default group)"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        if isinstance(group, int) and group == dist.GroupMember.NON_GROUP_MEMBER:
            raise ValueError(f"{_NAME}: group: this rank is not a member of the process group it was given")
        raise TypeError(f"{_NAME}: group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")
    return dist.get_world_size(group)


def _check_args(x_partial, residual, weight, eps, offset, cast, inplace) -> None:
    """fused_add_rms_norm's rules, checked before anything is communicated, with the
    arguments called by their names here."""
    if not isinstance(x_partial, torch.Tensor):
        raise TypeError(f"{_NAME}: x_partial must be a tensor, got {type(x_partial).__name__}")
    if not isinstance(residual, torch.Tensor):
        raise TypeError(f"{_NAME}: residual must be a tensor, got {type(residual).__name__}")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError(f"{_NAME}: weight must be a tensor or None, got {type(weight).__name__}")
    try:
        _ops._check(x_partial, weight, eps, offset, cast)
        _ops._check_residual(x_partial, residual)
    except (TypeError, ValueError) as e:
        # "rmsnorm: x ..." -> "rmsnorm.fused_allreduce_add_rms_norm: x_partial ..."
        message = re.sub(r"\bx\b", "x_partial", str(e).replace("rmsnorm: ", f"{_NAME}: ", 1))
        raise type(e)(message) from None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x_partial, residual, weight)):
        raise RuntimeError(
            f"{_NAME}: gradients are not supported (an input requires grad: x_partial, residual or weight); "
            "call it under torch.no_grad() or torch.inference_mode(); for training, compose an all-reduce "
            "with the backward your parallelism needs and rmsnorm.fused_add_rms_norm"
        )
    if inplace:
        if _ops._out_dtype(x_partial, weight, cast) != x_partial.dtype:
            raise TypeError(
                f'{_NAME}: inplace=True cannot write the float32 result of cast="llama" (float32 weight) '
                f"into x_partial of dtype {x_partial.dtype}"
            )
        if not x_partial.is_contiguous():
            raise ValueError(
                f"{_NAME}: inplace=True needs a contiguous x_partial (the all-reduce works on its storage); "
                f"got shape {tuple(x_partial.shape)} strides {x_partial.stride()}"
            )


def fused_allreduce_add_rms_norm(
    x_partial: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    group: dist.ProcessGroup | None = None,
    offset: float = 0.0,
    cast: str = "fp32",
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-reduce of the ranks' partial outputs, the residual add and RMSNorm: returns
    ``(y, residual_out)``.

    ``s = sum over the ranks of group of x_partial``, then exactly
    ``rmsnorm.fused_add_rms_norm(s, residual, weight, eps, offset=offset, cast=cast,
    inplace=inplace)``: ``residual_out = s + residual`` (added in float32, rounded once to the
    residual's dtype) and ``y = rms_norm(residual_out, weight, eps)``. Every rank of the group
    calls it with its partial output (the output of a row-parallel layer) and the same
    residual, and every rank gets the same ``y`` and ``residual_out``.

    This is the collective-then-fused-kernel path: one ``torch.distributed.all_reduce``
    (``ReduceOp.SUM``) on ``group`` of ``M * N`` elements of x_partial's dtype (x_partial's
    whole shape; NCCL on GPUs, gloo on CPUs), then the fused residual-add kernel; nothing
    else is communicated. The sum is in x_partial's dtype, in the collective's order. A group
    of one rank makes no collective call (``s`` is x_partial itself).

    x_partial: this rank's partial sum, float32, float16 or bfloat16 (float64 on the CPU).
    residual: x_partial's shape, its dtype or float32 with 16-bit x_partial (an fp32 residual
        stream). weight, eps, offset, cast: as in :func:`rmsnorm.rms_norm`.
    group: the process group (default None: the default group, which must be initialised).
    inplace: False (default): x_partial and residual are left alone; the sum goes into a
        copy of x_partial. True: the all-reduce runs on x_partial's storage, and then, as in
        ``fused_add_rms_norm(..., inplace=True)`` (vLLM's contract), x_partial is overwritten
        with y and residual with residual_out; the two are returned. x_partial must then be
        contiguous.

    The arguments are checked (with fused_add_rms_norm's rules) before anything is
    communicated. Gradients are not supported: with grad mode on, an input that requires
    grad raises a RuntimeError (use it under ``torch.no_grad()`` / ``torch.inference_mode()``,
    as inference engines do). Traceable by ``torch.compile`` (``fullgraph=True``): the
    all-reduce becomes a functional collective in the graph.

    NCCL: the project requires ``NCCL_NVLS_ENABLE=0`` (NVLink SHARP off). Setting it is the
    caller's job, before the process group (and its NCCL communicator) is created, e.g.
    ``os.environ.setdefault("NCCL_NVLS_ENABLE", "0")`` before
    ``torch.distributed.init_process_group("nccl")``; this function does not set it.
    """
    _check_args(x_partial, residual, weight, eps, offset, cast, inplace)
    world = _world_size(group)
    s = x_partial
    if world > 1:
        if not inplace:
            s = x_partial.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return _ops.fused_add_rms_norm(s, residual, weight, eps, offset=offset, cast=cast, inplace=inplace)
