"""`rmsnorm.patch(model)`: swap the RMSNorm modules of a (Hugging Face) model for rmsnorm's."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .modules import RMSNorm

__all__ = ["patch"]


def _semantics(module: nn.Module) -> tuple[float | None, list[tuple[str, float]]] | None:
    """(eps, candidate (cast, offset) pairs, preferred first) for an RMSNorm-like module, else None."""
    if isinstance(module, RMSNorm):
        return None
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 1:
        return None
    if isinstance(module, nn.RMSNorm):  # one rounding in fp32; eps None means finfo(dtype).eps
        if len(module.normalized_shape) != 1:
            return None
        return module.eps, [("fp32", 0.0)]
    name = type(module).__name__
    if not name.endswith("RMSNorm"):
        return None
    if hasattr(module, "variance_epsilon"):  # LlamaRMSNorm and its copies (Mistral, Qwen2, Qwen3, ...)
        return float(module.variance_epsilon), [("llama", 0.0), ("fp32", 0.0), ("fp32", 1.0)]
    if hasattr(module, "eps"):
        if name.startswith("Gemma"):  # fp32 math, scaled by (1 + w), one rounding
            return float(module.eps), [("fp32", 1.0), ("fp32", 0.0), ("llama", 0.0)]
        return float(module.eps), [("fp32", 0.0), ("llama", 0.0), ("fp32", 1.0)]
    return None


# How far a replacement may be from the module it replaces on the probe: a few units in the
# last place of the weight's dtype (fp32 vs llama rounding differ by about one), far below
# what a wrong offset or a different formula gives.
_PROBE_RTOL = {torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-12}


@torch.no_grad()
def _matches(original: nn.Module, replacement: RMSNorm) -> bool:
    weight = replacement.weight
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, weight.shape[0], generator=generator).to(device=weight.device, dtype=weight.dtype)
    try:
        want = original(x).float()
        got = replacement(x).float()
    except Exception:  # a module with another forward signature, or inputs it refuses
        return False
    if want.shape != got.shape:
        return False
    rtol = _PROBE_RTOL.get(weight.dtype, 1e-2)
    return bool(torch.allclose(got, want, rtol=rtol, atol=rtol * float(want.abs().max().clamp_min(1e-30))))


def patch(model: nn.Module, *, verify: bool = True) -> int:
    """Replaces every RMSNorm-like module of `model` in place by :class:`rmsnorm.RMSNorm`.

    Recognised: torch.nn.RMSNorm, and modules whose class name ends in ``RMSNorm`` with a
    1-D ``weight`` Parameter and ``variance_epsilon`` (Hugging Face's LlamaRMSNorm and its
    copies: Mistral, Qwen2, Qwen3 including q_norm/k_norm -> cast="llama") or ``eps``
    (GemmaRMSNorm and Gemma2/3 -> offset 1, cast="fp32"). The replacement shares the original
    ``weight`` Parameter (same object: optimisers and tied weights keep working) and its eps.

    With ``verify`` (the default), each candidate is first run side by side with the module it
    would replace on a small random input; when no semantics match (a module that only looks
    like an RMSNorm), the module is left alone with a warning. Models on the meta device are
    patched by name alone.

    Returns the number of modules replaced.
    """
    replaced = 0
    verified: dict[type, tuple[str, float]] = {}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            found = _semantics(child)
            if found is None:
                continue
            eps, candidates = found
            weight = child.weight
            chosen = verified.get(type(child))
            if chosen is None:
                if verify and weight.device.type != "meta":
                    chosen = next(
                        (c for c in candidates if _matches(child, _replacement(weight, eps, *c))),
                        None,
                    )
                    if chosen is None:
                        warnings.warn(
                            f"rmsnorm.patch: left {type(child).__name__} at '{child_name}' alone: its output "
                            "matches none of the supported RMSNorm semantics",
                            stacklevel=2,
                        )
                        continue
                else:
                    chosen = candidates[0]
                verified[type(child)] = chosen
            new = _replacement(weight, eps, *chosen)
            new.train(child.training)
            setattr(parent, child_name, new)
            replaced += 1
    return replaced


def _replacement(weight: nn.Parameter, eps: float | None, cast: str, offset: float) -> RMSNorm:
    module = RMSNorm(weight.shape[0], eps=eps, offset=offset, cast=cast, device="meta", dtype=weight.dtype)
    module.weight = weight  # the same Parameter object
    return module
