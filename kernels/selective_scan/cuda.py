"""Thin guarded wrappers around mamba-ssm's and causal-conv1d's fused kernels (the ``mamba-ssm`` backend).

``selective_scan_cuda`` and ``causal_conv1d_cuda`` run a whole sequence (prefill, training);
``selective_state_update_cuda`` and ``causal_conv1d_update_cuda`` run one decode token and
update their state in place (the states are buffers, so a CUDA graph can replay the step).

Nothing is imported at module import time: ``mamba_ssm`` is a GPU extra and fails to import
without its compiled CUDA extension, so the import happens on first call, on a CUDA device.
"""

from __future__ import annotations

import torch


def selective_scan_cuda(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``; same contract as the reference.

    The CUDA kernel always starts from a zero state and does not back-propagate into the
    returned last state: continue from a non-zero state with the torch backend instead.
    """
    if initial_state is not None:
        raise ValueError("selective_scan_cuda: mamba-ssm's kernel starts from a zero state; use selective_scan_chunked")
    if u.device.type != "cuda":
        raise RuntimeError(f"selective_scan_cuda: mamba-ssm's kernel needs CUDA tensors, got {u.device.type}")
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def causal_conv1d_cuda(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None = "silu"
) -> torch.Tensor:
    """``causal_conv1d.causal_conv1d_fn`` on ``x: (batch, channels, T)``, ``weight: (channels, width)``.

    The weights are cast to the activations' dtype (under autocast the parameters stay float32).
    """
    from causal_conv1d import causal_conv1d_fn

    bias = None if bias is None else bias.to(x.dtype)
    return causal_conv1d_fn(x, weight.to(x.dtype), bias, activation=activation)


def causal_conv1d_update_cuda(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = "silu",
) -> torch.Tensor:
    """``causal_conv1d.causal_conv1d_update``: one token ``x: (batch, channels)``; shifts ``x`` into
    ``conv_state: (batch, channels, width - 1)`` in place and returns the conv output."""
    from causal_conv1d import causal_conv1d_update

    bias = None if bias is None else bias.to(x.dtype)
    return causal_conv1d_update(x, conv_state, weight.to(x.dtype), bias, activation=activation)


def selective_state_update_cuda(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """``mamba_ssm.ops.triton.selective_state_update.selective_state_update`` (Triton): one token of
    the recurrence, ``state`` updated in place; shapes as there (Mamba: ``state (batch, d, n)``,
    Mamba-2: ``state (batch, heads, headdim, n)``)."""
    if x.device.type != "cuda":
        raise RuntimeError(
            f"selective_state_update_cuda: mamba-ssm's Triton kernel needs CUDA tensors, got {x.device.type}"
        )
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    return selective_state_update(state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
