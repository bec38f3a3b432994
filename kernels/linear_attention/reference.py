"""Causal linear attention one token at a time: ``S += k_t^T v_t``, then ``o_t = scale * q_t S``."""

from __future__ import annotations

import torch


def linear_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, _, d_k = q.shape
    state = q.new_zeros(batch, heads, d_k, v.shape[-1]) if initial_state is None else initial_state
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(2), k.unbind(2), v.unbind(2)):
        state = state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append(scale * (q_t.unsqueeze(-2) @ state).squeeze(-2))
    return torch.stack(outs, 2), state
