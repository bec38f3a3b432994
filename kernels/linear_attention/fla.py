"""Guarded wrapper around fla's chunked linear-attention Triton kernel (the ``fla`` backend).

fla is imported on first call: it imports on CPU but its Triton kernels need a CUDA device.
fla's layout is ``(batch, T, heads, d)``; ours is ``(batch, heads, T, d)``.
"""

from __future__ import annotations

import torch


def linear_attention_fla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``fla.ops.linear_attn.chunk_linear_attn`` (unnormalised); same contract as the reference."""
    if q.device.type != "cuda":
        raise RuntimeError(f"linear_attention_fla: fla's Triton kernels need CUDA tensors, got {q.device.type}")
    from fla.ops.linear_attn import chunk_linear_attn

    o, state = chunk_linear_attn(
        *(t.transpose(1, 2) for t in (q, k, v)),
        scale=scale,
        initial_state=initial_state,
        output_final_state=True,
        normalize=False,
    )
    return o.transpose(1, 2), state
