"""The depthwise causal convolution as ``width`` shifted multiply-adds, in time-major layout.

``y_t = bias + sum_k w_k x_{t - (width - 1) + k}``: each term is one element-wise
multiply-add of a time-shifted view of ``[window, x]`` with a per-channel weight, so a
``(batch, T, channels)`` tensor is never transposed and the backward is autograd's (the same
shifted sums, and per-channel reductions for the weights). It replaces the transpose, concat
and cuDNN depthwise call of ``nn.Conv1d`` where causal-conv1d is not installed; under
``torch.compile`` the sum fuses into one kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench_kernels.causal_conv.reference import check_conv_args


def causal_conv1d_shift(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``causal_conv1d_reference``: ``(y, window after the last token)``."""
    check_conv_args(x, weight, activation, "causal_conv1d_shift")
    batch, seq_len, channels = x.shape
    width = weight.shape[1]
    history = (
        x.new_zeros(batch, width - 1, channels) if initial_state is None else initial_state.transpose(1, 2).to(x.dtype)
    )
    padded = torch.cat([history, x], dim=1)  # (batch, width - 1 + T, channels)
    w = weight.to(x.dtype)
    y = padded[:, :seq_len] * w[:, 0]
    for k in range(1, width):
        y = y + padded[:, k : k + seq_len] * w[:, k]
    if bias is not None:
        y = y + bias.to(x.dtype)
    window = padded[:, padded.shape[1] - (width - 1) :].transpose(1, 2)
    return (F.silu(y) if activation == "silu" else y), window
