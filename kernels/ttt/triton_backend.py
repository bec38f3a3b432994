"""The ``triton`` form of the TTT op: where it can run, and which kernel serves an inner model.

Kept apart from the kernels so that ``import kernels.ttt`` never imports triton: the kernel
modules are imported on first use.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from kernels.ttt.inner import TTTState


def triton_unavailable_reason(device: torch.device | None) -> str | None:
    """``None`` where the Triton kernels can run: a CUDA device, or CPU under ``TRITON_INTERPRET=1``.

    The interpreter is for tests (it is slow); it must be set before triton is first imported.
    """
    if importlib.util.find_spec("triton") is None:
        return "package 'triton' is not installed"
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"needs a CUDA device, got {device.type} (TRITON_INTERPRET=1 runs the kernels on CPU, slowly)"


def check_supported(
    q: torch.Tensor, state: TTTState, ln_weight: torch.Tensor | None, residual: bool, n_layers: int
) -> None:
    """The kernels compute the inner models ``models/ttt.py`` builds, where they can run; else one line."""
    reason = triton_unavailable_reason(q.device)
    if reason is not None:
        raise RuntimeError(f"ttt_triton: cannot run on these tensors: {reason}")
    if len(state.params) != n_layers or any(b is None for _, b in state.params) or ln_weight is None or not residual:
        raise ValueError(
            f"ttt_triton: the kernel for {n_layers} inner layer(s) needs biases, the inner LayerNorm and the "
            "residual (as models/ttt.py builds them); use ttt_dual for other inner models"
        )


def ttt_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    state: TTTState,
    *,
    token_scale: torch.Tensor,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    residual: bool = True,
) -> tuple[torch.Tensor, TTTState]:
    """TTT over a sequence with the Triton kernel of the state's inner model; as ``ttt_dual``."""
    if len(state.params) not in (1, 2):
        raise ValueError(f"ttt_triton: no kernel for an inner model of {len(state.params)} layers (1: Linear, 2: MLP)")
    check_supported(q, state, ln_weight, residual, n_layers=len(state.params))
    if len(state.params) == 1:
        from kernels.ttt.triton_linear import ttt_linear_triton as kernel
    else:
        from kernels.ttt.triton_mlp import ttt_mlp_triton as kernel
    return kernel(q, k, v, lr, state, token_scale=token_scale, ln_weight=ln_weight, ln_bias=ln_bias, residual=residual)
