"""Generic TTT one token and one head at a time: the slow, obviously-right reference of ``ttt_generic``.

For every token, for every ``(batch, head)`` in a Python loop: the gradient of the token's loss at
the mini-batch's starting weights ``W_0``, added (times its ``lr``) to the running sum; the
gradient-descent step ``u = s_pos * sum``; the optimizer's step ``d`` from ``u`` and the moments
at the mini-batch start; the weights ``W_0 - d`` materialised and applied to the query. At the
end of a mini-batch those weights and the optimizer's moments start the next one.
"""

from __future__ import annotations

import torch
from torch.func import grad

from mixbench_kernels.ttt.generic import InnerFn, inner_loss
from mixbench_kernels.ttt.inner import finish_output, reconstruction_target
from mixbench_kernels.ttt.optim import GenericState, InnerOptimizer
from mixbench_kernels.ttt.reference import scan_tokens


def _head(tensors: tuple[torch.Tensor, ...], i: int, h: int) -> tuple[torch.Tensor, ...]:
    return tuple(t[i, h] for t in tensors)


def _stack(nested: list[list[tuple]]) -> tuple[torch.Tensor, ...]:
    """``[batch][heads]`` tuples of per-head tensors -> a tuple of ``(batch, heads, ...)`` tensors."""
    n_params = len(nested[0][0])
    return tuple(torch.stack([torch.stack([cell[p] for cell in row]) for row in nested]) for p in range(n_params))


class OptimizerLearner:
    """``step(state, q, k, v, lr)`` on one token (``(batch, heads, 1, head_dim)``, ``lr: (batch, heads, 1)``)."""

    def __init__(self, inner_fn: InnerFn, optimizer: InnerOptimizer, token_scale, ln_weight, ln_bias, residual):
        self.inner_fn, self.optimizer, self.token_scale = inner_fn, optimizer, token_scale
        self.ln_weight, self.ln_bias, self.residual = ln_weight, ln_bias, residual

    def _ln(self, h: int) -> tuple:
        return (None, None) if self.ln_weight is None else (self.ln_weight[h], self.ln_bias[h])

    def step(self, state: GenericState, q, k, v, lr) -> tuple[torch.Tensor, GenericState]:
        batch, heads = q.shape[:2]
        target = reconstruction_target(k, v, self.residual)
        g = _stack(
            [
                [
                    grad(inner_loss, argnums=1)(
                        self.inner_fn, _head(state.params, i, h), k[i, h], target[i, h], *self._ln(h)
                    )
                    for h in range(heads)
                ]
                for i in range(batch)
            ]
        )
        acc = tuple(a + lr.reshape(*lr.shape[:2], *(1,) * (gi.dim() - 2)) * gi for a, gi in zip(state.grads, g))
        s = self.token_scale[state.pos]
        t = state.steps + 1
        steps = [self.optimizer.step(s * a, tuple(m[i] for m in state.moments), t) for i, a in enumerate(acc)]
        weights = tuple(p - d for p, (d, _) in zip(state.params, steps))
        (z,) = _stack([[(self.inner_fn(_head(weights, i, h), q[i, h]),) for h in range(heads)] for i in range(batch)])
        y = finish_output(z, q, self.ln_weight, self.ln_bias, self.residual)
        if state.pos + 1 == len(self.token_scale):  # mini-batch complete
            moments = tuple(tuple(ms[j] for _, ms in steps) for j in range(self.optimizer.n_moments))
            return y, GenericState(weights, tuple(torch.zeros_like(a) for a in acc), moments, 0, state.steps + 1)
        return y, GenericState(state.params, acc, state.moments, state.pos + 1, state.steps)


def ttt_generic_primal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    state: GenericState,
    *,
    inner_fn: InnerFn,
    optimizer: InnerOptimizer,
    token_scale: torch.Tensor,
    ln_weight: torch.Tensor | None = None,
    ln_bias: torch.Tensor | None = None,
    residual: bool = True,
) -> tuple[torch.Tensor, GenericState]:
    """Same signature and function as ``mixbench_kernels.ttt.generic.ttt_generic``, token by token."""
    learner = OptimizerLearner(inner_fn, optimizer, token_scale, ln_weight, ln_bias, residual)
    return scan_tokens(learner, state, q, k, v, lr)
