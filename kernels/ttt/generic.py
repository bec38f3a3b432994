"""TTT with any inner model and any inner optimizer: gradients by ``torch.func``, a mini-batch at a time.

The inner model is a pure function ``inner_fn(params, x) -> z`` of one head's parameters (a tuple
of tensors without batch dims) and tokens ``x: (n, head_dim)``; the layer wraps it as
``f(x) = x + LN(inner_fn(x))`` (both knobs optional) and trains it on the reconstruction loss
``1/2 ||LN(inner_fn(k)) - (v - k)||^2``, as ``mixbench_kernels.ttt.inner`` does for the built-in dense
stacks. The optimizer rule is ``mixbench_kernels.ttt.optim``.

Per mini-batch, every token's gradient at ``W_0`` is one ``vmap(grad(loss))`` over its tokens; a
weighted cumulative sum gives the gradient-descent step ``u_i`` of every position, the optimizer
turns it into the step ``d_i``, and the queries run through their own weights ``W_0 - d_i`` (a
``vmap`` over tokens of the inner model). All of it is ``vmap``-ed over ``batch x heads``, and
mini-batches are scanned in order. ``mixbench_kernels.ttt.generic_reference`` is the token-at-a-time
reference with the same signature.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, vmap

from mixbench_kernels.ttt.inner import finish_output, forward_inputs, layer_norm, reconstruction_target
from mixbench_kernels.ttt.optim import GenericState, InnerOptimizer

InnerFn = Callable[[tuple[torch.Tensor, ...], torch.Tensor], torch.Tensor]


def dense_stack(has_bias: bool) -> InnerFn:
    """The built-in inner models (TTT-Linear, TTT-MLP) as an ``InnerFn`` over flat ``(W1, b1, W2, b2 ..)``."""

    def fn(params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        layers = tuple(zip(params[::2], params[1::2])) if has_bias else tuple((w, None) for w in params)
        return forward_inputs(layers, x)[1][-1]

    return fn


def inner_loss(inner_fn: InnerFn, params, x, target, ln_weight, ln_bias) -> torch.Tensor:
    """``1/2 ||LN(inner_fn(x)) - target||^2`` for one head; ``ln_weight=None``: no LayerNorm."""
    z = inner_fn(params, x)
    if ln_weight is not None:
        z = layer_norm(z, ln_weight, ln_bias)
    return 0.5 * (z - target).square().sum()


def _chunk_fn(inner_fn: InnerFn, optimizer: InnerOptimizer, s: torch.Tensor, t: int, has_ln: bool):
    """One head's work on one chunk of ``n`` tokens at mini-batch positions with scales ``s: (n,)``."""
    token_grads = vmap(grad(inner_loss, argnums=1), in_dims=(None, None, 0, 0, None, None))
    queries = vmap(inner_fn, in_dims=(0, 0))

    def per_head(params, grads, moments, q, k, target, lr, ln_w, ln_b):
        g = token_grads(inner_fn, params, k[:, None], target[:, None], ln_w, ln_b)  # per token, at W_0
        acc = tuple(g0 + torch.cumsum(lr.reshape(-1, *(1,) * g0.dim()) * gi, 0) for g0, gi in zip(grads, g))
        steps = [
            optimizer.step(s.reshape(-1, *(1,) * (a.dim() - 1)) * a, tuple(m[i] for m in moments), t)
            for i, a in enumerate(acc)
        ]  # per parameter: (d_i for every position, moments at every position)
        weights = tuple(p - d for p, (d, _) in zip(params, steps))  # (n, *shape): W_0 - d_i
        zq = queries(weights, q[:, None])[:, 0]
        last_moments = tuple(tuple(ms[j][-1] for _, ms in steps) for j in range(optimizer.n_moments))
        return zq, tuple(a[-1] for a in acc), last_moments, tuple(w[-1] for w in weights)

    ln_dim = 0 if has_ln else None
    return vmap(per_head, in_dims=(0,) * 7 + (ln_dim, ln_dim))


def ttt_generic(
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
    """TTT over a sequence with any inner model and optimizer, a mini-batch at a time.

    ``q, k, v: (batch, heads, seq, head_dim)``; ``lr: (batch, heads, seq)``; ``token_scale: (b,)``
    (its length is the mini-batch size); ``ln_weight/ln_bias: (heads, 1, head_dim)`` or ``None``.
    Returns ``f(q_t; W_t)`` for every token and the state after the last one, which may end
    mid-mini-batch (decode carries on from it).
    """
    b = len(token_scale)
    batch, heads, seq, dim = q.shape
    bh = batch * heads

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(bh, *t.shape[2:])

    params, grads = tuple(map(flat, state.params)), tuple(map(flat, state.grads))
    moments = tuple(tuple(map(flat, m)) for m in state.moments)
    ln_w = ln_b = None
    if ln_weight is not None:
        ln_w, ln_b = (flat(t.expand(batch, *t.shape)) for t in (ln_weight, ln_bias))
    qf, kf, lrf = flat(q), flat(k), flat(lr)
    target = flat(reconstruction_target(k, v, residual))

    outs, pos, steps, start = [], state.pos, state.steps, 0
    while start < seq:
        n = min(b - pos, seq - start)
        piece = slice(start, start + n)
        run = _chunk_fn(inner_fn, optimizer, token_scale[pos : pos + n], steps + 1, ln_w is not None)
        zq, acc, new_moments, new_params = run(
            params, grads, moments, qf[:, piece], kf[:, piece], target[:, piece], lrf[:, piece], ln_w, ln_b
        )
        outs.append(zq)
        if pos + n == b:  # mini-batch complete: its last weights and moments start the next one
            params, moments, grads = new_params, new_moments, tuple(torch.zeros_like(a) for a in acc)
            pos, steps = 0, steps + 1
        else:
            grads, pos = acc, pos + n
        start += n
    z = torch.cat(outs, dim=1).reshape(batch, heads, seq, -1)

    def unflat(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, heads, *t.shape[1:])

    new_state = GenericState(
        tuple(map(unflat, params)),
        tuple(map(unflat, grads)),
        tuple(tuple(map(unflat, m)) for m in moments),
        pos,
        steps,
    )
    return finish_output(z, q, ln_weight, ln_bias, residual), new_state
