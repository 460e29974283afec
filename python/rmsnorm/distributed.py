"""rmsnorm beyond one device, through torch.distributed (no communication layer of its own).

Two things live here, both set up when ``import rmsnorm`` finds torch.distributed:

1. Rows whose last (hidden) dimension is split across the ranks of a process group (tensor
   parallelism: the q/k norms of a whole projection whose heads are split, a norm after a
   row-split layer). ``rms_norm(x_shard, w_shard, eps, group=pg)`` runs the library's two
   steps around one ``torch.distributed.all_reduce`` of the rows' partial sums of squares
   (4 bytes a row, 8 for float64); its backward runs two more around one all-reduce of the
   rows' partial ``sum(dy * (w + offset) * x)``. A shard's weight gradient is its own
   columns': nothing else is communicated.

2. DTensor sharding rules for every rmsnorm op, registered with
   ``torch.distributed.tensor.experimental.register_sharding``. Rows sharded on any
   dimension but the last are normalised where they are: outputs and rstd sharded the same
   way, the weight replicated, the weight's gradient a pending sum (``Partial``) that DTensor
   reduces when it is needed. A replicated input stays replicated. A DTensor sharded on its
   last dimension is routed by ``rmsnorm.rms_norm`` (and ``RMSNorm``) to the steps of item 1,
   whose rules turn the partial sums into a ``Partial`` that DTensor all-reduces; the plain
   ops have no rule for it, so a direct ``torch.ops.rmsnorm`` call on one gathers the rows
   first (correct, but it moves the whole tensor).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.experimental import register_sharding

from . import _ops

__all__ = ["rms_norm_sharded"]

_ops_ns = torch.ops.rmsnorm


# ---------------------------------------------------------------------------------------
# Rows split across ranks
# ---------------------------------------------------------------------------------------


class _ShardedRows(torch.autograd.Function):
    """y = rms_norm over rows whose columns are split across ranks; `reduce` sums a per-row
    tensor over the ranks (an all-reduce on a process group, or DTensor's redistribution)."""

    @staticmethod
    def forward(ctx, x, weight, eps, offset, cast, full_cols, reduce):
        sums = reduce(_ops_ns.partial_sum_squares(x))
        y, rstd = _ops_ns.rms_norm_from_sums(x, weight, sums, full_cols, eps, offset, cast)
        ctx.save_for_backward(x, weight, rstd)
        ctx.offset, ctx.full_cols, ctx.reduce = offset, full_cols, reduce
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        want_dw = weight is not None and ctx.needs_input_grad[1]
        # As in the unsharded op: the llama cast's roundings count as identities, and a
        # float32 y (16-bit x, float32 weight) gets its gradient in x's dtype.
        dy = dy.to(x.dtype)
        dots = ctx.reduce(_ops_ns.partial_grad_dot(dy, x, weight, ctx.offset))
        dx, dw = _ops_ns.rms_norm_from_sums_bwd(dy, x, weight, rstd, dots, ctx.full_cols, ctx.offset, want_dw)
        if want_dw and isinstance(weight, DTensor) and dw.placements != weight.placements:
            dw = dw.redistribute(weight.device_mesh, weight.placements)  # e.g. the shards of a replicated weight
        return dx, (dw if want_dw else None), None, None, None, None, None


def _all_reduce_on(group):
    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    return reduce


def _reduce_partial(t: DTensor) -> DTensor:
    """A DTensor's pending sums made whole (an all-reduce over the mesh dimensions they are
    pending on); its other placements stay."""
    placements = [Replicate() if p.is_partial() else p for p in t.placements]
    return t.redistribute(t.device_mesh, placements)


def rms_norm_sharded(
    x: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    *,
    group: dist.ProcessGroup | None = None,
    offset: float = 0.0,
    cast: str = "fp32",
    full_cols: int | None = None,
) -> torch.Tensor:
    """RMSNorm of rows whose last dimension is split across the ranks of ``group``.

    x: this rank's columns of every row (``x[..., begin:end]`` of the whole tensor), at least
        one column. weight: the same columns of the weight (or None). Every rank of the group
        calls this with its shard of the same rows.
    full_cols: the length N of a whole row; by default ``x.shape[-1] * group size`` (shards of
        equal width). Pass it when the shards' widths differ.
    group: the process group (default: the default group). The all-reduce runs there:
        NCCL on GPUs, gloo on CPUs.

    Returns this rank's columns of y. Differentiable in x and weight: the backward makes one
    more all-reduce of a float32 per row; the weight's gradient is this shard's, local.
    Equals the unsharded op within the tolerance of one float32 sum of N squares.
    """
    if full_cols is None:
        full_cols = x.shape[-1] * dist.get_world_size(group)
    return _ShardedRows.apply(x, weight, eps, offset, cast, int(full_cols), _all_reduce_on(group))


def _sharded_on_last_dim(x: DTensor) -> bool:
    return x.ndim > 0 and any(p.is_shard() and p.dim % x.ndim == x.ndim - 1 for p in x.placements)


def _rms_norm_dtensor(x: DTensor, weight, eps: float, offset: float, cast: str) -> DTensor:
    # The whole row's length is the DTensor's global one; DTensor's rules redistribute a
    # replicated weight to the shards of x's columns (a local slice, no communication).
    return _ShardedRows.apply(x, weight, eps, offset, cast, int(x.shape[-1]), _reduce_partial)


def _route(x, weight, eps, offset, cast, group, full_cols):
    """rmsnorm.rms_norm's way out for a process group or a DTensor sharded on its last
    dimension; None when the plain ops serve the call."""
    if group is not None:
        return rms_norm_sharded(x, weight, eps, group=group, offset=offset, cast=cast, full_cols=full_cols)
    if isinstance(x, DTensor) and _sharded_on_last_dim(x):
        return _rms_norm_dtensor(x, weight, eps, offset, cast)
    return None


_ops._distributed_route = _route


# ---------------------------------------------------------------------------------------
# DTensor sharding rules
# ---------------------------------------------------------------------------------------
#
# A rule only says which placements an op may run with: the op then runs on each rank's local
# shards. Each op is described by the role of each argument and result (schema order), and the
# rule follows from the roles:
#
#   role      what it is                      rows sharded on dim d < last    last dim sharded (steps only)
#   "rows"    a (..., N) tensor of rows        Shard(d)                        Shard(last)
#   "row"     one value a row, x.shape[:-1]    Shard(d)                        Replicate (whole-row value)
#   "rowsum"  a per-row partial sum (a result) Shard(d)                        Partial (summed over shards)
#   "cols"    (N,) along the row: the weight   Replicate                       Shard(0)
#   "dcols"   gradient of a "cols" argument    Partial (summed over rows)      Shard(0)
#   "whole"   anything not along rows (a       Replicate                       Replicate
#             per-tensor scale, say)
#   None      not a tensor
#
# Every op also runs fully replicated. An op whose entry has last_dim=False has no rule for a
# last-dimension shard: DTensor gathers its rows first (the rows need the whole row's sum).
# Adding an op is one entry: e.g. a fused residual add ``rms_norm_add(x, residual, weight,
# eps, offset, cast) -> (y, residual_out, rstd)`` is
#   "rms_norm_add": _Roles(("rows", "rows", "cols", None, None, None), ("rows", "rows", "row"))


class _Roles:
    def __init__(self, args: tuple, results: tuple, last_dim: bool = False):
        self.args, self.results, self.last_dim = args, results, last_dim


sharding_roles: dict[str, _Roles] = {
    "rms_norm": _Roles(("rows", "cols", None, None, None), ("rows",)),
    "rms_norm_fwd": _Roles(("rows", "cols", None, None, None), ("rows", "row")),
    "rms_norm_bwd": _Roles(("rows", "rows", "cols", "row", None, None, None), ("rows", "dcols")),
    "rms_norm_": _Roles(("rows", "cols", None, None, None), ()),
    "partial_sum_squares": _Roles(("rows",), ("rowsum",), last_dim=True),
    "rms_norm_from_sums": _Roles(("rows", "cols", "row", None, None, None, None), ("rows", "row"), last_dim=True),
    "partial_grad_dot": _Roles(("rows", "rows", "cols", None), ("rowsum",), last_dim=True),
    "rms_norm_from_sums_bwd": _Roles(
        ("rows", "rows", "cols", "row", "row", None, None, None), ("rows", "dcols"), last_dim=True
    ),
}


def _placement(role: str, rows_dim: int | None, last: int):
    """The placement of a tensor of `role` when x's rows are sharded on `rows_dim` (None:
    replicated; `last`: the last dimension)."""
    if rows_dim is None or role == "whole":
        return Replicate()
    if rows_dim != last:
        sharded = Shard(rows_dim)
        return {"rows": sharded, "row": sharded, "rowsum": sharded, "cols": Replicate(), "dcols": Partial()}[role]
    return {"rows": Shard(last), "row": Replicate(), "rowsum": Partial(), "cols": Shard(0), "dcols": Shard(0)}[role]


def _rule_for(roles: _Roles):
    def rule(*args, **kwargs):
        ndim = next(a.ndim for a, r in zip(args, roles.args) if r == "rows")
        last = ndim - 1
        dims: list[int | None] = [None] + list(range(last))
        if roles.last_dim and ndim >= 1:
            dims.append(last)
        strategies = []
        for d in dims:
            results = [_placement(r, d, last) for r in roles.results]
            # An optional tensor argument that is None has no placement, as a non-tensor.
            inputs = [None if (r is None or a is None) else _placement(r, d, last) for a, r in zip(args, roles.args)]
            strategies.append((results, inputs))
        return strategies

    return rule


def _register(name: str, roles: _Roles) -> None:
    op = getattr(_ops_ns, name).default
    register_sharding(op)(_rule_for(roles))


for _name, _roles in sharding_roles.items():
    _register(_name, _roles)
