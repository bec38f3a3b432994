"""TTT-MLP in Triton: ``kernels.ttt.dual.ttt_dual`` with a two-layer inner model, forward and backward.

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

The whole ``W1, W2`` live in registers: right for the interpreter and small heads; at d=64
(``F = 256``) that is 2 x 16K float32 per program (4 x with the backward's gradients), which
spills. Tiling ``F`` through shared memory is the GPU tuning left to do; the function does not
change.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ttt.inner import TTTState
from kernels.ttt.triton_common import (
    SQRT_2_OVER_PI,
    KernelPair,
    centre,
    chunk_bounds,
    gelu_tanh,
    ln_project,
    load_chunk,
    padded,
    row_layer_norm,
    run_kernel,
)


@triton.jit
def _weights(W1, B1, W2, B2, pid, m1, m1mask, m2, m2mask, cols, cmask, hcols, hmask, D: tl.constexpr, F: tl.constexpr):
    """One program's ``W1 (D, F), b1 (F), W2 (F, D), b2 (D)`` from a flat state, float32, zero-padded."""
    w1 = tl.load(W1 + pid * D * F + m1, mask=m1mask, other=0.0).to(tl.float32)
    b1 = tl.load(B1 + pid * F + hcols, mask=hmask, other=0.0).to(tl.float32)
    w2 = tl.load(W2 + pid * F * D + m2, mask=m2mask, other=0.0).to(tl.float32)
    b2 = tl.load(B2 + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
    return w1, b1, w2, b2


@triton.jit
def _store_weights(
    W1, B1, W2, B2, w1, b1, w2, b2, pid, m1, m1mask, m2, m2mask, cols, cmask, hcols, hmask, D: tl.constexpr, F: tl.constexpr
):
    tl.store(W1 + pid * D * F + m1, w1, mask=m1mask)
    tl.store(B1 + pid * F + hcols, b1, mask=hmask)
    tl.store(W2 + pid * F * D + m2, w2, mask=m2mask)
    tl.store(B2 + pid * D + cols, b2, mask=cmask)


@triton.jit
def _ttt_mlp_fwd(
    Q, K, V, LR, TS, LNW, LNB,
    W10, B10, W20, B20, GW10, GB10, GW20, GB20,  # the state in
    Y, W11, B11, W21, B21, GW11, GB11, GW21, GB21,  # the output and the state out
    W1S, B1S, W2S, B2S,  # weights at each chunk's start (padded blocks), if SAVE
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, MB: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_ACC: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
    EPS: tl.constexpr, C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols, hcols = tl.arange(0, BD), tl.arange(0, BF)
    cmask, hmask = cols < D, hcols < F
    m1, m1mask = cols[:, None] * F + hcols[None, :], cmask[:, None] & hmask[None, :]
    m2, m2mask = hcols[:, None] * D + cols[None, :], hmask[:, None] & cmask[None, :]
    blk1, blk2 = cols[:, None] * BF + hcols[None, :], hcols[:, None] * BD + cols[None, :]
    idx = (pid, m1, m1mask, m2, m2mask, cols, cmask, hcols, hmask, D, F)
    w1, b1, w2, b2 = _weights(W10, B10, W20, B20, *idx)
    gw1, gb1 = tl.zeros((BD, BF), tl.float32), tl.zeros((BF,), tl.float32)
    gw2, gb2 = tl.zeros((BF, BD), tl.float32), tl.zeros((BD,), tl.float32)
    if HAS_ACC:
        a1, c1, a2, c2 = _weights(GW10, GB10, GW20, GB20, *idx)
        gw1, gb1, gw2, gb2 = gw1 + a1, gb1 + c1, gw2 + a2, gb2 + c2
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    for c in range(n_chunks):
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        if SAVE:
            at = pid * n_chunks + c
            tl.store(W1S + at * BD * BF + blk1, w1)
            tl.store(B1S + at * BF + hcols, b1)
            tl.store(W2S + at * BF * BD + blk2, w2)
            tl.store(B2S + at * BD + cols, b2)
        # The inner model on the keys and its analytic gradient at the chunk's starting weights.
        z1 = tl.dot(x, w1, input_precision=PREC) + b1[None, :]
        x2, gelu1, _ = gelu_tanh(z1, C)
        z_hat, rstd = row_layer_norm(tl.dot(x2, w2, input_precision=PREC) + b2[None, :], cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
        g2 = ln_project(g_hat, z_hat, rstd, cmask, D)
        g1 = tl.dot(g2, tl.trans(w2), input_precision=PREC) * gelu1
        # The queries through both layers, each with its dual-form correction.
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        mix1 = eta * (tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0)
        zq1 = tl.dot(q, w1, input_precision=PREC) + b1[None, :] - tl.dot(mix1, g1, input_precision=PREC)
        if HAS_ACC:
            zq1 -= s[:, None] * (tl.dot(q, gw1, input_precision=PREC) + gb1[None, :])
        xq2, _, _ = gelu_tanh(zq1, C)
        mix2 = eta * (tl.dot(xq2, tl.trans(x2), input_precision=PREC) + 1.0)
        zq2 = tl.dot(xq2, w2, input_precision=PREC) + b2[None, :] - tl.dot(mix2, g2, input_precision=PREC)
        if HAS_ACC:
            zq2 -= s[:, None] * (tl.dot(xq2, gw2, input_precision=PREC) + gb2[None, :])
        zq_hat, _ = row_layer_norm(zq2, cmask, D, EPS)
        tl.store(Y + offs, (q + zq_hat * ln_w[None, :] + ln_b[None, :]).to(Y.dtype.element_ty), mask=mask)
        # The update.
        lr_g1, lr_g2 = lr[:, None] * g1, lr[:, None] * g2
        gw1 += tl.dot(tl.trans(x), lr_g1, input_precision=PREC)
        gb1 += tl.sum(lr_g1, axis=0)
        gw2 += tl.dot(tl.trans(x2), lr_g2, input_precision=PREC)
        gb2 += tl.sum(lr_g2, axis=0)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32) * closes
        w1, b1, w2, b2 = w1 - s_last * gw1, b1 - s_last * gb1, w2 - s_last * gw2, b2 - s_last * gb2
        keep = 1.0 - closes
        gw1, gb1, gw2, gb2 = gw1 * keep, gb1 * keep, gw2 * keep, gb2 * keep
    _store_weights(W11, B11, W21, B21, w1, b1, w2, b2, *idx)
    _store_weights(GW11, GB11, GW21, GB21, gw1, gb1, gw2, gb2, *idx)


@triton.jit
def _ttt_mlp_bwd(
    Q, K, V, LR, TS, LNW, LNB, GW10, GB10, GW20, GB20, W1S, B1S, W2S, B2S,
    DY, DW11, DB11, DW21, DB21, DGW11, DGB11, DGW21, DGB21,
    DQ, DK, DV, DLR, DTS, DLNW, DLNB, DW10, DB10, DW20, DB20, DGW10, DGB10, DGW20, DGB20,
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, F: tl.constexpr, BF: tl.constexpr, MB: tl.constexpr,
    BLOCK_N: tl.constexpr, HAS_ACC: tl.constexpr, PREC: tl.constexpr, EPS: tl.constexpr, C: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols, hcols = tl.arange(0, BD), tl.arange(0, BF)
    cmask, hmask = cols < D, hcols < F
    m1, m1mask = cols[:, None] * F + hcols[None, :], cmask[:, None] & hmask[None, :]
    m2, m2mask = hcols[:, None] * D + cols[None, :], hmask[:, None] & cmask[None, :]
    blk1, blk2 = cols[:, None] * BF + hcols[None, :], hcols[:, None] * BD + cols[None, :]
    idx = (pid, m1, m1mask, m2, m2mask, cols, cmask, hcols, hmask, D, F)
    # Gradients w.r.t. the state after the chunk being processed (start: the final state).
    dw1, db1, dw2, db2 = _weights(DW11, DB11, DW21, DB21, *idx)
    dgw1, dgb1, dgw2, dgb2 = _weights(DGW11, DGB11, DGW21, DGB21, *idx)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    dln_w, dln_b = tl.zeros((BD,), tl.float32), tl.zeros((BD,), tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    for back in range(n_chunks):
        c = n_chunks - 1 - back
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        at = pid * n_chunks + c
        w1, b1 = tl.load(W1S + at * BD * BF + blk1), tl.load(B1S + at * BF + hcols)
        w2, b2 = tl.load(W2S + at * BF * BD + blk2), tl.load(B2S + at * BD + cols)
        gw1, gb1 = tl.zeros((BD, BF), tl.float32), tl.zeros((BF,), tl.float32)
        gw2, gb2 = tl.zeros((BF, BD), tl.float32), tl.zeros((BD,), tl.float32)
        if HAS_ACC:  # only the first chunk starts with non-zero running sums
            first = (c == 0).to(tl.float32)
            a1, e1, a2, e2 = _weights(GW10, GB10, GW20, GB20, *idx)
            gw1, gb1, gw2, gb2 = first * a1, first * e1, first * a2, first * e2

        # Recompute the chunk's forward.
        target = v - x
        z1 = tl.dot(x, w1, input_precision=PREC) + b1[None, :]
        x2, gelu1, gelu1_2 = gelu_tanh(z1, C)
        z_hat, rstd = row_layer_norm(tl.dot(x2, w2, input_precision=PREC) + b2[None, :], cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - target) * ln_w[None, :]
        zg = tl.sum(g_hat * z_hat, axis=1) / D
        g_in = centre(g_hat, cmask, D) - z_hat * zg[:, None]
        g2 = rstd[:, None] * g_in
        h1 = tl.dot(g2, tl.trans(w2), input_precision=PREC)
        g1 = h1 * gelu1
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        scores1 = tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0
        mix1 = eta * scores1
        zq1 = tl.dot(q, w1, input_precision=PREC) + b1[None, :] - tl.dot(mix1, g1, input_precision=PREC)
        if HAS_ACC:
            acc_q1 = tl.dot(q, gw1, input_precision=PREC) + gb1[None, :]
            zq1 -= s[:, None] * acc_q1
        xq2, gelu_q1, _ = gelu_tanh(zq1, C)
        scores2 = tl.dot(xq2, tl.trans(x2), input_precision=PREC) + 1.0
        mix2 = eta * scores2
        zq2 = tl.dot(xq2, w2, input_precision=PREC) + b2[None, :] - tl.dot(mix2, g2, input_precision=PREC)
        if HAS_ACC:
            acc_q2 = tl.dot(xq2, gw2, input_precision=PREC) + gb2[None, :]
            zq2 -= s[:, None] * acc_q2
        zq_hat, rstd_q = row_layer_norm(zq2, cmask, D, EPS)
        lr_g1, lr_g2 = lr[:, None] * g1, lr[:, None] * g2
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32)

        # The update: W' = W - s_last * total when the chunk closes its mini-batch, else the running
        # sum becomes total (total = running sum + this chunk's lr-weighted gradient).
        dt1 = closes * (-s_last * dw1) + (1.0 - closes) * dgw1
        dtb1 = closes * (-s_last * db1) + (1.0 - closes) * dgb1
        dt2 = closes * (-s_last * dw2) + (1.0 - closes) * dgw2
        dtb2 = closes * (-s_last * db2) + (1.0 - closes) * dgb2
        total1 = gw1 + tl.dot(tl.trans(x), lr_g1, input_precision=PREC)
        total2 = gw2 + tl.dot(tl.trans(x2), lr_g2, input_precision=PREC)
        ds_last = tl.sum(tl.sum(dw1 * total1, axis=1), axis=0) + tl.sum(tl.sum(dw2 * total2, axis=1), axis=0)
        ds_last += tl.sum(db1 * (gb1 + tl.sum(lr_g1, axis=0)), axis=0) + tl.sum(db2 * (gb2 + tl.sum(lr_g2, axis=0)), axis=0)
        ds = tl.where(rows == n - 1, -closes * ds_last, 0.0)
        dgw1, dgb1, dgw2, dgb2 = dt1, dtb1, dt2, dtb2
        # The output: y = q + LN(zq2) * ln_w + ln_b.
        dln_w += tl.sum(dy * zq_hat, axis=0)
        dln_b += tl.sum(dy, axis=0)
        dzq2 = ln_project(dy * ln_w[None, :], zq_hat, rstd_q, cmask, D)
        # Second layer at the queries: zq2 = xq2 W2 + b2 - mix2 G2 [- s (xq2 GW2 + gb2)].
        dxq2 = tl.dot(dzq2, tl.trans(w2), input_precision=PREC)
        dw2 += tl.dot(tl.trans(xq2), dzq2, input_precision=PREC)
        db2 += tl.sum(dzq2, axis=0)
        dmix2 = -tl.dot(dzq2, tl.trans(g2), input_precision=PREC)
        dg2 = -tl.dot(tl.trans(mix2), dzq2, input_precision=PREC)
        if HAS_ACC:
            s_dzq2 = s[:, None] * dzq2
            dxq2 -= tl.dot(s_dzq2, tl.trans(gw2), input_precision=PREC)
            dgw2 = dgw2 - tl.dot(tl.trans(xq2), s_dzq2, input_precision=PREC)
            dgb2 = dgb2 - tl.sum(s_dzq2, axis=0)
            ds -= tl.sum(dzq2 * acc_q2, axis=1)
        deta = tl.where(rows[None, :] <= rows[:, None], dmix2 * scores2, 0.0)
        dscores2 = dmix2 * eta
        dxq2 += tl.dot(dscores2, x2, input_precision=PREC)
        dx2 = tl.dot(tl.trans(dscores2), xq2, input_precision=PREC)
        # First layer at the queries: zq1 = q W1 + b1 - mix1 G1 [- s (q GW1 + gb1)], xq2 = gelu(zq1).
        dzq1 = dxq2 * gelu_q1
        dq = dy + tl.dot(dzq1, tl.trans(w1), input_precision=PREC)
        dw1 += tl.dot(tl.trans(q), dzq1, input_precision=PREC)
        db1 += tl.sum(dzq1, axis=0)
        dmix1 = -tl.dot(dzq1, tl.trans(g1), input_precision=PREC)
        dg1 = -tl.dot(tl.trans(mix1), dzq1, input_precision=PREC)
        if HAS_ACC:
            s_dzq1 = s[:, None] * dzq1
            dq -= tl.dot(s_dzq1, tl.trans(gw1), input_precision=PREC)
            dgw1 = dgw1 - tl.dot(tl.trans(q), s_dzq1, input_precision=PREC)
            dgb1 = dgb1 - tl.sum(s_dzq1, axis=0)
            ds -= tl.sum(dzq1 * acc_q1, axis=1)
        deta += tl.where(rows[None, :] <= rows[:, None], dmix1 * scores1, 0.0)
        dscores1 = dmix1 * eta
        dq += tl.dot(dscores1, x, input_precision=PREC)
        dx = tl.dot(tl.trans(dscores1), q, input_precision=PREC)
        ds += tl.sum(deta * lr[None, :], axis=1)
        dlr = tl.sum(deta * s[:, None], axis=0)
        # This chunk's terms of the totals: X^T (lr G1), X2^T (lr G2) and the bias sums.
        dlr_g1 = tl.dot(x, dt1, input_precision=PREC) + dtb1[None, :]
        dlr_g2 = tl.dot(x2, dt2, input_precision=PREC) + dtb2[None, :]
        dx += tl.dot(lr_g1, tl.trans(dt1), input_precision=PREC)
        dx2 += tl.dot(lr_g2, tl.trans(dt2), input_precision=PREC)
        dg1 += lr[:, None] * dlr_g1
        dg2 += lr[:, None] * dlr_g2
        dlr += tl.sum(dlr_g1 * g1, axis=1) + tl.sum(dlr_g2 * g2, axis=1)
        # G1 = (G2 W2^T) * gelu'(Z1).
        dh1 = dg1 * gelu1
        dz1 = dg1 * h1 * gelu1_2
        dg2 += tl.dot(dh1, w2, input_precision=PREC)
        dw2 += tl.dot(tl.trans(dh1), g2, input_precision=PREC)
        # G2 = rstd * g_in, the LayerNorm+L2 gradient of Z2 = X2 W2 + b2 (as in TTT-Linear).
        dg_hat = ln_project(dg2, z_hat, rstd, cmask, D)
        dz_hat = -rstd[:, None] * (dg2 * zg[:, None] + g_hat * (tl.sum(dg2 * z_hat, axis=1) / D)[:, None])
        drstd = tl.sum(dg2 * g_in, axis=1)
        dz_hat += dg_hat * ln_w[None, :] * ln_w[None, :]
        dtarget = -dg_hat * ln_w[None, :]
        dln_w += tl.sum(dg_hat * (2.0 * z_hat * ln_w[None, :] + ln_b[None, :] - target), axis=0)
        dln_b += tl.sum(dg_hat * ln_w[None, :], axis=0)
        dz2 = ln_project(dz_hat, z_hat, rstd, cmask, D) - (rstd * rstd * drstd / D)[:, None] * z_hat
        dx2 += tl.dot(dz2, tl.trans(w2), input_precision=PREC)
        dw2 += tl.dot(tl.trans(x2), dz2, input_precision=PREC)
        db2 += tl.sum(dz2, axis=0)
        # X2 = gelu(Z1), Z1 = X W1 + b1.
        dz1 += dx2 * gelu1
        dx += tl.dot(dz1, tl.trans(w1), input_precision=PREC) - dtarget
        dw1 += tl.dot(tl.trans(x), dz1, input_precision=PREC)
        db1 += tl.sum(dz1, axis=0)

        tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
        tl.store(DK + offs, dx.to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + offs, dtarget.to(DV.dtype.element_ty), mask=mask)
        tl.store(DLR + tok_base + t0 + rows, dlr, mask=valid)
        tl.store(DTS + tok_base + t0 + rows, ds, mask=valid)
    _store_weights(DW10, DB10, DW20, DB20, dw1, db1, dw2, db2, *idx)
    _store_weights(DGW10, DGB10, DGW20, DGB20, dgw1, dgb1, dgw2, dgb2, *idx)
    tl.store(DLNW + pid * D + cols, dln_w, mask=cmask)
    tl.store(DLNB + pid * D + cols, dln_b, mask=cmask)


MLP = KernelPair(
    2,
    _ttt_mlp_fwd,
    _ttt_mlp_bwd,
    constexprs=lambda widths: dict(F=widths[1], BF=padded(widths[1]), C=SQRT_2_OVER_PI),
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
        MLP, q, k, v, lr, state,
        token_scale=token_scale, ln_weight=ln_weight, ln_bias=ln_bias, residual=residual, checkpoint=checkpoint,
    )  # fmt: skip
