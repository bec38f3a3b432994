"""Guarded wrapper around fla's chunked delta-rule Triton kernel (the ``fla`` backend of DeltaNet).

fla is imported on first call: it imports on CPU but its Triton kernels need a CUDA device.
fla's layout is ``(batch, T, heads, d)``; ours is ``(batch, heads, T, d)``.
"""

from __future__ import annotations

import torch


def delta_rule_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fla.ops.delta_rule.chunk_delta_rule``; same contract as the reference."""
    if q.device.type != "cuda":
        raise RuntimeError(f"delta_rule_fla: fla's Triton kernels need CUDA tensors, got {q.device.type}")
    from fla.ops.delta_rule import chunk_delta_rule

    o, state = chunk_delta_rule(
        *(t.transpose(1, 2) for t in (q, k, v)),
        beta.transpose(1, 2),
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
    )
    return o.transpose(1, 2), state
