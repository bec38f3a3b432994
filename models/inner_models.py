"""Inner models for the generic ``ttt`` mixer beyond the built-in linear and MLP.

Any ``nn.Module`` built as ``Class(head_dim, **inner_kwargs)`` that maps ``(..., head_dim)`` to
``(..., head_dim)`` (parameters only, no buffers) can be a TTT layer's hidden state; name it in a
suite as ``inner: package.module:Class``. These two ship as ready-made choices, e.g.
``inner: models.inner_models:GatedMLP``.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRank(nn.Module):
    """``x U V + b``: a linear map of rank ``rank`` (fewer numbers in the state than TTT-Linear)."""

    def __init__(self, dim: int, rank: int = 4) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


class GatedMLP(nn.Module):
    """``(silu(x W_g) * x W_u) W_d``: the SwiGLU block of Llama as a hidden state."""

    def __init__(self, dim: int, expand: int = 2) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, expand * dim, bias=False)
        self.up = nn.Linear(dim, expand * dim, bias=False)
        self.down = nn.Linear(expand * dim, dim, bias=False)
        for lin in (self.gate, self.up, self.down):
            nn.init.normal_(lin.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))
