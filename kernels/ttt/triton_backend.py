"""The ``triton`` form of the TTT op: which kernel serves an inner model.

Kept apart from the kernels so that ``import mixbench_kernels.ttt`` never imports triton: the kernel
modules are imported on first use. Where the kernels can run is ``triton_support`` (imported by
the kernels too, so no module imports back into this one).
"""

from __future__ import annotations

import torch

from mixbench_kernels.ttt.inner import TTTState
from mixbench_kernels.ttt.triton_support import check_supported, triton_unavailable_reason

__all__ = ["check_supported", "triton_unavailable_reason", "ttt_triton"]


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
        from mixbench_kernels.ttt.triton_linear import ttt_linear_triton as kernel
    else:
        from mixbench_kernels.ttt.triton_mlp import ttt_mlp_triton as kernel
    return kernel(q, k, v, lr, state, token_scale=token_scale, ln_weight=ln_weight, ln_bias=ln_bias, residual=residual)
