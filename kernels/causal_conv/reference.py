"""The plain depthwise causal convolution: ``F.conv1d`` on a left-padded sequence.

Shapes follow the Mamba blocks (time-major): ``x: (batch, T, channels)``, ``weight: (channels, width)``,
``bias: (channels,)``; the decode window is ``(batch, channels, width - 1)``, the last inputs
seen, oldest first (causal-conv1d's ``conv_state`` layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu")


def check_conv_args(x: torch.Tensor, weight: torch.Tensor, activation: str | None, where: str) -> None:
    """One line naming what is wrong with the arguments of a causal conv."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"{where}: activation must be None or 'silu', got {activation!r}")
    if weight.dim() != 2 or x.shape[-1] != weight.shape[0]:
        raise ValueError(
            f"{where}: weight must be (channels, width) with channels = x.shape[-1] = {x.shape[-1]}, "
            f"got {tuple(weight.shape)}"
        )


def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y (batch, T, channels), window after the last token (batch, channels, width - 1))``."""
    check_conv_args(x, weight, activation, "causal_conv1d_reference")
    width = weight.shape[1]
    xt = x.transpose(1, 2)
    history = xt.new_zeros(*xt.shape[:2], width - 1) if initial_state is None else initial_state.to(xt.dtype)
    padded = torch.cat([history, xt], dim=-1)
    y = F.conv1d(
        padded, weight.to(x.dtype).unsqueeze(1), None if bias is None else bias.to(x.dtype), groups=x.shape[-1]
    )
    y = y.transpose(1, 2)
    return (F.silu(y) if activation == "silu" else y), padded[..., padded.shape[-1] - (width - 1) :]


def causal_conv1d_update_reference(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
) -> torch.Tensor:
    """One token ``x: (batch, channels)``: shifts it into ``conv_state`` in place, returns the output."""
    check_conv_args(x, weight, activation, "causal_conv1d_update_reference")
    window = torch.cat([conv_state, x.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
    work = torch.promote_types(x.dtype, torch.float32)  # half precisions sum in float32, as the kernels do
    y = (window.to(work) * weight.to(work)).sum(-1)
    if bias is not None:
        y = y + bias.to(work)
    conv_state.copy_(window[..., 1:])
    return (F.silu(y) if activation == "silu" else y).to(x.dtype)
