"""Small building blocks shared by backbones and mixers: norms, MLP, causal conv, rotary.

Each module here that carries state between tokens follows the mixer contract
(``forward(x, state) -> (y, state)``, ``init_state``, ``step``), so a backbone treats a
conv sub-block and a mixer sub-block the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (Llama's "Transformer++" choice)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 so bf16 activations do not lose the mean square.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    """The gated MLP of Llama: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))

    def flops(self, seq_len: int) -> int:
        return 2 * 3 * seq_len * self.gate.in_features * self.gate.out_features  # three matmuls


class CausalDepthwiseConv(nn.Module):
    """Depthwise causal 1-D convolution over time, with a rolling window for decode.

    Used by the Mamba backbone's pre-conv sub-block, by TTT's Q/K convs and by Mamba itself.
    ``x: (batch, seq, channels)``; the state is the last ``kernel_size - 1`` inputs.
    """

    def __init__(self, channels: int, kernel_size: int = 4, bias: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(channels, channels, kernel_size, groups=channels, bias=bias, padding=0)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        xt = x.transpose(1, 2)  # (batch, channels, seq)
        history = state if state is not None else xt.new_zeros(xt.shape[0], xt.shape[1], self.kernel_size - 1)
        padded = torch.cat([history.to(xt.dtype), xt], dim=-1)
        y = self.conv(padded).transpose(1, 2)
        new_state = padded[..., -(self.kernel_size - 1) :].detach().clone() if state is not None else None
        return y, new_state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros(batch_size, self.conv.in_channels, self.kernel_size - 1, device=device, dtype=dtype)

    def step(self, x_t: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.cat([state, x_t.unsqueeze(-1).to(state.dtype)], dim=-1)  # (batch, channels, kernel)
        y = (window * self.conv.weight.squeeze(1)).sum(-1)
        if self.conv.bias is not None:
            y = y + self.conv.bias
        return y.to(x_t.dtype), window[..., 1:]

    def flops(self, seq_len: int) -> int:
        return 2 * seq_len * self.conv.in_channels * self.kernel_size

    def state_size(self, seq_len: int) -> int:
        return self.conv.in_channels * (self.kernel_size - 1)


def rotary_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings at integer ``positions`` (any shape) -> (..., head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim))
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + head_dim/2) of the last dim (the "rotate half" convention of Llama)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin
