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

The backward holds no ``d x d`` tile: the gradients of ``W`` and of its running sum live in
their output buffers (updated in place) and each chunk walks ``W`` in blocks of ``RB`` rows
(``row_tile``), in three passes: ``X W`` and ``Q W`` summed over blocks; per block the query
side's input gradients and the running sum's new term; per block the terms through ``dZ``
(known only after the second pass). A block's columns of ``dq``/``dk`` go through a
``BLOCK_N x d`` float32 scratch. This keeps the backward's shared memory at 81-128 KB at d=128
on sm_90 (it was 148-487 KB; docs/design.md).

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
from kernels.ttt.triton_common import (
    KernelPair,
    centre,
    chunk_bounds,
    chunk_mix,
    chunk_mix_block,
    chunk_square,
    ln_project,
    load_chunk,
    padded,
    query_input_bwd,
    query_output_bwd,
    row_layer_norm,
    run_kernel,
)


@triton.jit
def _ttt_linear_fwd(
    Q, K, V, LR, TS, LNW, LNB,  # inputs: (BH, T, D) x3, (BH, T), (MB,), (H, D) x2
    MIX,  # the pre-pass: eta * (Q X^T + 1) per chunk, (BH, n_chunks, MB, MB), float32
    W, B, GW, GB,  # in: the state in, (BH, D, D), (BH, D), (BH, D, D), (BH, D); out: the state out
    Y,  # the output, (BH, T, D)
    WS, BS,  # weights at each chunk's start, (BH, n_chunks, BD, BD) / (BH, n_chunks, BD), if SAVE
    ZS, ZQS,  # Z = X W + b and Zq (before the output LayerNorm), (BH, T, D) float32, if SAVE
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, MB: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr, EPS: tl.constexpr, HAS_PRE: tl.constexpr,
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
        z = tl.dot(x, w, input_precision=PREC) + b[None, :]
        z_hat, rstd = row_layer_norm(z, cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
        g = ln_project(g_hat, z_hat, rstd, cmask, D)
        # The dual-form output at the queries.
        mix = chunk_mix_block(MIX, pid * n_chunks + c, p, rows, valid, q, x, s, lr, MB, PREC, HAS_PRE)
        zq = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(mix, g, input_precision=PREC)
        if HAS_ACC:  # gradients of the mini-batch's earlier tokens, carried in the state (zero after it)
            zq -= s[:, None] * (tl.dot(q, gw, input_precision=PREC) + gb[None, :])
        if SAVE:
            tl.store(ZS + offs, z, mask=mask)
            tl.store(ZQS + offs, zq, mask=mask)
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
def _row_block(
    Q, K, WS, GW0, at, pid, base, t0, rc, rows, valid, cols, cmask, first, held,
    D: tl.constexpr, BD: tl.constexpr, RB: tl.constexpr, HAS_ACC: tl.constexpr, ON_CHIP: tl.constexpr,
):  # fmt: skip
    """Rows ``rc`` of a chunk's starting ``W`` and running sum (zero unless ``HAS_ACC``), the
    matching columns of its queries and keys (float32), and where those rows sit in this
    program's ``d x d`` buffers (offsets and mask), for the gradients stored in place.

    On the on-chip path the one block is all of ``W``: ``held = (w, gw, q, x)``, loaded once per
    chunk, is returned instead of loading it again in every pass."""
    rmask = rc < D
    at_w, wmask = pid * D * D + rc[:, None] * D + cols[None, :], rmask[:, None] & cmask[None, :]
    if ON_CHIP:
        w, gw, qr, xr = held
    else:
        w = tl.load(WS + at * BD * BD + rc[:, None] * BD + cols[None, :])
        gw = tl.zeros((RB, BD), tl.float32)
        if HAS_ACC:
            gw += first * tl.load(GW0 + at_w, mask=wmask, other=0.0).to(tl.float32)
        tok, tmask = base + (t0 + rows)[:, None] * D + rc[None, :], valid[:, None] & rmask[None, :]
        qr = tl.load(Q + tok, mask=tmask, other=0.0).to(tl.float32)
        xr = tl.load(K + tok, mask=tmask, other=0.0).to(tl.float32)
    return w, gw, qr, xr, at_w, wmask


@triton.jit
def _fetch(P, offs, mask, held, ON_CHIP: tl.constexpr):
    """A block the backward accumulates into: ``held`` (registers) on the on-chip path, else from ``P``."""
    if ON_CHIP:
        return held
    else:
        return tl.load(P + offs, mask=mask, other=0.0)


@triton.jit
def _keep(P, offs, mask, value, held, ON_CHIP: tl.constexpr):
    """Puts ``value`` back where ``_fetch`` found it: returns it as the new ``held``, or stores it to ``P``."""
    if ON_CHIP:
        return value
    else:
        tl.store(P + offs, value, mask=mask)
        return held


@triton.jit
def _ttt_linear_bwd(
    Q, K, V, LR, TS, LNW, LNB, MIX, GW0, GB0, WS, BS, ZS, ZQS,  # forward inputs and what the forward saved
    DY, DQ, DK, DV, DLR, DTS, DLNW, DLNB,  # gradients of y and of the inputs (DTS, DLN*: per program)
    DMIX,  # the gradient of the pre-pass's MIX (zero on entry; autograd takes it on to q, k, lr, ts)
    DW, DB, DGW, DGB,  # in: gradients of the state out; out: of the state in
    DQS, DKS,  # scratch, (BH, BLOCK_N, BD) each: the parts of dq, dk gathered row block by row block
    seq, heads, start_pos, n_chunks,
    D: tl.constexpr, BD: tl.constexpr, RB: tl.constexpr, MB: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr, PREC: tl.constexpr, EPS: tl.constexpr, ON_CHIP: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    cols, rrow = tl.arange(0, BD), tl.arange(0, RB)
    cmask = cols < D
    # The d-wide gradients live in registers. Those of W and its running sum too on the on-chip
    # path (RB == BD: one block, dw_all/dgw_all carried over the whole walk); else in DW, DGW,
    # a row block at a time (dw_all/dgw_all then stay unused).
    dw_all = tl.zeros((RB, BD), tl.float32)
    dgw_all = tl.zeros((RB, BD), tl.float32)
    if ON_CHIP:
        at_all, all_mask = pid * D * D + rrow[:, None] * D + cols[None, :], (rrow < D)[:, None] & cmask[None, :]
        dw_all += tl.load(DW + at_all, mask=all_mask, other=0.0)
        dgw_all += tl.load(DGW + at_all, mask=all_mask, other=0.0)
    db = tl.load(DB + pid * D + cols, mask=cmask, other=0.0)
    dgb = tl.load(DGB + pid * D + cols, mask=cmask, other=0.0)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    dln_w = tl.zeros((BD,), tl.float32)
    dln_b = tl.zeros((BD,), tl.float32)
    base, tok_base = pid * seq * D, pid * seq
    scratch = pid * BLOCK_N * BD + tl.arange(0, BLOCK_N)[:, None] * BD
    smask = (tl.arange(0, BLOCK_N) < BLOCK_N)[:, None] & (rrow < RB)[None, :]  # the scratch has no padding
    for back in range(n_chunks):
        c = n_chunks - 1 - back
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        offs, mask, q, x, v, lr, s = load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        at = pid * n_chunks + c
        first = (c == 0).to(tl.float32)  # only the first chunk starts with a non-zero running sum
        gb = tl.zeros((BD,), tl.float32)
        if HAS_ACC:
            gb += first * tl.load(GB0 + pid * D + cols, mask=cmask, other=0.0).to(tl.float32)
        held = None  # on the on-chip path: all of the chunk's W and running sum, loaded once
        if ON_CHIP:
            w_all, gw_all, _, _, _, _ = _row_block(
                Q, K, WS, GW0, at, pid, base, t0, rrow, rows, valid, cols, cmask, first, None, D, BD, RB, HAS_ACC, False
            )
            held = (w_all, gw_all, q, x)
        # The chunk's forward: Z and Zq as the forward saved them; Q GW + gb (the running sum's
        # term at the queries, non-zero only in a first chunk that starts mid-mini-batch) again.
        z = tl.load(ZS + offs, mask=mask, other=0.0)
        zq = tl.load(ZQS + offs, mask=mask, other=0.0)
        acc_q = tl.zeros((BLOCK_N, BD), tl.float32) + gb[None, :]
        if HAS_ACC:
            for r0 in range(0, BD, RB):
                rc = r0 + rrow
                w, gw, qr, xr, at_w, wmask = _row_block(
                    Q, K, WS, GW0, at, pid, base, t0, rc, rows, valid, cols, cmask, first, held, D, BD, RB, HAS_ACC,
                    ON_CHIP,
                )  # fmt: skip
                acc_q += tl.dot(qr, gw, input_precision=PREC)
        target = v - x
        z_hat, rstd = row_layer_norm(z, cmask, D, EPS)
        g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - target) * ln_w[None, :]
        zg = tl.sum(g_hat * z_hat, axis=1) / D
        g_in = centre(g_hat, cmask, D) - z_hat * zg[:, None]
        g = rstd[:, None] * g_in
        mix_offs, mix_mask = chunk_square(at, p, rows, valid, MB)
        mix = tl.load(MIX + mix_offs, mask=mix_mask, other=0.0)
        zq_hat, rstd_q = row_layer_norm(zq, cmask, D, EPS)
        lr_g = lr[:, None] * g
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32)

        # The update: W' = W - s_last * total when the chunk closes its mini-batch, else the
        # running sum becomes total (total = running sum + X^T (lr G)); b's part here, W's per block.
        d_total_b = closes * (-s_last * db) + (1.0 - closes) * dgb
        ds_last = tl.sum(db * (gb + tl.sum(lr_g, axis=0)), axis=0)
        dgb = d_total_b
        # The output: y = q + LN(zq) * ln_w + ln_b.
        dln_w += tl.sum(dy * zq_hat, axis=0)
        dln_b += tl.sum(dy, axis=0)
        dzq = ln_project(dy * ln_w[None, :], zq_hat, rstd_q, cmask, D)
        ds = tl.zeros((BLOCK_N,), tl.float32)
        dmix, dg, db, dgb, ds = query_output_bwd(dzq, g, mix, s, acc_q, db, dgb, ds, HAS_ACC, PREC)
        tl.store(DMIX + mix_offs, dmix, mask=mix_mask)
        dlr_g = tl.zeros((BLOCK_N, BD), tl.float32) + d_total_b[None, :]
        # dq's and dk's terms through W: in registers on the on-chip path, else gathered in the
        # scratch a row block (of W, so columns of dq/dk) at a time.
        dq_w = tl.zeros((BLOCK_N, RB), tl.float32)
        dk_w = tl.zeros((BLOCK_N, RB), tl.float32)
        # Per row block of W: the query side's input gradients and the running sum's new term
        # X^T (lr G).
        for r0 in range(0, BD, RB):
            rc = r0 + rrow
            w, gw, qr, xr, at_w, wmask = _row_block(
                Q, K, WS, GW0, at, pid, base, t0, rc, rows, valid, cols, cmask, first, held, D, BD, RB, HAS_ACC, ON_CHIP
            )
            dw = _fetch(DW, at_w, wmask, dw_all, ON_CHIP)
            dgw = _fetch(DGW, at_w, wmask, dgw_all, ON_CHIP)
            ds_last += tl.sum(tl.sum(dw * (gw + tl.dot(tl.trans(xr), lr_g, input_precision=PREC)), axis=1), axis=0)
            d_total_w = closes * (-s_last * dw) + (1.0 - closes) * dgw
            dq_r, dw, dgw = query_input_bwd(qr, dzq, w, gw, s, dw, d_total_w, HAS_ACC, PREC)
            dlr_g += tl.dot(xr, d_total_w, input_precision=PREC)
            dk_r = tl.dot(lr_g, tl.trans(d_total_w), input_precision=PREC)
            dq_w = _keep(DQS, scratch + rc[None, :], smask, dq_r, dq_w, ON_CHIP)
            dk_w = _keep(DKS, scratch + rc[None, :], smask, dk_r, dk_w, ON_CHIP)
            dw_all = _keep(DW, at_w, wmask, dw, dw_all, ON_CHIP)
            dgw_all = _keep(DGW, at_w, wmask, dgw, dgw_all, ON_CHIP)
        ds += tl.where(rows == n - 1, -closes * ds_last, 0.0)
        dg += lr[:, None] * dlr_g
        dlr = tl.sum(dlr_g * g, axis=1)
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
        db += tl.sum(dz, axis=0)
        if not ON_CHIP:
            tl.debug_barrier()  # the blocks stored above are read below by other threads of the program
        # Per row block of W: the terms through dZ (Z = X W + b).
        for r0 in range(0, BD, RB):
            rc = r0 + rrow
            w, gw, qr, xr, at_w, wmask = _row_block(
                Q, K, WS, GW0, at, pid, base, t0, rc, rows, valid, cols, cmask, first, held, D, BD, RB, False, ON_CHIP
            )
            dw = _fetch(DW, at_w, wmask, dw_all, ON_CHIP) + tl.dot(tl.trans(xr), dz, input_precision=PREC)
            dw_all = _keep(DW, at_w, wmask, dw, dw_all, ON_CHIP)
            dk_r = _fetch(DKS, scratch + rc[None, :], smask, dk_w, ON_CHIP)
            dk_r += tl.dot(dz, tl.trans(w), input_precision=PREC)
            dk_w = _keep(DKS, scratch + rc[None, :], smask, dk_r, dk_w, ON_CHIP)
        if not ON_CHIP:
            tl.debug_barrier()
        smask_all = (rows < BLOCK_N)[:, None] & (cols < BD)[None, :]
        dq = dy + _fetch(DQS, scratch + cols[None, :], smask_all, dq_w, ON_CHIP)
        dx = _fetch(DKS, scratch + cols[None, :], smask_all, dk_w, ON_CHIP) - dtarget
        if not ON_CHIP:
            tl.debug_barrier()  # the next chunk overwrites the scratch

        tl.store(DQ + offs, dq.to(DQ.dtype.element_ty), mask=mask)
        tl.store(DK + offs, dx.to(DK.dtype.element_ty), mask=mask)
        tl.store(DV + offs, dtarget.to(DV.dtype.element_ty), mask=mask)
        tl.store(DLR + tok_base + t0 + rows, dlr, mask=valid)
        tl.store(DTS + tok_base + t0 + rows, ds, mask=valid)
    if ON_CHIP:
        tl.store(DW + at_all, dw_all, mask=all_mask)
        tl.store(DGW + at_all, dgw_all, mask=all_mask)
    tl.store(DB + pid * D + cols, db, mask=cmask)
    tl.store(DGB + pid * D + cols, dgb, mask=cmask)
    tl.store(DLNW + pid * D + cols, dln_w, mask=cmask)
    tl.store(DLNB + pid * D + cols, dln_b, mask=cmask)


ON_CHIP_MAX_DIM = 64  # every paper size: W, its gradient and its running sum's, 16 KB each in float32


def row_tile(widths: tuple[int, ...]) -> int:
    """Rows of ``W`` per block in the backward: all of them (the on-chip path) up to head_dim 64,
    else ``RB x d`` tiles of at most 1024 elements (at least 16 rows)."""
    bd = padded(widths[0])
    return bd if bd <= ON_CHIP_MAX_DIM else max(16, 1024 // bd)


LINEAR = KernelPair(
    1,
    _ttt_linear_fwd,
    _ttt_linear_bwd,
    constexprs=lambda widths: {},
    # 8 warps at every head_dim (sm_90, bf16, docs/design.md): at d=64 the forward spills nothing at 8
    # (172 B at 4), the on-chip backward 0.4 KB (1.4 KB at 4); 16 caps registers at 128 and spills more.
    num_warps=lambda w: 8,
    bwd_constexprs=lambda widths: dict(RB=row_tile(widths), ON_CHIP=row_tile(widths) == padded(widths[0])),
    scratch=lambda widths, block_n: [(block_n, padded(widths[0]))] * 2,
    prepass=chunk_mix,
    n_pre=1,
    token_saves=2,  # Z and Zq: the backward loads them instead of 4 dots per chunk (512 B per token per head at d=64)
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
