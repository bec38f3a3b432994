"""The delta rule one token at a time: correct the state's prediction of ``v_t`` from ``k_t``, then read."""

from __future__ import annotations

import torch


def delta_rule_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, _, d_k = q.shape
    state = q.new_zeros(batch, heads, d_k, v.shape[-1]) if initial_state is None else initial_state
    outs = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2)):
        error = v_t - (k_t.unsqueeze(-2) @ state).squeeze(-2)
        state = state + b_t[..., None, None] * k_t.unsqueeze(-1) * error.unsqueeze(-2)
        outs.append(scale * (q_t.unsqueeze(-2) @ state).squeeze(-2))
    return torch.stack(outs, 2), state
