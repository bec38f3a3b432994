"""Dual-form TTT: the same function as ``ttt_primal``, one mini-batch at a time.

Within a mini-batch the weights after token ``i`` are never materialised. With
``eta[i, j] = token_scale[i] * lr_j`` for ``j <= i`` (0 above the diagonal), ``x_j`` a layer's
key-side input and ``g_j = dl/dz_j`` its output gradient at ``W_0``, the primal's

    z_i = xq_i (W_0 - sum_j eta[i, j] x_j^T g_j) + b_0 - sum_j eta[i, j] g_j

is computed as ``xq W_0 + b_0 - (eta * (xq x^T + 1)) @ g`` (paper §2.5; the ``+ 1`` is the bias
seen as a weight on a constant input). Only the last row's update, ``W_b``, is formed, to start
the next mini-batch. Mini-batches are scanned in order; a chunk that starts mid-mini-batch (a
state from decode) adds the already-accumulated gradient ``- token_scale[i] * (xq G + g_b)``,
and a chunk that ends mid-mini-batch leaves ``W_0``, the partial sum and the position in the state.

Everything that does not depend on the scanned weights (``eta``, the first layer's
``eta * (q k^T + 1)``, the targets, the output LayerNorm) is computed for all mini-batches at
once outside the scan; inside it, ``(batch, heads)`` are one flat batch dim for ``bmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench_kernels.ttt.inner import (
    TTTState,
    dense,
    finish_output,
    forward_inputs,
    fresh_state,
    output_grads,
    reconstruction_target,
)


def _groups(pos: int, seq: int, b: int) -> list[tuple[int, int, int]]:
    """``(start, n_chunks, chunk_len)`` runs covering ``[0, seq)`` along mini-batch boundaries."""
    runs, start = [], 0
    if pos:  # finish the mini-batch a decode state is in
        n = min(b - pos, seq)
        runs.append((0, 1, n))
        start = n
    if (seq - start) // b:
        runs.append((start, (seq - start) // b, b))
        start += runs[-1][1] * b
    if seq > start:
        runs.append((start, 1, seq - start))
    return runs


def _chunk(params, grads, pos, s, eta, mix0, q, k, target, ln_weight, ln_bias):
    """One chunk of tokens at positions ``pos, pos+1, ..``; all tensors ``(batch*heads, ...)``.

    Returns the dense stack's output at the queries, and every layer's key-side input and
    output gradient at ``W_0`` (what ``_advance`` needs to update the weights).
    """
    xs, zs = forward_inputs(params, k)
    gs = output_grads(params, zs, target, ln_weight, ln_bias)
    # The queries, through weights updated by the gradients of tokens j <= i.
    xq, mix, zq = q, mix0, None  # zq: the previous layer's output at the queries
    for i, (layer, x, g) in enumerate(zip(params, xs, gs)):
        if i:
            xq = F.gelu(zq, approximate="tanh")
            mix = eta * (xq @ x.transpose(-1, -2) + (0.0 if layer[1] is None else 1.0))
        zq = torch.baddbmm(dense(xq, layer), mix, g, alpha=-1.0)
        if pos:  # gradients of this mini-batch's earlier tokens, held in the state
            zq = zq - s[:, None] * dense(xq, grads[i])
    return zq, xs, gs


def _advance(params, grads, pos, n, b, s_last, lr_row, xs, gs):
    """Weights, gradient sum and position after a chunk of ``n`` tokens (``lr_row: (BH, 1, n)``)."""
    if pos == 0 and pos + n == b:  # a whole mini-batch: W_b = W_0 - s_b * sum_j lr_j x_j^T g_j
        coef = s_last * lr_row
        new = tuple(
            (
                torch.baddbmm(w, x.transpose(-1, -2) * coef, g, alpha=-1.0),
                None if bias is None else torch.baddbmm(bias, coef, g, alpha=-1.0),
            )
            for (w, bias), x, g in zip(params, xs, gs)
        )
        return new, None, 0
    acc = tuple(
        (torch.bmm(x.transpose(-1, -2) * lr_row, g), None if bias is None else torch.bmm(lr_row, g))
        for (_, bias), x, g in zip(params, xs, gs)
    )
    if pos:
        acc = tuple((gw + aw, None if gb is None else gb + ab) for (gw, gb), (aw, ab) in zip(grads, acc))
    if pos + n < b:
        return params, acc, pos + n
    new = tuple(
        (w - s_last * aw, None if bias is None else bias - s_last * ab) for (w, bias), (aw, ab) in zip(params, acc)
    )
    return new, None, 0


def ttt_dual(
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
    """TTT over a sequence, dual form; arguments as ``mixbench_kernels.ttt.reference.ttt_primal``."""
    b = len(token_scale)
    batch, heads, seq, dim = q.shape
    bh = batch * heads

    def flat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.reshape(bh, *t.shape[2:])

    has_bias = state.params[0][1] is not None
    params = tuple((flat(w), flat(bias)) for w, bias in state.params)
    grads = tuple((flat(w), flat(bias)) for w, bias in state.grads) if state.pos else None
    pos = state.pos
    ln_w = ln_b = None
    if ln_weight is not None:
        ln_w = ln_weight.expand(batch, *ln_weight.shape).reshape(bh, 1, dim)
        ln_b = ln_bias.expand(batch, *ln_bias.shape).reshape(bh, 1, dim)
    qf, kf, lrf = flat(q), flat(k), flat(lr)
    target = flat(reconstruction_target(k, v, residual))

    outs = []
    for start, n_chunks, n in _groups(pos, seq, b):
        # Per-chunk tensors for the whole run at once: (n_chunks, batch*heads, n, ...).
        def chunks(t: torch.Tensor) -> torch.Tensor:
            return t[:, start : start + n_chunks * n].unflatten(1, (n_chunks, n)).transpose(0, 1)

        cq, ck, ct = chunks(qf), chunks(kf), chunks(target)
        clr = chunks(lrf.unsqueeze(-1)).transpose(-1, -2)  # (n_chunks, bh, 1, n)
        s = token_scale[pos : pos + n]
        eta = torch.tril(s[:, None] * clr)
        mix0 = eta * (cq @ ck.transpose(-1, -2) + (1.0 if has_bias else 0.0))
        s_last = token_scale[pos + n - 1]
        # unbind, not indexing: one backward node per run instead of a zero-filled copy per chunk
        for e, m, cq_, ck_, ct_, lr_ in zip(*(t.unbind(0) for t in (eta, mix0, cq, ck, ct, clr))):
            zq, xs, gs = _chunk(params, grads, pos, s, e, m, cq_, ck_, ct_, ln_w, ln_b)
            params, grads, pos = _advance(params, grads, pos, n, b, s_last, lr_, xs, gs)
            outs.append(zq)
    z = torch.cat(outs, dim=1).reshape(batch, heads, seq, -1)
    y = finish_output(z, q, ln_weight, ln_bias, residual)

    def unflat(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.reshape(batch, heads, *t.shape[1:])

    params = tuple((unflat(w), unflat(bias)) for w, bias in params)
    if grads is None:
        return y, fresh_state(params)
    return y, TTTState(params, tuple((unflat(w), unflat(bias)) for w, bias in grads), pos)
