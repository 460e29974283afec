"""The residual add fused under torch.compile, without touching the model's code.

Hugging Face's decoder layers write ``hidden_states = residual + hidden_states`` and then call
their norm module: a Python expression and a module call that no module swap can merge (see
python/README.md). Under torch.compile both land in one FX graph, where an ``add`` whose
result feeds ``rmsnorm::rms_norm`` (a model after :func:`rmsnorm.patch`) can be replaced by
``rmsnorm::fused_add_rms_norm`` (its ``residual_out`` standing for the add everywhere else the
sum is read). The rewrite keeps the results bit for bit: ``residual_out`` is the add rounded
once to its dtype, as torch's add is, and ``y`` is the norm of it.

    model = rmsnorm.patch(model) and model   # patch returns a count; the model is patched in place
    compiled = torch.compile(model, backend=rmsnorm.fusing_backend())   # then inductor

The gradients go through the fused op's backward (x's and the residual's gradient in one pass,
the norm's plus the one arriving at the sum, added in fp32 and rounded once, where autograd
rounds the norm's gradient first: they may differ from the unfused graph's in the last bit).
"""

from __future__ import annotations

import operator

import torch
from torch import fx

__all__ = ["fuse_residual", "fusing_backend"]

_ADDS = {operator.add, torch.add}
_NORM = torch.ops.rmsnorm.rms_norm.default
_NORM_FWD = torch.ops.rmsnorm.rms_norm_fwd.default
_FUSED = torch.ops.rmsnorm.fused_add_rms_norm.default
_FUSED_FWD = torch.ops.rmsnorm.fused_add_rms_norm_fwd.default


def _value(node):
    """The example value Dynamo (or make_fx) recorded for a node, or None."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta
    return meta.get("example_value", meta.get("val"))


def _residual_add(node) -> tuple[fx.Node, fx.Node] | None:
    """(x, residual) when `node` adds two tensors of its own shape, dtype and device, else None.

    Only such adds are fused: a broadcast, a scaled add (alpha) or a dtype promotion is not
    ``x + residual`` rounded to the residual's dtype, and the fused op's y takes x's dtype.
    """
    if node.op != "call_function" or node.target not in _ADDS or node.kwargs or len(node.args) != 2:
        return None
    residual, x = node.args  # `residual + hidden_states`: either order gives the same sum
    out, rv, xv = _value(node), _value(residual), _value(x)
    if not all(isinstance(v, torch.Tensor) for v in (out, rv, xv)):
        return None
    if any(v.shape != out.shape or v.dtype != out.dtype or v.device != out.device for v in (rv, xv)):
        return None
    return x, residual


def fuse_residual(gm: fx.GraphModule) -> int:
    """Replaces, in place, each ``add`` feeding ``rmsnorm::rms_norm`` (or ``rms_norm_fwd``) in
    ``gm`` by ``rmsnorm::fused_add_rms_norm`` (``_fwd``); returns how many were replaced.

    An add is fused when it adds two tensors of its own shape, dtype and device (no alpha) and
    the norm's other arguments exist where the add is computed. Its other readers read the
    fused op's ``residual_out`` instead. Graphs from torch.compile (Dynamo) carry the example
    values this needs; a graph without them is left as it is.
    """
    graph = gm.graph
    order = {node: i for i, node in enumerate(graph.nodes)}
    fused = 0
    for norm in list(graph.nodes):
        if norm.op != "call_function" or norm.target not in (_NORM, _NORM_FWD) or norm.kwargs:
            continue
        add = norm.args[0]
        if not isinstance(add, fx.Node) or _value(norm) is None:
            continue
        operands = _residual_add(add)
        if operands is None:
            continue
        rest = norm.args[1:]
        if any(isinstance(a, fx.Node) and order[a] > order[add] for a in rest):
            continue  # the weight is computed after the sum: leave this pair alone
        x, residual = operands
        with_grad = norm.target is _NORM_FWD
        with graph.inserting_after(add):
            node = graph.call_function(_FUSED_FWD if with_grad else _FUSED, (x, residual, *rest))
        with graph.inserting_after(node):
            residual_out = graph.call_function(operator.getitem, (node, 1))
        # The new nodes' example values, which later matches (an add reading this sum) need.
        sum_value, norm_value = _value(add), _value(norm)
        residual_out.meta["example_value"] = sum_value
        if with_grad:  # rms_norm_fwd's (y, rstd) become the fused op's items 0 and 2
            node.meta["example_value"] = (norm_value[0], sum_value, norm_value[1])
            for user in list(norm.users):
                if user.op == "call_function" and user.target is operator.getitem:
                    user.args = (node, 0 if user.args[1] == 0 else 2)
        else:
            node.meta["example_value"] = (norm_value, sum_value)
            with graph.inserting_after(residual_out):
                y = graph.call_function(operator.getitem, (node, 0))
            y.meta["example_value"] = norm_value
            norm.replace_all_uses_with(y)
        add.replace_all_uses_with(residual_out)
        if not norm.users:
            graph.erase_node(norm)
        if not add.users:
            graph.erase_node(add)
        order = {n: i for i, n in enumerate(graph.nodes)}
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused


class FusingBackend:
    """A torch.compile backend: :func:`fuse_residual` on each graph Dynamo captures, then the
    backend it wraps. ``fused`` counts the adds fused so far (over every graph compiled)."""

    def __init__(self, backend="inductor"):
        self.backend = backend
        self.fused = 0

    def __call__(self, gm: fx.GraphModule, example_inputs):
        self.fused += fuse_residual(gm)
        inner = self.backend
        if isinstance(inner, str):
            from torch._dynamo import lookup_backend  # the registry torch.compile itself reads

            inner = lookup_backend(inner)
        return inner(gm, example_inputs)


def fusing_backend(backend="inductor") -> FusingBackend:
    """``torch.compile(model, backend=rmsnorm.fusing_backend())``: fuses each residual add into
    the rmsnorm after it (:func:`fuse_residual`), then compiles with ``backend`` (a name
    torch.compile takes, such as ``"inductor"`` or ``"aot_eager"``, or a backend callable)."""
    return FusingBackend(backend)
