"""TTT-Linear in Triton: the dual form of ``kernels.ttt.dual.ttt_dual`` fused into one kernel per pass.

One program per (batch, head) holds ``W`` (``d x d``), ``b`` and the partial gradient sum in
registers, in float32 whatever the input dtype, and walks the mini-batches in order. For each
chunk of tokens (a mini-batch, or the part of one that a state starting or ending mid-mini-batch
covers) it does what ``ttt_dual`` does with separate PyTorch ops (same notation):

    Z = X W + b;  G = d/dZ 1/2 ||LN(Z) - (V - X)||^2          (analytic LayerNorm+L2 gradient)
    Zq = Q W + b - (eta * (Q X^T + 1)) G  [- s * (Q G_acc + g_acc) when the chunk starts mid-mini-batch]
    y = Q + LN(Zq)                                            (output LayerNorm and residual)
    W, b <- W - s_last (G_acc + X^T (lr * G)), ...            (at the end of a mini-batch; else G_acc grows)

The backward kernel walks the chunks in reverse with the same layout, carrying the gradient of
the weights at the start of the next chunk, and recomputes every per-chunk quantity (Z, G, the
score matrix, the output LayerNorm) from the weights at the chunk's start. Those weights are
either **stored** by the forward pass (``checkpoint=False``, the default: ``(d*d + d)`` float32
per head per mini-batch, i.e. ``4 d (d + 1) / b`` bytes per token per head: 1040 B at
d=64, b=16, about 2.7x a bf16 q, k, v) or **recomputed** by running the forward kernel again
inside the backward (``checkpoint=True``: no memory kept between forward and backward beyond
the inputs, one more forward pass of time, about a third of forward+backward).

Shape rules: ``tl.dot`` needs every dim >= 16, so a chunk is a block of ``max(16, b)`` rows
(rounded up to a power of two), the rows past the chunk masked to zero (a zero learning rate
and token scale make them contribute nothing); likewise ``head_dim`` is padded to a power of two
>= 16 with masked columns (powers of two >= 16 waste nothing; 96, at 760m, pads to 128).
The inner model must be the one TTT-Linear uses: one dense layer with a bias, the LayerNorm
and the residual (``ttt_dual`` covers the other knobs).

Decode: the same forward kernel launched on one token is the fused decode step (one launch
updates W/b/the gradient sum and writes the output).

Set ``TRITON_INTERPRET=1`` before triton is first imported in the process to run the kernels
on CPU (tests/kernels/test_ttt_triton.py does it in a subprocess).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ttt.inner import TTTState
from kernels.ttt.triton_common import KernelPair, centre, chunk_bounds, ln_project, load_chunk, row_layer_norm, run_kernel

@triton.jit
def _ttt_linear_fwd(
    Q, K, V, LR, TS, LNW, LNB,  # inputs: (BH, T, D) x3, (BH, T), (MB,), (H, D) x2
    W, B, GW, GB,  # in: the state in, (BH, D, D), (BH, D), (BH, D, D), (BH, D); out: the state out
    Y,  # the output, (BH, T, D)
    WS, BS,  # weights at each chunk's start, (BH, n_chunks, BD, BD) / (BH, n_chunks, BD), if SAVE
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, MB: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr, EPS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    mat, mmask = cols[:, None] * D + cols[None, :], cmask[:, None] & cmask[None, :]
    block = cols[:, None] * BD + cols[None, :]
    w = tl.load(W + pid * D * D + mat, mask=mmask, other=0.0).to(tl.float32)
    b = tl.load(B + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
    gw = tl.zeros((BD, BD), tl.float32)
    gb = tl.zeros((BD,), tl.float32)
    if HAS_ACC:
        gw += tl.load(GW + pid * D * D + mat, mask=mmask, other=0.0).to(tl.float32)
        gb += tl.load(GB + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    for c in range(n_chunks):
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        if SAVE:
            tl.store(WS + (pid * n_chunks + c) * BD * BD + block, w)
            tl.store(BS + (pid * n_chunks + c) * BD + cols, b)
        # The analytic gradient of the reconstruction loss at the chunk's starting weights.
        z_hat, rstd = row_layer_norm(tl.dot(x, w, input_precision=PREC) + b[None, :], cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
        g = ln_project(g_hat, z_hat, rstd, cmask, D)
        # The dual-form output at the queries.
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        mix = eta * (tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0)
        zq = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(mix, g, input_precision=PREC)
        if HAS_ACC:  # gradients of the mini-batch's earlier tokens, carried in the state (zero after it)
            zq -= s[:, None] * (tl.dot(q, gw, input_precision=PREC) + gb[None, :])
        zq_hat, _ = row_layer_norm(zq, cmask, D, EPS)
        y = q + zq_hat * ln_w[None, :] + ln_b[None, :]
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
        # The update: into the running sum, and into W, b when the chunk closes its mini-batch.
        lr_g = lr[:, None] * g
        gw += tl.dot(tl.trans(x), lr_g, input_precision=PREC)
        gb += tl.sum(lr_g, axis=0)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32) * closes
        w -= s_last * gw
        b -= s_last * gb
        gw *= 1.0 - closes
        gb *= 1.0 - closes
    tl.store(W + pid * D * D + mat, w, mask=mmask)
    tl.store(B + pid * D + cols, b, mask=cmask)
    tl.store(GW + pid * D * D + mat, gw, mask=mmask)
    tl.store(GB + pid * D + cols, gb, mask=cmask)


@triton.jit
def _ttt_linear_bwd(
    Q, K, V, LR, TS, LNW, LNB, GW0, GB0, WS, BS,  # forward inputs and the stored chunk-start weights
    DY, DQ, DK, DV, DLR, DTS, DLNW, DLNB,  # gradients of y and of the inputs (DTS, DLN*: per program)
    DW, DB, DGW, DGB,  # in: gradients of the state out; out: of the state in
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, MB: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr, PREC: tl.constexpr, EPS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    mat, mmask = cols[:, None] * D + cols[None, :], cmask[:, None] & cmask[None, :]
    block = cols[:, None] * BD + cols[None, :]
    # Gradients w.r.t. the state after the chunk being processed (start: the final state).
    dw = tl.load(DW + pid * D * D + mat, mask=mmask, other=0.0)
    db = tl.load(DB + pid * D + cols, mask=cmask, other=0.0)
    dgw = tl.load(DGW + pid * D * D + mat, mask=mmask, other=0.0)
    dgb = tl.load(DGB + pid * D + cols, mask=cmask, other=0.0)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    dln_w = tl.zeros((BD,), tl.float32)
    dln_b = tl.zeros((BD,), tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    for back in range(n_chunks):
        c = n_chunks - 1 - back
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(WS + (pid * n_chunks + c) * BD * BD + block)
        b = tl.load(BS + (pid * n_chunks + c) * BD + cols)
        gw = tl.zeros((BD, BD), tl.float32)
        gb = tl.zeros((BD,), tl.float32)
        if HAS_ACC:  # only the first chunk starts with a non-zero running sum
            first = (c == 0).to(tl.float32)
            gw += first * tl.load(GW0 + pid * D * D + mat, mask=mmask, other=0.0).to(tl.float32)
            gb += first * tl.load(GB0 + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
        # Recompute the chunk's forward.
        target = v - x
        z_hat, rstd = row_layer_norm(tl.dot(x, w, input_precision=PREC) + b[None, :], cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - target) * ln_w[None, :]
        zg = tl.sum(g_hat * z_hat, axis=1) / D
        g_in = centre(g_hat, cmask, D) - z_hat * zg[:, None]
        g = rstd[:, None] * g_in
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        scores = tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0
        mix = eta * scores
        zq = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(mix, g, input_precision=PREC)
        if HAS_ACC:
            acc_q = tl.dot(q, gw, input_precision=PREC) + gb[None, :]
            zq -= s[:, None] * acc_q
        zq_hat, rstd_q = row_layer_norm(zq, cmask, D, EPS)
        lr_g = lr[:, None] * g
        gw_total = gw + tl.dot(tl.trans(x), lr_g, input_precision=PREC)
        gb_total = gb + tl.sum(lr_g, axis=0)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32)

        # The update: W' = W - s_last * total when the chunk closes its mini-batch, else the
        # running sum becomes total (total = running sum + X^T (lr G)).
        d_total_w = closes * (-s_last * dw) + (1.0 - closes) * dgw
        d_total_b = closes * (-s_last * db) + (1.0 - closes) * dgb
        ds_last = -closes * (tl.sum(tl.sum(dw * gw_total, axis=1), axis=0) + tl.sum(db * gb_total, axis=0))
        dgw = d_total_w
        dgb = d_total_b
        # The output: y = q + LN(zq) * ln_w + ln_b.
        dln_w += tl.sum(dy * zq_hat, axis=0)
        dln_b += tl.sum(dy, axis=0)
        dzq = ln_project(dy * ln_w[None, :], zq_hat, rstd_q, cmask, D)
        dq = dy + tl.dot(dzq, tl.trans(w), input_precision=PREC)
        dw += tl.dot(tl.trans(q), dzq, input_precision=PREC)
        db += tl.sum(dzq, axis=0)
        dmix = -tl.dot(dzq, tl.trans(g), input_precision=PREC)
        dg = -tl.dot(tl.trans(mix), dzq, input_precision=PREC)
        ds = tl.where(rows == n - 1, ds_last, 0.0)
        if HAS_ACC:
            s_dzq = s[:, None] * dzq
            dq -= tl.dot(s_dzq, tl.trans(gw), input_precision=PREC)
            dgw = dgw - tl.dot(tl.trans(q), s_dzq, input_precision=PREC)
            dgb = dgb - tl.sum(s_dzq, axis=0)
            ds -= tl.sum(dzq * acc_q, axis=1)
        # The running sum's new term: X^T (lr * G) and sum(lr * G).
        dlr_g = tl.dot(x, d_total_w, input_precision=PREC) + d_total_b[None, :]
        dx = tl.dot(lr_g, tl.trans(d_total_w), input_precision=PREC)
        dg += lr[:, None] * dlr_g
        dlr = tl.sum(dlr_g * g, axis=1)
        # mix = eta * (Q X^T + 1) with eta[i, j] = s_i lr_j (j <= i).
        deta = tl.where(rows[None, :] <= rows[:, None], dmix * scores, 0.0)
        dscores = dmix * eta
        dq += tl.dot(dscores, x, input_precision=PREC)
        dx += tl.dot(tl.trans(dscores), q, input_precision=PREC)
        ds += tl.sum(deta * lr[None, :], axis=1)
        dlr += tl.sum(deta * s[:, None], axis=0)
        # G = rstd * g_in, g_in = g_hat - mean(g_hat) - z_hat mean(g_hat z_hat),
        # g_hat = (z_hat ln_w + ln_b - target) ln_w, z_hat and rstd the LayerNorm of Z = X W + b.
        dg_hat = ln_project(dg, z_hat, rstd, cmask, D)
        dz_hat = -rstd[:, None] * (dg * zg[:, None] + g_hat * (tl.sum(dg * z_hat, axis=1) / D)[:, None])
        drstd = tl.sum(dg * g_in, axis=1)
        dz_hat += dg_hat * ln_w[None, :] * ln_w[None, :]
        dtarget = -dg_hat * ln_w[None, :]
        dln_w += tl.sum(dg_hat * (2.0 * z_hat * ln_w[None, :] + ln_b[None, :] - target), axis=0)
        dln_b += tl.sum(dg_hat * ln_w[None, :], axis=0)
        dz = ln_project(dz_hat, z_hat, rstd, cmask, D) - (rstd * rstd * drstd / D)[:, None] * z_hat
        dx += tl.dot(dz, tl.trans(w), input_precision=PREC) - dtarget
        dw += tl.dot(tl.trans(x), dz, input_precision=PREC)
        db += tl.sum(dz, axis=0)

        tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
        tl.store(DK + offs, dx.to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + offs, dtarget.to(DV.dtype.element_ty), mask=mask)
        tl.store(DLR + tok_base + t0 + rows, dlr, mask=valid)
        tl.store(DTS + tok_base + t0 + rows, ds, mask=valid)
    tl.store(DW + pid * D * D + mat, dw, mask=mmask)
    tl.store(DB + pid * D + cols, db, mask=cmask)
    tl.store(DGW + pid * D * D + mat, dgw, mask=mmask)
    tl.store(DGB + pid * D + cols, dgb, mask=cmask)
    tl.store(DLNW + pid * D + cols, dln_w, mask=cmask)
    tl.store(DLNB + pid * D + cols, dln_b, mask=cmask)


LINEAR = KernelPair(
    1, _ttt_linear_fwd, _ttt_linear_bwd, constexprs=lambda widths: {}, num_warps=lambda w: 4 if w[0] <= 64 else 8
)


def ttt_linear_triton(
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
    checkpoint: bool = False,
) -> tuple[torch.Tensor, TTTState]:
    """TTT-Linear over a sequence in Triton: the same function and signature as ``ttt_dual``.

    The carried state comes back in float32 whatever the input dtype; ``checkpoint=True``
    recomputes the per-mini-batch weights in the backward instead of storing them.
    """
    return run_kernel(
        LINEAR, q, k, v, lr, state,
        token_scale=token_scale, ln_weight=ln_weight, ln_bias=ln_bias, residual=residual, checkpoint=checkpoint,
    )  # fmt: skip
