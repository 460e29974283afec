"""`rmsnorm.RMSNorm`: a drop-in for torch.nn.RMSNorm and Hugging Face's LlamaRMSNorm."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._ops import rms_norm

__all__ = ["RMSNorm"]


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension with a learned weight.

    Args:
        hidden_size: the size of the last dimension (an int, or a 1-tuple as
            torch.nn.RMSNorm's ``normalized_shape``).
        eps: added to the mean square; None means ``torch.finfo(x.dtype).eps`` as in
            torch.nn.RMSNorm.
        offset: the output is scaled by ``weight + offset``: 0 (Llama, Mistral, Qwen) or 1
            (Gemma, whose weight is stored as a difference from 1).
        cast: "fp32" (one rounding at the end, torch.nn.RMSNorm's and Gemma's semantics) or
            "llama" (Hugging Face LlamaRMSNorm's roundings, bit-compatible with it).

    The parameter is called ``weight`` (state-dict key ``weight``, as in both models), and it
    is initialised so that ``weight + offset == 1``: ones, or zeros for offset=1.
    """

    def __init__(
        self,
        hidden_size: int | Sequence[int],
        eps: float | None = 1e-6,
        offset: float = 0.0,
        cast: str = "fp32",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(hidden_size, int):
            shape = tuple(hidden_size)
            if len(shape) != 1:
                raise ValueError(f"rmsnorm.RMSNorm normalises the last dimension only; got normalized_shape {shape}")
            hidden_size = shape[0]
        if cast not in ("fp32", "llama"):
            raise ValueError(f'rmsnorm.RMSNorm: cast must be "fp32" or "llama", got "{cast}"')
        self.hidden_size = int(hidden_size)
        self.eps = eps
        self.offset = float(offset)
        self.cast = cast
        self.weight = nn.Parameter(torch.empty(self.hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0 - self.offset)

    # Hugging Face's Llama-style modules call their epsilon `variance_epsilon`.
    @property
    def variance_epsilon(self) -> float | None:
        return self.eps

    @variance_epsilon.setter
    def variance_epsilon(self, value: float | None) -> None:
        self.eps = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = torch.finfo(x.dtype).eps if self.eps is None else self.eps
        return rms_norm(x, self.weight, eps, offset=self.offset, cast=self.cast)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, offset={self.offset}, cast={self.cast!r}"
