"""The end of a tensor-parallel decoder layer: all-reduce, residual add and RMSNorm.

    y, residual = rmsnorm.fused_allreduce_add_rms_norm(x_partial, residual, weight, eps, group=tp_group)

is the sum of the ranks' partial outputs on ``group``, the residual add and the norm, in one
of two ways (``algorithm=``):

- "nccl": ``torch.distributed.all_reduce`` (sum) on the group, then
  :func:`rmsnorm.fused_add_rms_norm` of the sum: PyTorch's own collective followed by the
  library's fused residual add;
- "oneshot" (CUDA): every rank copies its partial into a symmetric-memory buffer, and one
  kernel, ``torch.ops.rmsnorm.fused_allreduce_add_rms_norm``, reads all the ranks' buffers
  directly, sums them in float32 in rank order, adds the residual and normalises: a one-shot
  all-reduce fused into the norm, between two barriers.
"""

from __future__ import annotations

import os
import re

import torch
import torch.distributed as dist

from . import _ops

__all__ = ["fused_allreduce_add_rms_norm"]

_NAME = "rmsnorm.fused_allreduce_add_rms_norm"
_ALGORITHMS = ("nccl", "oneshot", "twoshot")


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


def _check_args(x_partial, residual, weight, eps, offset, cast, inplace, algorithm) -> None:
    """fused_add_rms_norm's rules, checked before anything is communicated, with the
    arguments called by their names here."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"{_NAME}: algorithm must be one of {', '.join(map(repr, _ALGORITHMS))}, got {algorithm!r}")
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
        if algorithm == "nccl" and not x_partial.is_contiguous():
            raise ValueError(
                f"{_NAME}: inplace=True needs a contiguous x_partial (the all-reduce works on its storage); "
                f"got shape {tuple(x_partial.shape)} strides {x_partial.stride()}"
            )


def _check_symmetric(x_partial, world: int, algorithm: str) -> None:
    """The rules of the algorithms over symmetric memory ("oneshot", "twoshot")."""
    if world > _ops.MAX_ALLREDUCE_RANKS:
        raise ValueError(
            f"{_NAME}: algorithm={algorithm!r} sums at most {_ops.MAX_ALLREDUCE_RANKS} ranks' partials, "
            f"the group has {world}; use algorithm='nccl'"
        )
    if x_partial.device.type != "cuda":
        raise ValueError(
            f"{_NAME}: algorithm={algorithm!r} needs CUDA tensors (the ranks read each other's partials "
            f"through symmetric memory); x_partial is on {x_partial.device}; use algorithm='nccl'"
        )


# The symmetric-memory buffers of "oneshot": (group name, device) -> (group, buffer, handle).
# Allocating and exchanging one is a collective and slow, so it is kept for the process and
# replaced only by a larger one (or for a new group object of the same name): every rank
# passes the same shapes, so every rank grows its buffer at the same call. One byte buffer
# serves every dtype and shape, as a view of its first bytes.
_SYMMETRIC_BUFFERS: dict = {}


def _symmetric_handle(group, device: torch.device, nbytes: int):
    pg = group if group is not None else dist.group.WORLD
    key = (pg.group_name, device)
    entry = _SYMMETRIC_BUFFERS.get(key)
    if entry is None or entry[0] is not pg or entry[1].numel() < nbytes:
        # Read by torch and NVSHMEM when symmetric memory is set up (later settings are not seen):
        # the project never uses NVLink multicast.
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
        import torch.distributed._symmetric_memory as symm_mem

        # A power of two: shapes that grow a little at a time do not each cost an exchange.
        capacity = 1 << (nbytes - 1).bit_length()
        buffer = symm_mem.empty(capacity, dtype=torch.uint8, device=device)
        entry = (pg, buffer, symm_mem.rendezvous(buffer, pg))
        _SYMMETRIC_BUFFERS[key] = entry
    return entry[2]


@torch.compiler.disable
def _oneshot(x_partial, residual, weight, eps, offset, cast, group):
    """(y, residual_out) of a non-empty partial: every rank's partial in symmetric memory,
    one kernel over them all between two barriers."""
    handle = _symmetric_handle(group, x_partial.device, x_partial.numel() * x_partial.element_size())
    shape = tuple(x_partial.shape)
    partials = [handle.get_buffer(r, shape, x_partial.dtype) for r in range(handle.world_size)]
    partials[handle.rank].copy_(x_partial)
    handle.barrier(channel=0)  # every rank's partial is written
    y, r_out = _ops._fused_allreduce_add_op(partials, residual, weight, eps, offset, cast)
    handle.barrier(channel=0)  # every rank has read every partial: the buffers may be rewritten
    return y, r_out


def _aligned(nbytes: int) -> int:
    """nbytes rounded up to 16: each region of the symmetric buffer starts on a 16-byte
    boundary, so that the kernel reads its rows with whole-chunk accesses."""
    return (nbytes + 15) // 16 * 16


@torch.compiler.disable
def _twoshot(x_partial, residual, weight, eps, offset, cast, group):
    """(y, residual_out) of a non-empty partial: each rank sums, adds and normalises its own
    block of rows (reading those rows of every rank's partial), writes them into its buffer,
    and then copies the other ranks' blocks: every partial byte is read once over the group
    instead of by every rank, at the price of a second exchange (the outputs) and a third
    barrier."""
    n = x_partial.shape[-1]
    m = x_partial.numel() // n
    y_dtype = _ops._out_dtype(x_partial, weight, cast)
    dtypes = (x_partial.dtype, y_dtype, residual.dtype)  # the buffer's regions: partial, y, residual_out
    sizes = [m * n * t.itemsize for t in dtypes]
    starts = [0, _aligned(sizes[0]), _aligned(sizes[0]) + _aligned(sizes[1])]
    handle = _symmetric_handle(group, x_partial.device, starts[2] + sizes[2])
    world, rank = handle.world_size, handle.rank

    def region(r, k):  # rank r's region k as (m, n) rows of its dtype
        return handle.get_buffer(r, (m, n), dtypes[k], storage_offset=starts[k] // dtypes[k].itemsize)

    share = -(-m // world)  # rows a rank, the last rank's block shorter (or empty)
    blocks = [(min(r * share, m), min((r + 1) * share, m)) for r in range(world)]
    lo, hi = blocks[rank]
    region(rank, 0).copy_(x_partial.reshape(m, n))
    handle.barrier(channel=0)  # every rank's partial is written
    if hi > lo:
        partials = [region(r, 0)[lo:hi] for r in range(world)]
        y_own, r_own = _ops._fused_allreduce_add_op(partials, residual.reshape(m, n)[lo:hi], weight, eps, offset, cast)
        region(rank, 1)[lo:hi].copy_(y_own)
        region(rank, 2)[lo:hi].copy_(r_own)
    handle.barrier(channel=0)  # every block of y and residual_out is written (and every partial read)
    y = torch.empty((m, n), dtype=y_dtype, device=x_partial.device)
    r_out = torch.empty((m, n), dtype=residual.dtype, device=x_partial.device)
    for r, (a, b) in enumerate(blocks):
        if b > a:
            y[a:b].copy_(region(r, 1)[a:b])
            r_out[a:b].copy_(region(r, 2)[a:b])
    handle.barrier(channel=0)  # every rank has its copies: the buffers may be rewritten
    return y.reshape(x_partial.shape), r_out.reshape(x_partial.shape)


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
    algorithm: str = "nccl",
) -> tuple[torch.Tensor, torch.Tensor]:
    """All-reduce of the ranks' partial outputs, the residual add and RMSNorm: returns
    ``(y, residual_out)``.

    ``s = sum over the ranks of group of x_partial``, ``residual_out = s + residual`` (added
    in float32, rounded once to the residual's dtype) and ``y = rms_norm(residual_out,
    weight, eps)``. Every rank of the group calls it with its partial output (the output of
    a row-parallel layer) and the same residual, and every rank gets the same ``y`` and
    ``residual_out``.

    algorithm: how the ranks' partials are summed.

    - "nccl" (default): one ``torch.distributed.all_reduce`` (``ReduceOp.SUM``) on ``group``
      of ``M * N`` elements of x_partial's dtype (x_partial's whole shape; the group's
      backend: NCCL on GPUs, gloo on CPUs), then exactly ``rmsnorm.fused_add_rms_norm(s,
      residual, weight, eps, offset=offset, cast=cast, inplace=inplace)``; nothing else is
      communicated. The sum is in x_partial's dtype, in the collective's order. A group of
      one rank makes no collective call (``s`` is x_partial itself).
    - "oneshot": CUDA tensors, at most 16 ranks. x_partial is copied into this rank's
      symmetric-memory buffer (``torch.distributed._symmetric_memory``), the ranks meet at a
      barrier, ``torch.ops.rmsnorm.fused_allreduce_add_rms_norm`` reads every rank's buffer
      directly and sums them in float32 in rank order (never rounded to x_partial's dtype),
      adds the residual and normalises in one kernel, and the ranks meet at a second barrier
      before any of them may rewrite its buffer. One buffer per (group, device), allocated
      and exchanged (a collective) on the first call and again whenever a larger partial
      comes; then a call is a copy, two barriers and the kernel. Before its first symmetric
      allocation it sets ``TORCH_SYMM_MEM_DISABLE_MULTICAST=1`` and
      ``NVSHMEM_DISABLE_NVLS=1`` unless they are set (``os.environ.setdefault``): the project
      does not use NVLink multicast. A group of one rank takes the same path. Eager only (it
      is excluded from ``torch.compile`` graphs). Not yet measured on several GPUs.
    - "twoshot": as "oneshot" (CUDA, at most 16 ranks, the same buffer and rules), but each
      rank sums, adds and normalises only its block of ceil(M / ranks) rows (those rows of
      every rank's partial), writes them into its buffer, and after a second barrier copies
      the other ranks' blocks of y and residual_out; a third barrier ends the call. Every
      partial byte is read once across the group rather than once by every rank. The bits
      are "oneshot"'s (the same sum, in rank order, and the same norm a row).

    x_partial: this rank's partial sum, float32, float16 or bfloat16 (float64 on the CPU).
    residual: x_partial's shape, its dtype or float32 with 16-bit x_partial (an fp32 residual
        stream). weight, eps, offset, cast: as in :func:`rmsnorm.rms_norm`.
    group: the process group (default None: the default group, which must be initialised).
    inplace: False (default): x_partial and residual are left alone. True: as in
        ``fused_add_rms_norm(..., inplace=True)`` (vLLM's contract), x_partial is overwritten
        with y and residual with residual_out; the two are returned. With "nccl" the
        all-reduce runs on x_partial's storage, which must then be contiguous; with
        "oneshot" y and residual_out are computed into new tensors and copied over the
        inputs (any layout).

    The arguments are checked (with fused_add_rms_norm's rules) before anything is
    communicated. Gradients are not supported: with grad mode on, an input that requires
    grad raises a RuntimeError (use it under ``torch.no_grad()`` / ``torch.inference_mode()``,
    as inference engines do). With "nccl" it is traceable by ``torch.compile``
    (``fullgraph=True``): the all-reduce becomes a functional collective in the graph.

    NCCL: the project requires ``NCCL_NVLS_ENABLE=0`` (NVLink SHARP off). Setting it is the
    caller's job, before the process group (and its NCCL communicator) is created, e.g.
    ``os.environ.setdefault("NCCL_NVLS_ENABLE", "0")`` before
    ``torch.distributed.init_process_group("nccl")``; this function does not set it.
    """
    _check_args(x_partial, residual, weight, eps, offset, cast, inplace, algorithm)
    world = _world_size(group)
    if algorithm in ("oneshot", "twoshot"):
        _check_symmetric(x_partial, world, algorithm)
        if x_partial.numel() == 0:  # nothing to sum, nothing to exchange
            y, r_out = _ops._fused_allreduce_add_op([x_partial], residual, weight, eps, offset, cast)
        else:
            run = _oneshot if algorithm == "oneshot" else _twoshot
            y, r_out = run(x_partial, residual, weight, eps, offset, cast, group)
        if not inplace:
            return y, r_out
        x_partial.copy_(y)
        residual.copy_(r_out)
        return x_partial, residual
    s = x_partial
    if world > 1:
        if not inplace:
            s = x_partial.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(s, op=dist.ReduceOp.SUM, group=group)
    return _ops.fused_add_rms_norm(s, residual, weight, eps, offset=offset, cast=cast, inplace=inplace)
