"""Primal TTT, one token at a time: the slow, obviously-right reference of ``ttt_dual``.

It follows the paper's update rule for mini-batch TTT literally (§2.4, eq. 6-7): inside a
mini-batch of ``b`` tokens every gradient is taken at the weights ``W_0`` in force when the
mini-batch began, and after token ``i`` (1-based position ``i`` in the mini-batch)

    W_i = W_0 - token_scale[i-1] * sum_{j<=i} lr_j * grad l(W_0; k_j, v_j)

is materialised and applied to the query: ``z_i = f(q_i; W_i)``. At the end of a mini-batch
``W_b`` becomes the next ``W_0``. A sequence ending mid-mini-batch simply stops: the state keeps
``W_0``, the partial sum and the position, and the next token carries on from there (decode).
"""

from __future__ import annotations

import torch

from mixbench_kernels.ttt.inner import (
    TTTState,
    finish_output,
    forward_inputs,
    fresh_state,
    output_grads,
    reconstruction_target,
)


class GradientDescentLearner:
    """TTT's inner learner: mini-batch gradient descent on the reconstruction loss.

    ``step`` sees one token (``q, k, v: (batch, heads, 1, head_dim)``, ``lr: (batch, heads, 1)``),
    learns from ``(k, v)`` and returns the prediction at ``q`` with the updated weights.
    """

    def __init__(
        self,
        token_scale: torch.Tensor,
        ln_weight: torch.Tensor | None = None,
        ln_bias: torch.Tensor | None = None,
        residual: bool = True,
    ) -> None:
        self.token_scale, self.ln_weight, self.ln_bias, self.residual = token_scale, ln_weight, ln_bias, residual

    def step(self, state: TTTState, q, k, v, lr) -> tuple[torch.Tensor, TTTState]:
        target = reconstruction_target(k, v, self.residual)
        xs, zs = forward_inputs(state.params, k)
        gs = output_grads(state.params, zs, target, self.ln_weight, self.ln_bias)
        lr_g = [lr[..., None] * g for g in gs]
        grads = tuple(
            (gw + x.transpose(-1, -2) @ lg, None if gb is None else gb + lg)
            for (gw, gb), x, lg in zip(state.grads, xs, lr_g)
        )
        s = self.token_scale[state.pos]
        weights = tuple(
            (w - s * gw, None if b is None else b - s * gb) for (w, b), (gw, gb) in zip(state.params, grads)
        )
        _, zq = forward_inputs(weights, q)
        y = finish_output(zq[-1], q, self.ln_weight, self.ln_bias, self.residual)
        if state.pos + 1 == len(self.token_scale):  # mini-batch complete: W_b is the next W_0
            return y, fresh_state(weights)
        return y, TTTState(state.params, grads, state.pos + 1)


def scan_tokens(learner, state, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lr: torch.Tensor | None = None):
    """The TTT layer's outer loop over time: for each token, learn from it, then predict.

    ``q, k, v: (batch, heads, seq, dim)``; ``lr: (batch, heads, seq)`` or ``None`` for a learner
    that takes none. Any object with ``step(state, q_t, k_t, v_t, lr_t) -> (y_t, state)`` works.
    """
    outs = []
    # split, not indexing per token: its backward is one concatenation, not a full-size copy per token
    lrs = [None] * q.shape[2] if lr is None else lr.split(1, dim=2)
    for q_t, k_t, v_t, lr_t in zip(q.split(1, dim=2), k.split(1, dim=2), v.split(1, dim=2), lrs):
        y, state = learner.step(state, q_t, k_t, v_t, lr_t)
        outs.append(y)
    return torch.cat(outs, dim=2), state


def ttt_primal(
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
    """TTT over a sequence, primal form. Same signature and function as ``ttt_dual``.

    ``q, k, v: (batch, heads, seq, head_dim)``; ``lr: (batch, heads, seq)`` the per-token inner
    learning rate; ``token_scale: (b,)`` the per-position factor (its length is the mini-batch
    size ``b``); ``ln_weight/ln_bias: (heads, 1, head_dim)`` or ``None`` for no LayerNorm in ``f``;
    ``residual``: ``f(x) = x + ...``. Returns ``f(q_t; W_t)`` for every token and the final state.
    """
    learner = GradientDescentLearner(token_scale, ln_weight, ln_bias, residual)
    return scan_tokens(learner, state, q, k, v, lr)
