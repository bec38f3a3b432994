"""TTT-MLP in Triton: ``mixbench_kernels.ttt.dual.ttt_dual`` with a two-layer inner model, forward and backward.

The inner model is ``f(x) = x + LN(gelu(x W1 + b1) W2 + b2)`` (hidden width ``F = 4 d``). One
program per (batch, head) holds ``W1, b1, W2, b2`` (and the running gradient sums) in float32
and walks the chunks; per chunk, in ``ttt_dual``'s notation:

    Z1 = X W1 + b1, X2 = gelu(Z1), Z2 = X2 W2 + b2
    G2 = d/dZ2 of 1/2 ||LN(Z2) - (V - X)||^2,  G1 = (G2 W2^T) * gelu'(Z1)
    Zq1 = Q W1 + b1 - (eta * (Q X^T + 1)) G1,   Xq2 = gelu(Zq1)
    Zq2 = Xq2 W2 + b2 - (eta * (Xq2 X2^T + 1)) G2,   y = Q + LN(Zq2)
    W1 -= s_last X^T (lr G1), W2 -= s_last X2^T (lr G2), b1, b2 alike  (at the end of a mini-batch)

(plus the running-sum terms of a state that starts mid-mini-batch, as in TTT-Linear). The
backward walks the chunks in reverse and recomputes each chunk from its starting weights; it
differentiates through the inner gradient, so it needs ``gelu''`` (``triton_common.gelu_tanh``).

Where the weights at each chunk's start come from: with ``checkpoint=True`` (the default here,
unlike TTT-Linear) the forward kernel runs again inside the backward to store them, because
keeping them from the forward costs ``4 (2 d F + F + d) / b`` bytes per token per head: 8.3 KB
at d=64, b=16 (about 22x a bf16 q, k, v); recomputing costs one more forward pass.

Tiling the hidden width. ``W1, W2`` and their gradients are ``d x F`` each (64 KB float32 at
d=64): too big to hold in a program's registers or shared memory. So the hidden-wide state lives
in global memory (the state-out buffers in the forward, the state-gradient buffers in the
backward; a program's own slice, which stays in L2), and each chunk walks it in blocks of ``HB``
hidden columns (``hidden_tile``: columns of ``W1``, rows of ``W2``); only the ``d``-wide parts
(``b2``, its sum and their gradients) stay in registers. Everything in ``F`` splits per block
except what goes through ``Z2``/``Zq2`` (sums over blocks), hence passes over the blocks:

* forward: (1) ``Z2`` -> ``G2``; (2) per block ``G1``, ``Xq2``, the block's share of ``Zq2`` and
  of ``Xq2 X2^T``, and the block's update, stored back;
* backward: (1) ``Z2``; (2) ``Zq2``; (3) per block, all gradients that do not need ``dZ2``
  (the ``dZ1`` part known so far goes to a ``BLOCK_N x F`` scratch); (4) with ``dZ2`` known, the
  rest of ``dZ1`` and the terms through it.

The per-block quantities (``Z1``, ``X2``, ``G1``, ``Zq1``, ``Xq2``) are recomputed in each pass
(``_hidden_forward``) rather than stored: a few ``BLOCK_N x d x HB`` dots per pass, against
``BLOCK_N x F`` float32 round trips through memory. A barrier separates passes that write and
read the same blocks (different threads of the program touch them).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixbench_kernels.ttt.inner import TTTState
from mixbench_kernels.ttt.triton_common import (
    SQRT_2_OVER_PI,
    KernelPair,
    centre,
    chunk_bounds,
    chunk_mix,
    chunk_mix_block,
    chunk_square,
    gelu_tanh,
    ln_project,
    load_chunk,
    mix_bwd,
    padded,
    query_input_bwd,
    query_output_bwd,
    row_layer_norm,
    run_kernel,
)


@triton.jit
def _hidden_block(W1, B1, W2, hc, hmask, pid, cols, cmask, D: tl.constexpr, F: tl.constexpr):
    """Hidden columns ``hc`` of a flat ``(D, F), (F,), (F, D)`` triple (weights, their sums or gradients)."""
    m1, m2 = cols[:, None] * F + hc[None, :], hc[:, None] * D + cols[None, :]
    w1 = tl.load(W1 + pid * D * F + m1, mask=cmask[:, None] & hmask[None, :], other=0.0).to(tl.float32)
    b1 = tl.load(B1 + pid * F + hc, mask=hmask, other=0.0).to(tl.float32)
    w2 = tl.load(W2 + pid * F * D + m2, mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    return w1, b1, w2


@triton.jit
def _store_hidden_block(W1, B1, W2, w1, b1, w2, hc, hmask, pid, cols, cmask, D: tl.constexpr, F: tl.constexpr):
    tl.store(W1 + pid * D * F + cols[:, None] * F + hc[None, :], w1, mask=cmask[:, None] & hmask[None, :])
    tl.store(B1 + pid * F + hc, b1, mask=hmask)
    tl.store(W2 + pid * F * D + hc[:, None] * D + cols[None, :], w2, mask=hmask[:, None] & cmask[None, :])


@triton.jit
def _saved_block(W1S, B1S, W2S, at, hc, cols, BD: tl.constexpr, BF: tl.constexpr):
    """Hidden columns ``hc`` of the chunk-start weights the forward saved (padded blocks, no mask)."""
    w1 = tl.load(W1S + at * BD * BF + cols[:, None] * BF + hc[None, :])
    b1 = tl.load(B1S + at * BF + hc)
    w2 = tl.load(W2S + at * BF * BD + hc[:, None] * BD + cols[None, :])
    return w1, b1, w2


@triton.jit
def _running_sums(
    GW1,
    GB1,
    GW2,
    first,
    hc,
    hmask,
    pid,
    cols,
    cmask,
    D: tl.constexpr,
    BD: tl.constexpr,
    F: tl.constexpr,
    HB: tl.constexpr,
    HAS_ACC: tl.constexpr,
):
    """Hidden columns ``hc`` of the running sums a chunk starts with: the state's in the first chunk, else 0."""
    gw1, gb1, gw2 = tl.zeros((BD, HB), tl.float32), tl.zeros((HB,), tl.float32), tl.zeros((HB, BD), tl.float32)
    if HAS_ACC:
        a1, c1, a2 = _hidden_block(GW1, GB1, GW2, hc, hmask, pid, cols, cmask, D, F)
        gw1, gb1, gw2 = gw1 + first * a1, gb1 + first * c1, gw2 + first * a2
    return gw1, gb1, gw2


@triton.jit
def _hidden_forward(
    x, q, w1, b1, w2, g2, mix1, s, gw1, gb1, HAS_ACC: tl.constexpr, PREC: tl.constexpr, C: tl.constexpr
):
    """One block of hidden columns of a chunk: the keys' ``X2 = gelu(Z1)`` and ``G1``, the queries' ``Xq2``.

    Returns ``(x2, gelu'(Z1), gelu''(Z1), H1 = G2 W2^T, G1, Q GW1 + gb1, Xq2, gelu'(Zq1))`` on the
    block (the running-sum term is zero without ``HAS_ACC``).
    """
    x2, gelu1, gelu1_2 = gelu_tanh(tl.dot(x, w1, input_precision=PREC) + b1[None, :], C)
    h1 = tl.dot(g2, tl.trans(w2), input_precision=PREC)
    g1 = h1 * gelu1
    zq1 = tl.dot(q, w1, input_precision=PREC) + b1[None, :] - tl.dot(mix1, g1, input_precision=PREC)
    acc_q1 = tl.zeros_like(zq1)
    if HAS_ACC:
        acc_q1 = tl.dot(q, gw1, input_precision=PREC) + gb1[None, :]
        zq1 -= s[:, None] * acc_q1
    xq2, gelu_q1, _ = gelu_tanh(zq1, C)
    return x2, gelu1, gelu1_2, h1, g1, acc_q1, xq2, gelu_q1


@triton.jit
def _ttt_mlp_fwd(
    Q,
    K,
    V,
    LR,
    TS,
    LNW,
    LNB,
    MIX,  # the pre-pass: the first layer's eta * (Q X^T + 1) per chunk, (BH, n_chunks, MB, MB), float32
    W1,
    B1,
    W2,
    B2,
    GW1,
    GB1,
    GW2,
    GB2,  # in: the state in (float32); out: the state out
    Y,
    W1S,
    B1S,
    W2S,
    B2S,  # the output; the weights at each chunk's start (padded blocks), if SAVE
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    F: tl.constexpr,
    BF: tl.constexpr,
    HB: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    SAVE: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
    C: tl.constexpr,
    HAS_PRE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols, hrow = tl.arange(0, BD), tl.arange(0, HB)
    cmask = cols < D
    # The d-wide b2 and its running sum live in registers; the hidden-wide state in W1..GW2.
    b2 = tl.load(B2 + pid * D + cols, mask=cmask, other=0.0)
    gb2 = tl.zeros((BD,), tl.float32)
    if HAS_ACC:
        gb2 += tl.load(GB2 + pid * D + cols, mask=cmask, other=0.0)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    for c in range(n_chunks):
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        at = pid * n_chunks + c
        if SAVE:
            tl.store(B2S + at * BD + cols, b2)
        # Pass 1: Z2 = gelu(X W1 + b1) W2 + b2 at the chunk's starting weights, HB hidden columns at a time.
        z2 = tl.zeros((BLOCK_N, BD), tl.float32) + b2[None, :]
        for h0 in range(0, BF, HB):
            hc = h0 + hrow
            w1, b1, w2 = _hidden_block(W1, B1, W2, hc, hc < F, pid, cols, cmask, D, F)
            if SAVE:
                tl.store(W1S + at * BD * BF + cols[:, None] * BF + hc[None, :], w1)
                tl.store(B1S + at * BF + hc, b1)
                tl.store(W2S + at * BF * BD + hc[:, None] * BD + cols[None, :], w2)
            x2, _, _ = gelu_tanh(tl.dot(x, w1, input_precision=PREC) + b1[None, :], C)
            z2 += tl.dot(x2, w2, input_precision=PREC)
        z_hat, rstd = row_layer_norm(z2, cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
        g2 = ln_project(g_hat, z_hat, rstd, cmask, D)
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        mix1 = chunk_mix_block(MIX, at, p, rows, valid, q, x, s, lr, MB, PREC, HAS_PRE)
        lr_g2 = lr[:, None] * g2
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32) * closes
        tl.debug_barrier()  # pass 1 read the blocks that pass 2 overwrites
        # Pass 2, per hidden block: the queries through layer 1, their part of layer 2, and the update.
        zq2 = tl.zeros((BLOCK_N, BD), tl.float32) + b2[None, :]
        scores2 = tl.zeros((BLOCK_N, BLOCK_N), tl.float32) + 1.0
        acc_q2 = tl.zeros((BLOCK_N, BD), tl.float32) + gb2[None, :]
        for h0 in range(0, BF, HB):
            hc = h0 + hrow
            hmask = hc < F
            w1, b1, w2 = _hidden_block(W1, B1, W2, hc, hmask, pid, cols, cmask, D, F)
            gw1, gb1, gw2 = _running_sums(GW1, GB1, GW2, 1.0, hc, hmask, pid, cols, cmask, D, BD, F, HB, HAS_ACC)
            x2, _, _, _, g1, _, xq2, _ = _hidden_forward(x, q, w1, b1, w2, g2, mix1, s, gw1, gb1, HAS_ACC, PREC, C)
            zq2 += tl.dot(xq2, w2, input_precision=PREC)
            scores2 += tl.dot(xq2, tl.trans(x2), input_precision=PREC)
            if HAS_ACC:
                acc_q2 += tl.dot(xq2, gw2, input_precision=PREC)
            lr_g1 = lr[:, None] * g1
            gw1 += tl.dot(tl.trans(x), lr_g1, input_precision=PREC)
            gb1 += tl.sum(lr_g1, axis=0)
            gw2 += tl.dot(tl.trans(x2), lr_g2, input_precision=PREC)
            w1, b1, w2 = w1 - s_last * gw1, b1 - s_last * gb1, w2 - s_last * gw2
            _store_hidden_block(W1, B1, W2, w1, b1, w2, hc, hmask, pid, cols, cmask, D, F)
            keep = 1.0 - closes
            _store_hidden_block(GW1, GB1, GW2, gw1 * keep, gb1 * keep, gw2 * keep, hc, hmask, pid, cols, cmask, D, F)
        zq2 -= tl.dot(eta * scores2, g2, input_precision=PREC)
        if HAS_ACC:
            zq2 -= s[:, None] * acc_q2
        zq_hat, _ = row_layer_norm(zq2, cmask, D, EPS)
        tl.store(Y + offs, (q + zq_hat * ln_w[None, :] + ln_b[None, :]).to(Y.dtype.element_ty), mask=mask)
        gb2 += tl.sum(lr_g2, axis=0)
        b2 -= s_last * gb2
        gb2 *= 1.0 - closes
        tl.debug_barrier()  # the next chunk reads what pass 2 stored
    tl.store(B2 + pid * D + cols, b2, mask=cmask)
    tl.store(GB2 + pid * D + cols, gb2, mask=cmask)


@triton.jit
def _ttt_mlp_bwd(
    Q,
    K,
    V,
    LR,
    TS,
    LNW,
    LNB,
    MIX,
    GW10,
    GB10,
    GW20,
    GB20,
    W1S,
    B1S,
    W2S,
    B2S,
    DY,
    DQ,
    DK,
    DV,
    DLR,
    DTS,
    DLNW,
    DLNB,
    DMIX,  # the gradient of the pre-pass's MIX (zero on entry; autograd takes it on to q, k, lr, ts)
    DW1,
    DB1,
    DW2,
    DB2,
    DGW1,
    DGB1,
    DGW2,
    DGB2,  # in: gradient of the state out; out: of the state in
    DZ1,  # scratch, (BH, BLOCK_N, BF): the part of dZ1 known before dZ2
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    F: tl.constexpr,
    BF: tl.constexpr,
    HB: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
    C: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols, hrow = tl.arange(0, BD), tl.arange(0, HB)
    cmask = cols < D
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    dln_w, dln_b = tl.zeros((BD,), tl.float32), tl.zeros((BD,), tl.float32)
    # The d-wide gradients live in registers; the hidden-wide ones (W1, b1, W2, their sums) in DW1..DGW2.
    db2 = tl.load(DB2 + pid * D + cols, mask=cmask, other=0.0)
    dgb2 = tl.load(DGB2 + pid * D + cols, mask=cmask, other=0.0)
    base, tok_base = pid * seq * D, pid * seq
    for back in range(n_chunks):
        c = n_chunks - 1 - back
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dz1_at = DZ1 + pid * BLOCK_N * BF + rows[:, None] * BF
        at = pid * n_chunks + c
        b2 = tl.load(B2S + at * BD + cols)
        first = (c == 0).to(tl.float32)  # only the first chunk starts with non-zero running sums
        gb2 = tl.zeros((BD,), tl.float32)
        if HAS_ACC:
            gb2 += first * tl.load(GB20 + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        mix_offs, mix_mask = chunk_square(at, p, rows, valid, MB)
        mix1 = tl.load(MIX + mix_offs, mask=mix_mask, other=0.0)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32)

        # Recompute the chunk's forward, a block of HB hidden columns at a time. Pass 1: Z2.
        z2 = tl.zeros((BLOCK_N, BD), tl.float32) + b2[None, :]
        for h0 in range(0, BF, HB):
            w1, b1, w2 = _saved_block(W1S, B1S, W2S, at, h0 + hrow, cols, BD, BF)
            x2, _, _ = gelu_tanh(tl.dot(x, w1, input_precision=PREC) + b1[None, :], C)
            z2 += tl.dot(x2, w2, input_precision=PREC)
        target = v - x
        z_hat, rstd = row_layer_norm(z2, cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - target) * ln_w[None, :]
        zg = tl.sum(g_hat * z_hat, axis=1) / D
        g_in = centre(g_hat, cmask, D) - z_hat * zg[:, None]
        g2 = rstd[:, None] * g_in
        # Pass 2: Zq2 = Xq2 W2 + b2 - (eta * (Xq2 X2^T + 1)) G2 [- s (Xq2 GW2 + gb2)].
        zq2 = tl.zeros((BLOCK_N, BD), tl.float32) + b2[None, :]
        scores2 = tl.zeros((BLOCK_N, BLOCK_N), tl.float32) + 1.0
        acc_q2 = tl.zeros((BLOCK_N, BD), tl.float32) + gb2[None, :]
        for h0 in range(0, BF, HB):
            hc = h0 + hrow
            hmask = hc < F
            w1, b1, w2 = _saved_block(W1S, B1S, W2S, at, hc, cols, BD, BF)
            gw1, gb1, gw2 = _running_sums(GW10, GB10, GW20, first, hc, hmask, pid, cols, cmask, D, BD, F, HB, HAS_ACC)
            x2, _, _, _, _, _, xq2, _ = _hidden_forward(x, q, w1, b1, w2, g2, mix1, s, gw1, gb1, HAS_ACC, PREC, C)
            zq2 += tl.dot(xq2, w2, input_precision=PREC)
            scores2 += tl.dot(xq2, tl.trans(x2), input_precision=PREC)
            if HAS_ACC:
                acc_q2 += tl.dot(xq2, gw2, input_precision=PREC)
        mix2 = eta * scores2
        zq2 -= tl.dot(mix2, g2, input_precision=PREC)
        if HAS_ACC:
            zq2 -= s[:, None] * acc_q2
        zq_hat, rstd_q = row_layer_norm(zq2, cmask, D, EPS)

        # The output: y = q + LN(zq2) * ln_w + ln_b.
        dln_w += tl.sum(dy * zq_hat, axis=0)
        dln_b += tl.sum(dy, axis=0)
        dzq2 = ln_project(dy * ln_w[None, :], zq_hat, rstd_q, cmask, D)
        # The update: W' = W - s_last * total when the chunk closes its mini-batch, else the running
        # sum becomes total (total = running sum + this chunk's lr-weighted gradient). Here b2's part;
        # the hidden-wide parts below, block by block, from the gradients of the state after the chunk.
        lr_g2 = lr[:, None] * g2
        dtb2 = closes * (-s_last * db2) + (1.0 - closes) * dgb2
        ds_last = tl.sum(db2 * (gb2 + tl.sum(lr_g2, axis=0)), axis=0)
        dgb2 = dtb2
        ds = tl.zeros((BLOCK_N,), tl.float32)
        # Second layer at the queries, its output side (the input side is per hidden block).
        dmix2, dg2, db2, dgb2, ds = query_output_bwd(dzq2, g2, mix2, s, acc_q2, db2, dgb2, ds, HAS_ACC, PREC)
        deta, dscores2 = mix_bwd(dmix2, scores2, eta, rows)
        dq, dx = dy, tl.zeros((BLOCK_N, BD), tl.float32)
        dlr, dmix1 = tl.zeros((BLOCK_N,), tl.float32), tl.zeros((BLOCK_N, BLOCK_N), tl.float32)
        dlr_g2 = tl.zeros((BLOCK_N, BD), tl.float32) + dtb2[None, :]
        # Pass 3: everything of a hidden block that does not need dZ2.
        for h0 in range(0, BF, HB):
            hc = h0 + hrow
            hmask = hc < F
            w1, b1, w2 = _saved_block(W1S, B1S, W2S, at, hc, cols, BD, BF)
            gw1, gb1, gw2 = _running_sums(GW10, GB10, GW20, first, hc, hmask, pid, cols, cmask, D, BD, F, HB, HAS_ACC)
            dw1, db1, dw2 = _hidden_block(DW1, DB1, DW2, hc, hmask, pid, cols, cmask, D, F)
            dgw1, dgb1, dgw2 = _hidden_block(DGW1, DGB1, DGW2, hc, hmask, pid, cols, cmask, D, F)
            x2, gelu1, gelu1_2, h1, g1, acc_q1, xq2, gelu_q1 = _hidden_forward(
                x, q, w1, b1, w2, g2, mix1, s, gw1, gb1, HAS_ACC, PREC, C
            )
            lr_g1 = lr[:, None] * g1
            dt1 = closes * (-s_last * dw1) + (1.0 - closes) * dgw1
            dtb1 = closes * (-s_last * db1) + (1.0 - closes) * dgb1
            dt2 = closes * (-s_last * dw2) + (1.0 - closes) * dgw2
            total1 = gw1 + tl.dot(tl.trans(x), lr_g1, input_precision=PREC)
            total2 = gw2 + tl.dot(tl.trans(x2), lr_g2, input_precision=PREC)
            ds_last += tl.sum(tl.sum(dw1 * total1, axis=1), axis=0) + tl.sum(tl.sum(dw2 * total2, axis=1), axis=0)
            ds_last += tl.sum(db1 * (gb1 + tl.sum(lr_g1, axis=0)), axis=0)
            dgw1, dgb1, dgw2 = dt1, dtb1, dt2
            # Second layer at the queries, input side: these rows of W2.
            dxq2, dw2, dgw2 = query_input_bwd(xq2, dzq2, w2, gw2, s, dw2, dgw2, HAS_ACC, PREC)
            dxq2 += tl.dot(dscores2, x2, input_precision=PREC)
            dx2 = tl.dot(tl.trans(dscores2), xq2, input_precision=PREC)
            # First layer at the queries: these columns of W1.
            dzq1 = dxq2 * gelu_q1
            dq_h, dw1, dgw1 = query_input_bwd(q, dzq1, w1, gw1, s, dw1, dgw1, HAS_ACC, PREC)
            dmix1_h, dg1, db1, dgb1, ds = query_output_bwd(dzq1, g1, mix1, s, acc_q1, db1, dgb1, ds, HAS_ACC, PREC)
            dq += dq_h
            dmix1 += dmix1_h
            # This chunk's terms of the totals: X^T (lr G1), X2^T (lr G2) and the bias sums.
            dlr_g1 = tl.dot(x, dt1, input_precision=PREC) + dtb1[None, :]
            dlr_g2 += tl.dot(x2, dt2, input_precision=PREC)
            dx += tl.dot(lr_g1, tl.trans(dt1), input_precision=PREC)
            dx2 += tl.dot(lr_g2, tl.trans(dt2), input_precision=PREC)
            dg1 += lr[:, None] * dlr_g1
            dlr += tl.sum(dlr_g1 * g1, axis=1)
            # G1 = (G2 W2^T) * gelu'(Z1).
            dh1 = dg1 * gelu1
            dg2 += tl.dot(dh1, w2, input_precision=PREC)
            dw2 += tl.dot(tl.trans(dh1), g2, input_precision=PREC)
            tl.store(dz1_at + hc[None, :], dg1 * h1 * gelu1_2 + dx2 * gelu1)
            _store_hidden_block(DW1, DB1, DW2, dw1, db1, dw2, hc, hmask, pid, cols, cmask, D, F)
            _store_hidden_block(DGW1, DGB1, DGW2, dgw1, dgb1, dgw2, hc, hmask, pid, cols, cmask, D, F)
        ds += tl.where(rows == n - 1, -closes * ds_last, 0.0)
        tl.store(DMIX + mix_offs, dmix1, mask=mix_mask)
        ds += tl.sum(deta * lr[None, :], axis=1)
        dlr += tl.sum(deta * s[:, None], axis=0)
        dg2 += lr[:, None] * dlr_g2
        dlr += tl.sum(dlr_g2 * g2, axis=1)
        # G2 = rstd * g_in, the LayerNorm+L2 gradient of Z2 = X2 W2 + b2 (as in TTT-Linear).
        dg_hat = ln_project(dg2, z_hat, rstd, cmask, D)
        dz_hat = -rstd[:, None] * (dg2 * zg[:, None] + g_hat * (tl.sum(dg2 * z_hat, axis=1) / D)[:, None])
        drstd = tl.sum(dg2 * g_in, axis=1)
        dz_hat += dg_hat * ln_w[None, :] * ln_w[None, :]
        dtarget = -dg_hat * ln_w[None, :]
        dln_w += tl.sum(dg_hat * (2.0 * z_hat * ln_w[None, :] + ln_b[None, :] - target), axis=0)
        dln_b += tl.sum(dg_hat * ln_w[None, :], axis=0)
        dz2 = ln_project(dz_hat, z_hat, rstd, cmask, D) - (rstd * rstd * drstd / D)[:, None] * z_hat
        db2 += tl.sum(dz2, axis=0)
        tl.debug_barrier()  # pass 3's stores are read below by other threads of the program
        # Pass 4: the terms through dZ2 (X2 = gelu(Z1), Z1 = X W1 + b1).
        for h0 in range(0, BF, HB):
            hc = h0 + hrow
            hmask = hc < F
            w1, b1, w2 = _saved_block(W1S, B1S, W2S, at, hc, cols, BD, BF)
            dw1, db1, dw2 = _hidden_block(DW1, DB1, DW2, hc, hmask, pid, cols, cmask, D, F)
            x2, gelu1, _ = gelu_tanh(tl.dot(x, w1, input_precision=PREC) + b1[None, :], C)
            dz1 = tl.load(dz1_at + hc[None, :]) + tl.dot(dz2, tl.trans(w2), input_precision=PREC) * gelu1
            dx += tl.dot(dz1, tl.trans(w1), input_precision=PREC)
            dw1 += tl.dot(tl.trans(x), dz1, input_precision=PREC)
            db1 += tl.sum(dz1, axis=0)
            dw2 += tl.dot(tl.trans(x2), dz2, input_precision=PREC)
            _store_hidden_block(DW1, DB1, DW2, dw1, db1, dw2, hc, hmask, pid, cols, cmask, D, F)
        tl.debug_barrier()  # before the next chunk reads them

        tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
        tl.store(DK + offs, (dx - dtarget).to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + offs, dtarget.to(DV.dtype.element_ty), mask=mask)
        tl.store(DLR + tok_base + t0 + rows, dlr, mask=valid)
        tl.store(DTS + tok_base + t0 + rows, ds, mask=valid)
    tl.store(DB2 + pid * D + cols, db2, mask=cmask)
    tl.store(DGB2 + pid * D + cols, dgb2, mask=cmask)
    tl.store(DLNW + pid * D + cols, dln_w, mask=cmask)
    tl.store(DLNB + pid * D + cols, dln_b, mask=cmask)


def hidden_tile(widths: tuple[int, ...]) -> int:
    """Hidden columns per block: ``d x HB`` tiles of at most 1024 elements (at least 16 columns).

    The block bounds the kernels' shared memory whatever the hidden width. sm_90, d=64, backward:
    68-110 KB with 16 columns, 122-195 KB with 32, 238-364 KB with 64 (docs/design.md).
    """
    return max(16, min(padded(widths[1]), 1024 // padded(widths[0])))


MLP = KernelPair(
    2,
    _ttt_mlp_fwd,
    _ttt_mlp_bwd,
    constexprs=lambda widths: dict(F=widths[1], BF=padded(widths[1]), HB=hidden_tile(widths), C=SQRT_2_OVER_PI),
    scratch=lambda widths, block_n: [(block_n, padded(widths[1]))],
    prepass=chunk_mix,
    n_pre=1,
    num_warps=lambda widths: 4 if widths[1] <= 64 else (8 if widths[1] <= 256 else 16),
)


def ttt_mlp_triton(
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
    checkpoint: bool = True,
) -> tuple[torch.Tensor, TTTState]:
    """TTT-MLP over a sequence in Triton: the same function and signature as ``ttt_dual``.

    The carried state comes back in float32 whatever the input dtype; ``checkpoint=False``
    keeps the per-mini-batch weights from the forward instead of recomputing them.
    """
    return run_kernel(
        MLP,
        q,
        k,
        v,
        lr,
        state,
        token_scale=token_scale,
        ln_weight=ln_weight,
        ln_bias=ln_bias,
        residual=residual,
        checkpoint=checkpoint,
    )
