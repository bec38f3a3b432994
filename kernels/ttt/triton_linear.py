"""TTT-Linear in Triton: the dual form of ``mixbench_kernels.ttt.dual.ttt_dual``, a sequential walk that carries
only the state, beside kernels parallel over chunks for everything else.

The function, per chunk of tokens (a mini-batch, or the part of one that a state starting or
ending mid-mini-batch covers), in ``ttt_dual``'s notation::

    Z = X W + b;  G = d/dZ 1/2 ||LN(Z) - (V - X)||^2          (analytic LayerNorm+L2 gradient)
    Zq = Q W + b - (eta * (Q X^T + 1)) G  [- s * (Q G_acc + g_acc) when the chunk starts mid-mini-batch]
    y = Q + LN(Zq)                                            (output LayerNorm and residual)
    W, b <- W - s_last (G_acc + X^T (lr * G)), ...            (at the end of a mini-batch; else G_acc grows)

Only ``Z``, ``G`` and the update depend on the previous chunk, so only they are on the chain
(the paper's latency is one chain of ``T / b`` dependent steps):

* **forward walk** (``_fwd_walk``, one program per (batch, head), ``W`` in registers, carried
  centred: ``_centred``): per chunk ``Z``, ``G`` and the update; it stores the weights at every
  chunk's start, and nothing else;
* **output** (``_fwd_out``, one program per (chunk, batch, head)): ``G`` again from the stored
  weights, then ``Zq`` and ``y``, all chunks at once;
* **backward**, three launches: ``_bwd_out`` (parallel) the output's gradients: ``dq`` (final),
  ``dmix``, ``dZq``'s terms in ``dG`` and in ``dW`` (``Q^T dZq``, one ``d x d`` per chunk), and
  the inner LayerNorm's figures the walk needs (from the stored weights); then
  ``_bwd_walk`` (sequential, reverse) carries ``dW, db`` only: per chunk ``X dT``, the inner
  LayerNorm's backward to ``dZ``, and ``dW += Q^T dZq + X^T dZ``, storing the carry it entered
  the chunk with; then ``_bwd_in`` (parallel) recomputes each chunk
  from that carry: ``dk``, ``dv``, ``dlr``, the token scales' and the LayerNorm weights'
  gradients.

Full mini-batches (every chunk but a sequence's first and last) take a specialised step: no
running sum (it is zero after a mini-batch closes), the last token's scale hoisted out of the
loop, no per-chunk branch; the first and last chunks take the general step. Each walk loads the
next chunk's tiles one step ahead, so their memory latency is hidden behind a step.

Memory: the forward stores the chunk-start weights only (``4 d (d + 1) / b`` bytes per token per
head: 1040 B at d=64, b=16), in inference too (the output kernel reads them). ``checkpoint=True``
keeps nothing but the inputs and reruns the forward in the backward. The backward's temporaries:
two ``d x d`` float32 per chunk (``Q^T dZq``, and the carry) and four floats' worth of ``d`` per
token (``dG``'s query part, ``G``, ``LN(Z)``), float32.

Decode: a step (one token, no gradient, no pre-pass) runs the walk with the output fused into it
(``QUERY``): one launch per layer per token. The same fused walk computes the whole forward for
any length (a test compares it with the split one).

Shape rules: ``tl.dot`` needs every dim >= 16, so a chunk is a block of ``max(16, b)`` rows
(rounded up to a power of two), the rows past the chunk masked to zero (a zero learning rate
and token scale make them contribute nothing); ``head_dim`` is padded to a power of two >= 16
with masked columns (96, at 760m, pads to 128). The inner model must be the one TTT-Linear uses:
one dense layer with a bias, the LayerNorm and the residual (``ttt_dual`` covers the other knobs).

Set ``TRITON_INTERPRET=1`` before triton is first imported in the process to run the kernels
on CPU (tests/kernels/test_ttt_triton.py does it in a subprocess).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from mixbench_kernels.ttt.inner import TTTState
from mixbench_kernels.ttt.triton_common import (
    N_INPUTS,
    KernelSpec,
    base_options,
    chunk_bounds,
    chunk_mix,
    chunk_mix_block,
    chunk_square,
    kernel_constants,
    ln_project,
    padded,
    row_layer_norm,
    row_sums,
    row_sums3,
    run_kernel,
)

# -- tiles --------------------------------------------------------------------------------------


@triton.jit
def _tokens(P, pid, seq, t0, rows, valid, cols, cmask, D: tl.constexpr):
    """A chunk's rows of a ``(BH, T, D)`` tensor, float32, zero past the chunk and in padding columns."""
    offs = pid * seq * D + (t0 + rows)[:, None] * D + cols[None, :]
    return tl.load(P + offs, mask=valid[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_tokens(P, value, pid, seq, t0, rows, valid, cols, cmask, D: tl.constexpr):
    offs = pid * seq * D + (t0 + rows)[:, None] * D + cols[None, :]
    tl.store(P + offs, value.to(P.dtype.element_ty), mask=valid[:, None] & cmask[None, :])


@triton.jit
def _per_token(P, pid, seq, t0, rows, valid):
    """A chunk's entries of a ``(BH, T)`` tensor, float32, zero past the chunk."""
    return tl.load(P + pid * seq + t0 + rows, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def _square(P, at, cols, BD: tl.constexpr):
    """Block ``at`` of a ``(.., BD, BD)`` float32 buffer (padded: no mask)."""
    return tl.load(P + at * BD * BD + cols[:, None] * BD + cols[None, :])


@triton.jit
def _store_square(P, value, at, cols, BD: tl.constexpr):
    tl.store(P + at * BD * BD + cols[:, None] * BD + cols[None, :], value)


@triton.jit
def _state_matrix(P, pid, cols, D: tl.constexpr, width):
    """Program ``pid``'s ``D x D`` state tensor (weights, a sum or a gradient), float32, zero-padded.

    ``width`` is ``D``, or 0 for zeros (a condition as a bound: the interpreter takes no scalar
    in a block mask)."""
    mmask = (cols < width)[:, None] & (cols < width)[None, :]
    return tl.load(P + pid * D * D + cols[:, None] * D + cols[None, :], mask=mmask, other=0.0).to(tl.float32)


@triton.jit
def _state_vector(P, pid, cols, D: tl.constexpr, width):
    return tl.load(P + pid * D + cols, mask=cols < width, other=0.0).to(tl.float32)


@triton.jit
def _store_state(PW, PB, w, b, pid, cols, cmask, D: tl.constexpr):
    tl.store(PW + pid * D * D + cols[:, None] * D + cols[None, :], w, mask=cmask[:, None] & cmask[None, :])
    tl.store(PB + pid * D + cols, b, mask=cmask)


# -- the math of a chunk, shared by the walks and the parallel kernels -------------------------------


@triton.jit
def _inner_gradient(
    x, v, w, b, ln_w, ln_b, cmask, D: tl.constexpr, EPS: tl.constexpr, PREC: tl.constexpr, CENTRED: tl.constexpr = False
):
    """``(G, LN(Z), rstd, mean(g_hat LN(Z)))`` of ``Z = X W + b``: the reconstruction loss's gradient.

    ``CENTRED``: ``W``'s rows and ``b`` have zero mean (the walks carry them so, ``_centred``), so
    ``Z`` is already centred and the LayerNorm needs no mean."""
    z = tl.dot(x, w, input_precision=PREC) + b[None, :]
    if CENTRED:
        rstd = 1.0 / tl.sqrt(tl.sum(z * z, axis=1) / D + EPS)
        z_hat = z * rstd[:, None]
    else:
        z_hat, rstd = row_layer_norm(z, cmask, D, EPS)
    g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
    g_sum, zg_sum = row_sums(g_hat, g_hat * z_hat)  # g_hat is zero in padding columns
    zg = zg_sum / D
    g = rstd[:, None] * tl.where(cmask[None, :], g_hat - (g_sum / D)[:, None] - z_hat * zg[:, None], 0.0)
    return g, z_hat, rstd, zg


@triton.jit
def _inner_gradient_bwd(dg, x, v, z_hat, rstd, zg, g, ln_w, ln_b, cmask, D: tl.constexpr):
    """Through ``_inner_gradient`` from ``dG`` back to ``(dZ, dg_hat)``, from what the forward stored.

    ``G = rstd * g_in``, ``g_in = g_hat - mean(g_hat) - z_hat mean(g_hat z_hat)``,
    ``g_hat = (z_hat ln_w + ln_b - (V - X)) ln_w``; ``dg_hat`` carries on to the target and the
    LayerNorm weights (``_bwd_in``).
    """
    g_hat = (z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)) * ln_w[None, :]
    dg = tl.where(cmask[None, :], dg, 0.0)  # so that the row sums below are over the D real columns
    dg_sum, m, drstd = row_sums3(dg, dg * z_hat, dg * g)  # drstd: rstd * sum(dG * g_in)
    m = m / D
    dg_hat = rstd[:, None] * tl.where(cmask[None, :], dg - (dg_sum / D)[:, None] - z_hat * m[:, None], 0.0)
    dz_hat = -rstd[:, None] * (dg * zg[:, None] + g_hat * m[:, None]) + dg_hat * ln_w[None, :] * ln_w[None, :]
    dz_sum, dzz_sum = row_sums(dz_hat, dz_hat * z_hat)
    dz = rstd[:, None] * tl.where(cmask[None, :], dz_hat - (dz_sum / D)[:, None] - z_hat * (dzz_sum / D)[:, None], 0.0)
    dz -= (rstd * drstd / D)[:, None] * z_hat
    return dz, dg_hat, g_hat


@triton.jit
def _output(
    q,
    w,
    b,
    gw,
    gb,
    g,
    mix,
    s,
    ln_w,
    ln_b,
    cmask,
    D: tl.constexpr,
    EPS: tl.constexpr,
    PREC: tl.constexpr,
    HAS_ACC: tl.constexpr,
):
    """``(y, LN(Zq), its rstd, Q G_acc + g_acc)`` of a chunk from its starting weights and ``G``."""
    zq = tl.dot(q, w, input_precision=PREC) + b[None, :] - tl.dot(mix, g, input_precision=PREC)
    acc_q = tl.zeros_like(zq)
    if HAS_ACC:  # gradients of the mini-batch's earlier tokens, carried in the state (zero after it)
        acc_q += tl.dot(q, gw, input_precision=PREC) + gb[None, :]
        zq -= s[:, None] * acc_q
    zq_hat, rstd_q = row_layer_norm(zq, cmask, D, EPS)
    return q + zq_hat * ln_w[None, :] + ln_b[None, :], zq_hat, rstd_q, acc_q


# -- forward ----------------------------------------------------------------------------------------


@triton.jit
def _centred(w, b, cmask, D: tl.constexpr):
    """``(W - u 1^T, b - beta, u, beta)``: ``u`` the row means of ``W``, ``beta`` the mean of ``b``.

    Every row of ``G`` sums to zero (``sum(LN(Z)) = 0``), so an update ``X^T (lr G)`` leaves ``u``
    and ``beta`` as they are: the walk carries the centred parts, whose ``Z = X W + b`` comes out
    centred, and a LayerNorm mean fewer is on the chain. Only a running sum given in the state in
    (a start mid-mini-batch) can move ``u`` and ``beta``, in the first chunk.
    """
    u = tl.sum(w, axis=1) / D
    beta = tl.sum(b, axis=0) / D
    return tl.where(cmask[None, :], w - u[:, None], 0.0), tl.where(cmask, b - beta, 0.0), u, beta


@triton.jit
def _fwd_step(
    Q,
    TS,
    Y,
    WS,
    BS,
    x,
    v,
    lr,
    w,
    b,
    gw,
    gb,
    u,
    beta,
    u_acc,
    beta_acc,
    ln_w,
    ln_b,
    s_full,
    c,
    pid,
    seq,
    start_pos,
    n_chunks,
    cols,
    cmask,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
    HAS_ACC: tl.constexpr,
    QUERY: tl.constexpr,
    FULL: tl.constexpr,
):
    """Chunk ``c`` of the forward walk from its tiles ``x, v, lr``; returns the state after it.

    The state is carried centred (``_centred``): ``W = w + u 1^T``, ``b = b + beta``, and the
    running sums alike (``u_acc``, ``beta_acc``). ``FULL``: a whole mini-batch from a closed state
    (no running sum, ``s_full`` the last scale, ``u`` and ``beta`` unchanged). ``QUERY``: the
    output too (the fused walk); else the walk stores the chunk's starting weights for ``_fwd_out``.
    """
    t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
    at = pid * n_chunks + c
    g, _, _, _ = _inner_gradient(x, v, w, b, ln_w, ln_b, cmask, D, EPS, PREC, True)
    w_full = tl.where(cmask[None, :], w + u[:, None], 0.0)
    b_full = tl.where(cmask, b + beta, 0.0)
    if QUERY:
        q = _tokens(Q, pid, seq, t0, rows, valid, cols, cmask, D)
        s = tl.load(TS + p + rows, mask=valid, other=0.0).to(tl.float32)
        mix = chunk_mix_block(Q, at, p, rows, valid, q, x, s, lr, MB, PREC, False)  # no pre-pass: computed here
        gw_full = tl.where(cmask[None, :], gw + u_acc[:, None], 0.0)
        gb_full = tl.where(cmask, gb + beta_acc, 0.0)
        y, _, _, _ = _output(
            q, w_full, b_full, gw_full, gb_full, g, mix, s, ln_w, ln_b, cmask, D, EPS, PREC, HAS_ACC and not FULL
        )
        _store_tokens(Y, y, pid, seq, t0, rows, valid, cols, cmask, D)
    else:
        _store_square(WS, w_full, at, cols, BD)
        tl.store(BS + at * BD + cols, b_full)
    lr_g = lr[:, None] * g
    update = tl.dot(tl.trans(x), lr_g, input_precision=PREC)
    if FULL:
        w -= s_full * update
        b -= s_full * tl.sum(lr_g, axis=0)
    else:  # into the running sum, and into W, b when the chunk closes its mini-batch
        gw += update
        gb += tl.sum(lr_g, axis=0)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32) * closes
        w -= s_last * gw
        b -= s_last * gb
        u -= s_last * u_acc
        beta -= s_last * beta_acc
        gw *= 1.0 - closes
        gb *= 1.0 - closes
        u_acc *= 1.0 - closes
        beta_acc *= 1.0 - closes
    return w, b, gw, gb, u, beta, u_acc, beta_acc


@triton.jit
def _fwd_walk(
    Q,
    K,
    V,
    LR,
    TS,
    LNW,
    LNB,  # inputs: (BH, T, D) x3, (BH, T), (MB,), (H, D) x2
    W,
    B,
    GW,
    GB,  # in: the state in, (BH, D, D), (BH, D), (BH, D, D), (BH, D); out: the state out
    Y,  # the output, (BH, T, D) (written if QUERY)
    WS,
    BS,  # weights at each chunk's start (BH, n_chunks, BD, BD) / (.., BD), float32, unless QUERY
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
    QUERY: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    w, b, u, beta = _centred(_state_matrix(W, pid, cols, D, D), _state_vector(B, pid, cols, D, D), cmask, D)
    gw, gb, u_acc, beta_acc = _centred(
        _state_matrix(GW, pid, cols, D, D * HAS_ACC), _state_vector(GB, pid, cols, D, D * HAS_ACC), cmask, D
    )
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    s_full = tl.load(TS + MB - 1).to(tl.float32)
    # The first chunk (it may start mid-mini-batch, and be the last) takes the general step.
    t0, n, p, rows, valid = chunk_bounds(0, start_pos, seq, MB, BLOCK_N)
    x = _tokens(K, pid, seq, t0, rows, valid, cols, cmask, D)
    v = _tokens(V, pid, seq, t0, rows, valid, cols, cmask, D)
    lr = _per_token(LR, pid, seq, t0, rows, valid)
    w, b, gw, gb, u, beta, u_acc, beta_acc = _fwd_step(
        Q,
        TS,
        Y,
        WS,
        BS,
        x,
        v,
        lr,
        w,
        b,
        gw,
        gb,
        u,
        beta,
        u_acc,
        beta_acc,
        ln_w,
        ln_b,
        s_full,
        0,
        pid,
        seq,
        start_pos,
        n_chunks,
        cols,
        cmask,
        D,
        BD,
        MB,
        BLOCK_N,
        PREC,
        EPS,
        HAS_ACC,
        QUERY,
        False,
    )
    # Whole mini-batches in between, each chunk's tiles loaded during the step before.
    t0, n, p, rows, valid = chunk_bounds(1, start_pos, seq, MB, BLOCK_N)
    x = _tokens(K, pid, seq, t0, rows, valid, cols, cmask, D)
    v = _tokens(V, pid, seq, t0, rows, valid, cols, cmask, D)
    lr = _per_token(LR, pid, seq, t0, rows, valid)
    for c in range(1, n_chunks - 1):
        t0, n, p, rows, valid = chunk_bounds(c + 1, start_pos, seq, MB, BLOCK_N)
        x_next = _tokens(K, pid, seq, t0, rows, valid, cols, cmask, D)
        v_next = _tokens(V, pid, seq, t0, rows, valid, cols, cmask, D)
        lr_next = _per_token(LR, pid, seq, t0, rows, valid)
        w, b, gw, gb, u, beta, u_acc, beta_acc = _fwd_step(
            Q,
            TS,
            Y,
            WS,
            BS,
            x,
            v,
            lr,
            w,
            b,
            gw,
            gb,
            u,
            beta,
            u_acc,
            beta_acc,
            ln_w,
            ln_b,
            s_full,
            c,
            pid,
            seq,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
            PREC,
            EPS,
            HAS_ACC,
            QUERY,
            True,
        )
        x, v, lr = x_next, v_next, lr_next
    # The last chunk (it may end mid-mini-batch) takes the general step; its tiles are loaded.
    if n_chunks > 1:
        w, b, gw, gb, u, beta, u_acc, beta_acc = _fwd_step(
            Q,
            TS,
            Y,
            WS,
            BS,
            x,
            v,
            lr,
            w,
            b,
            gw,
            gb,
            u,
            beta,
            u_acc,
            beta_acc,
            ln_w,
            ln_b,
            s_full,
            n_chunks - 1,
            pid,
            seq,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
            PREC,
            EPS,
            False,
            QUERY,
            False,
        )
    _store_state(W, B, w + u[:, None], b + beta, pid, cols, cmask, D)
    _store_state(GW, GB, gw + u_acc[:, None], gb + beta_acc, pid, cols, cmask, D)


@triton.jit
def _query_chunk(
    Q,
    K,
    V,
    TS,
    LNW,
    LNB,
    MIX,
    GW0,
    GB0,
    WS,
    BS,
    c,
    pid,
    seq,
    heads,
    start_pos,
    n_chunks,
    cols,
    cmask,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
):
    """Chunk ``c`` recomputed from the weights the walk stored, for the parallel kernels: its tiles,
    the inner gradient (``_inner_gradient``) and the output (``_output``); the first chunk of a
    state that starts mid-mini-batch with the state in's running sums."""
    at = pid * n_chunks + c
    t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
    q = _tokens(Q, pid, seq, t0, rows, valid, cols, cmask, D)
    x = _tokens(K, pid, seq, t0, rows, valid, cols, cmask, D)
    v = _tokens(V, pid, seq, t0, rows, valid, cols, cmask, D)
    s = tl.load(TS + p + rows, mask=valid, other=0.0).to(tl.float32)
    mix_offs, mix_mask = chunk_square(at, p, rows, valid, MB)
    mix = tl.load(MIX + mix_offs, mask=mix_mask, other=0.0)
    first = D * HAS_ACC * (c == 0)  # D in the first chunk of a state that starts mid-mini-batch, else 0
    gw, gb = _state_matrix(GW0, pid, cols, D, first), _state_vector(GB0, pid, cols, D, first)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    w, b = _square(WS, at, cols, BD), tl.load(BS + at * BD + cols)
    g, z_hat, rstd, zg = _inner_gradient(x, v, w, b, ln_w, ln_b, cmask, D, EPS, PREC)
    y, zq_hat, rstd_q, acc_q = _output(q, w, b, gw, gb, g, mix, s, ln_w, ln_b, cmask, D, EPS, PREC, HAS_ACC)
    return (
        t0,
        rows,
        valid,
        q,
        s,
        mix,
        mix_offs,
        mix_mask,
        first,
        gw,
        ln_w,
        w,
        g,
        z_hat,
        rstd,
        zg,
        y,
        zq_hat,
        rstd_q,
        acc_q,
    )


@triton.jit
def _fwd_out(
    Q,
    K,
    V,
    TS,
    LNW,
    LNB,
    MIX,
    GW0,
    GB0,
    WS,
    BS,
    Y,  # GW0, GB0: the state in's running sums
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
):
    """The output of chunk ``program_id(0)`` from the weights the walk stored (``G`` recomputed from them)."""
    c, pid = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    t0, rows, valid, _, _, _, _, _, _, _, _, _, _, _, _, _, y, _, _, _ = _query_chunk(
        Q,
        K,
        V,
        TS,
        LNW,
        LNB,
        MIX,
        GW0,
        GB0,
        WS,
        BS,
        c,
        pid,
        seq,
        heads,
        start_pos,
        n_chunks,
        cols,
        cmask,
        D,
        BD,
        MB,
        BLOCK_N,
        HAS_ACC,
        PREC,
        EPS,
    )
    _store_tokens(Y, y, pid, seq, t0, rows, valid, cols, cmask, D)


# -- backward ---------------------------------------------------------------------------------------


@triton.jit
def _bwd_out(
    Q,
    K,
    V,
    TS,
    LNW,
    LNB,
    MIX,
    GW0,
    GB0,
    WS,
    BS,
    DY,
    DQ,
    DMIX,
    DGQ,
    DWQ,
    DBQ,
    DTS,
    DLN,
    DGW_IN,
    DGB_IN,
    GS,
    ZH,
    RS,
    ZGS,
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
    EPS: tl.constexpr,
):
    """The output's backward for chunk ``program_id(0)``: ``dq`` (whole), ``dmix``, ``dZq``'s term in
    ``dG`` (``DGQ``), ``Q^T dZq`` and ``sum dZq`` (``DWQ``, ``DBQ``: what the walk adds to ``dW``,
    ``db``), the token scales' running-sum term, the output LayerNorm's weight gradients (``DLN``,
    per chunk), and the state in's running sums' query term (``DGW_IN``, first chunk). Also what the
    walk and ``_bwd_in`` read of the inner gradient, recomputed from the stored weights: ``G``
    (``GS``), ``LN(Z)`` (``ZH``), its ``rstd`` (``RS``) and ``mean(g_hat LN(Z))`` (``ZGS``)."""
    c, pid = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    at = pid * n_chunks + c
    t0, rows, valid, q, s, mix, offs, mask, first, gw, ln_w, w, g, z_hat, rstd, zg, _, zq_hat, rstd_q, acc_q = (
        _query_chunk(
            Q,
            K,
            V,
            TS,
            LNW,
            LNB,
            MIX,
            GW0,
            GB0,
            WS,
            BS,
            c,
            pid,
            seq,
            heads,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
            HAS_ACC,
            PREC,
            EPS,
        )
    )
    dy = _tokens(DY, pid, seq, t0, rows, valid, cols, cmask, D)
    _store_tokens(GS, g, pid, seq, t0, rows, valid, cols, cmask, D)
    _store_tokens(ZH, z_hat, pid, seq, t0, rows, valid, cols, cmask, D)
    tl.store(RS + pid * seq + t0 + rows, rstd, mask=valid)
    tl.store(ZGS + pid * seq + t0 + rows, zg, mask=valid)
    tl.store(DLN + at * 2 * BD + cols, tl.sum(dy * zq_hat, axis=0))
    tl.store(DLN + at * 2 * BD + BD + cols, tl.sum(dy, axis=0))
    dzq = ln_project(dy * ln_w[None, :], zq_hat, rstd_q, cmask, D)
    dq = dy + tl.dot(dzq, tl.trans(w), input_precision=PREC)
    ds = tl.zeros((BLOCK_N,), tl.float32)
    if HAS_ACC:
        s_dzq = s[:, None] * dzq
        dq -= tl.dot(s_dzq, tl.trans(gw), input_precision=PREC)
        ds -= tl.sum(dzq * acc_q, axis=1)
        mmask = (cols < first)[:, None] & (cols < first)[None, :]
        at_w = pid * D * D + cols[:, None] * D + cols[None, :]
        tl.store(DGW_IN + at_w, -tl.dot(tl.trans(q), s_dzq, input_precision=PREC), mask=mmask)
        tl.store(DGB_IN + pid * D + cols, -tl.sum(s_dzq, axis=0), mask=cols < first)
    _store_tokens(DQ, dq, pid, seq, t0, rows, valid, cols, cmask, D)
    tl.store(DTS + pid * seq + t0 + rows, ds, mask=valid)
    tl.store(DMIX + offs, -tl.dot(dzq, tl.trans(g), input_precision=PREC), mask=mask)
    _store_tokens(DGQ, -tl.dot(tl.trans(mix), dzq, input_precision=PREC), pid, seq, t0, rows, valid, cols, cmask, D)
    _store_square(DWQ, tl.dot(tl.trans(q), dzq, input_precision=PREC), at, cols, BD)
    tl.store(DBQ + at * BD + cols, tl.sum(dzq, axis=0))


@triton.jit
def _bwd_tiles(
    K,
    V,
    LR,
    ZH,
    GS,
    RS,
    ZGS,
    DGQ,
    DWQ,
    DBQ,
    c,
    pid,
    seq,
    start_pos,
    n_chunks,
    cols,
    cmask,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """What the backward walk reads of chunk ``c``."""
    t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
    at = pid * n_chunks + tl.maximum(c, 0)  # c = -1: the prefetch past the first chunk (its rows masked)
    x = _tokens(K, pid, seq, t0, rows, valid, cols, cmask, D)
    v = _tokens(V, pid, seq, t0, rows, valid, cols, cmask, D)
    z_hat = _tokens(ZH, pid, seq, t0, rows, valid, cols, cmask, D)
    g = _tokens(GS, pid, seq, t0, rows, valid, cols, cmask, D)
    dgq = _tokens(DGQ, pid, seq, t0, rows, valid, cols, cmask, D)
    lr = _per_token(LR, pid, seq, t0, rows, valid)
    rstd = tl.load(RS + pid * seq + t0 + rows, mask=valid, other=1.0)
    zg = _per_token(ZGS, pid, seq, t0, rows, valid)
    return x, v, z_hat, g, dgq, lr, rstd, zg, _square(DWQ, at, cols, BD), tl.load(DBQ + at * BD + cols)


@triton.jit
def _update_gradient(dw, db, dgw_end, dgb_end, s_last, closes):
    """The gradient of a chunk's update total ``G_acc + X^T (lr G)`` (and ``b``'s) from the carry:
    ``-s_last dW`` where the chunk closes its mini-batch, else the running sum's own gradient."""
    return closes * (-s_last * dw) + (1.0 - closes) * dgw_end, closes * (-s_last * db) + (1.0 - closes) * dgb_end


@triton.jit
def _bwd_step(
    DWC,
    DBC,
    DGW_IN,
    DGB_IN,
    DGW,
    DGB,
    TS,
    x,
    v,
    z_hat,
    g,
    dgq,
    lr,
    rstd,
    zg,
    dwq,
    dbq,
    dw,
    db,
    ln_w,
    ln_b,
    s_full,
    c,
    pid,
    seq,
    start_pos,
    n_chunks,
    cols,
    cmask,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
    FULL: tl.constexpr,
):
    """Chunk ``c`` of the backward walk: the carry ``dW, db`` at the chunk's end -> at its start.

    Stores the carry it was given (``DWC``, ``DBC``) for ``_bwd_in``. ``FULL``: a whole
    mini-batch; else the general step, which also reads the state out's running-sum gradients
    (the last chunk, if it ends mid-mini-batch) and adds the update's gradient to the state in's
    running sums (the first chunk)."""
    at = pid * n_chunks + c
    _store_square(DWC, dw, at, cols, BD)
    tl.store(DBC + at * BD + cols, db)
    if FULL:
        dt, dt_b = -s_full * dw, -s_full * db
    else:
        t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
        closes = (p + n == MB).to(tl.float32)
        s_last = tl.load(TS + p + n - 1).to(tl.float32)
        last = D * (c == n_chunks - 1)
        dgw_end, dgb_end = _state_matrix(DGW, pid, cols, D, last), _state_vector(DGB, pid, cols, D, last)
        dt, dt_b = _update_gradient(dw, db, dgw_end, dgb_end, s_last, closes)
        first = D * (c == 0)
        at_w, mmask = pid * D * D + cols[:, None] * D + cols[None, :], (cols < first)[:, None] & (cols < first)[None, :]
        tl.store(DGW_IN + at_w, tl.load(DGW_IN + at_w, mask=mmask, other=0.0) + dt, mask=mmask)
        at_b = pid * D + cols
        tl.store(DGB_IN + at_b, tl.load(DGB_IN + at_b, mask=cols < first, other=0.0) + dt_b, mask=cols < first)
    dg = dgq + lr[:, None] * (tl.dot(x, dt, input_precision=PREC) + dt_b[None, :])
    dz, _, _ = _inner_gradient_bwd(dg, x, v, z_hat, rstd, zg, g, ln_w, ln_b, cmask, D)
    dw += dwq + tl.dot(tl.trans(x), dz, input_precision=PREC)
    db += dbq + tl.sum(dz, axis=0)
    return dw, db


@triton.jit
def _bwd_walk(
    K,
    V,
    LR,
    TS,
    LNW,
    LNB,
    ZH,
    GS,
    RS,
    ZGS,
    DGQ,
    DWQ,
    DBQ,  # Q^T dZq and sum dZq per chunk (BH, n_chunks, BD, BD) / (.., BD)
    DWC,
    DBC,  # out: the carry at each chunk's end, same shapes (a buffer of its own: no warp may overwrite
    # a block another has yet to read)
    DW,
    DB,  # in: the gradients of the state out's W, b; out: of the state in's
    DGW,
    DGB,  # the gradients of the state out's running sums (read)
    DGW_IN,
    DGB_IN,  # the gradients of the state in's running sums (the update's term added here)
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    dw = _state_matrix(DW, pid, cols, D, D)
    db = _state_vector(DB, pid, cols, D, D)
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    s_full = tl.load(TS + MB - 1).to(tl.float32)
    c = n_chunks - 1  # the last chunk (it may end mid-mini-batch, and be the first): the general step
    x, v, z_hat, g, dgq, lr, rstd, zg, dwq, dbq = _bwd_tiles(
        K, V, LR, ZH, GS, RS, ZGS, DGQ, DWQ, DBQ, c, pid, seq, start_pos, n_chunks, cols, cmask, D, BD, MB, BLOCK_N
    )
    dw, db = _bwd_step(
        DWC,
        DBC,
        DGW_IN,
        DGB_IN,
        DGW,
        DGB,
        TS,
        x,
        v,
        z_hat,
        g,
        dgq,
        lr,
        rstd,
        zg,
        dwq,
        dbq,
        dw,
        db,
        ln_w,
        ln_b,
        s_full,
        c,
        pid,
        seq,
        start_pos,
        n_chunks,
        cols,
        cmask,
        D,
        BD,
        MB,
        BLOCK_N,
        PREC,
        False,
    )
    # Whole mini-batches, last to first, each chunk's tiles loaded during the step before.
    x, v, z_hat, g, dgq, lr, rstd, zg, dwq, dbq = _bwd_tiles(
        K,
        V,
        LR,
        ZH,
        GS,
        RS,
        ZGS,
        DGQ,
        DWQ,
        DBQ,
        n_chunks - 2,
        pid,
        seq,
        start_pos,
        n_chunks,
        cols,
        cmask,
        D,
        BD,
        MB,
        BLOCK_N,
    )
    for back in range(2, n_chunks):
        c = n_chunks - back
        x_n, v_n, z_hat_n, g_n, dgq_n, lr_n, rstd_n, zg_n, dwq_n, dbq_n = _bwd_tiles(
            K,
            V,
            LR,
            ZH,
            GS,
            RS,
            ZGS,
            DGQ,
            DWQ,
            DBQ,
            c - 1,
            pid,
            seq,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
        )
        dw, db = _bwd_step(
            DWC,
            DBC,
            DGW_IN,
            DGB_IN,
            DGW,
            DGB,
            TS,
            x,
            v,
            z_hat,
            g,
            dgq,
            lr,
            rstd,
            zg,
            dwq,
            dbq,
            dw,
            db,
            ln_w,
            ln_b,
            s_full,
            c,
            pid,
            seq,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
            PREC,
            True,
        )
        x, v, z_hat, g, dgq, lr, rstd, zg, dwq, dbq = x_n, v_n, z_hat_n, g_n, dgq_n, lr_n, rstd_n, zg_n, dwq_n, dbq_n
    if n_chunks > 1:  # the first chunk (it may start mid-mini-batch): the general step; its tiles are loaded
        dw, db = _bwd_step(
            DWC,
            DBC,
            DGW_IN,
            DGB_IN,
            DGW,
            DGB,
            TS,
            x,
            v,
            z_hat,
            g,
            dgq,
            lr,
            rstd,
            zg,
            dwq,
            dbq,
            dw,
            db,
            ln_w,
            ln_b,
            s_full,
            0,
            pid,
            seq,
            start_pos,
            n_chunks,
            cols,
            cmask,
            D,
            BD,
            MB,
            BLOCK_N,
            PREC,
            False,
        )
    _store_state(DW, DB, dw, db, pid, cols, cmask, D)


@triton.jit
def _bwd_in(
    K,
    V,
    LR,
    TS,
    LNW,
    LNB,
    GW0,
    GB0,
    WS,
    ZH,
    GS,
    RS,
    ZGS,
    DGQ,
    DWC,
    DBC,
    DGW,
    DGB,
    DK,
    DV,
    DLR,
    DTS,
    DLN,
    seq,
    heads,
    start_pos,
    n_chunks,
    D: tl.constexpr,
    BD: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_ACC: tl.constexpr,
    PREC: tl.constexpr,
):
    """The input side's backward for chunk ``program_id(0)`` from the carry the walk stored (``DWC``,
    ``DBC``: the gradients of the state at the chunk's end): ``dk``, ``dv``, ``dlr``, the last token
    scale's term, and the inner LayerNorm's weight gradients (added to ``DLN``)."""
    c, pid = tl.program_id(0), tl.program_id(1).to(tl.int64)
    cols = tl.arange(0, BD)
    cmask = cols < D
    at = pid * n_chunks + c
    t0, n, p, rows, valid = chunk_bounds(c, start_pos, seq, MB, BLOCK_N)
    x, v, z_hat, g, dgq, lr, rstd, zg, dw, db = _bwd_tiles(
        K, V, LR, ZH, GS, RS, ZGS, DGQ, DWC, DBC, c, pid, seq, start_pos, n_chunks, cols, cmask, D, BD, MB, BLOCK_N
    )
    ln_w = tl.load(LNW + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    ln_b = tl.load(LNB + (pid % heads) * D + cols, mask=cmask, other=0.0).to(tl.float32)
    closes = (p + n == MB).to(tl.float32)
    s_last = tl.load(TS + p + n - 1).to(tl.float32)
    last = D * (c == n_chunks - 1)
    dt, dt_b = _update_gradient(
        dw, db, _state_matrix(DGW, pid, cols, D, last), _state_vector(DGB, pid, cols, D, last), s_last, closes
    )
    u = tl.dot(x, dt, input_precision=PREC) + dt_b[None, :]  # the gradient of lr * G
    dz, dg_hat, _ = _inner_gradient_bwd(dgq + lr[:, None] * u, x, v, z_hat, rstd, zg, g, ln_w, ln_b, cmask, D)
    dtarget = -dg_hat * ln_w[None, :]
    # g_hat = (z_hat ln_w + ln_b - target) ln_w
    dln_w = tl.sum(dg_hat * (2.0 * z_hat * ln_w[None, :] + ln_b[None, :] - (v - x)), axis=0)
    tl.store(DLN + at * 2 * BD + cols, tl.load(DLN + at * 2 * BD + cols) + dln_w)
    tl.store(
        DLN + at * 2 * BD + BD + cols, tl.load(DLN + at * 2 * BD + BD + cols) + tl.sum(dg_hat * ln_w[None, :], axis=0)
    )
    lr_g = lr[:, None] * g
    dx = tl.dot(dz, tl.trans(_square(WS, at, cols, BD)), input_precision=PREC)
    dx += tl.dot(lr_g, tl.trans(dt), input_precision=PREC) - dtarget
    _store_tokens(DK, dx, pid, seq, t0, rows, valid, cols, cmask, D)
    _store_tokens(DV, dtarget, pid, seq, t0, rows, valid, cols, cmask, D)
    tl.store(DLR + pid * seq + t0 + rows, tl.sum(u * g, axis=1), mask=valid)
    # The last token scale of a closing chunk: W' = W - s_last (G_acc + X^T (lr G)), and b' alike.
    ds_last = tl.sum(tl.sum(lr_g * (tl.dot(x, dw, input_precision=PREC) + db[None, :]), axis=1), axis=0)
    if HAS_ACC:
        first = D * (c == 0)
        gw0, gb0 = _state_matrix(GW0, pid, cols, D, first), _state_vector(GB0, pid, cols, D, first)
        ds_last += tl.sum(tl.sum(dw * gw0, axis=1), axis=0) + tl.sum(db * gb0, axis=0)
    at_s, lands = DTS + pid * seq + t0 + rows, valid & (rows == n - 1)
    tl.store(at_s, tl.load(at_s, mask=lands, other=0.0) - closes * ds_last, mask=lands)


# -- on the host ------------------------------------------------------------------------------------


def _num_warps(widths: tuple[int, ...]) -> int:
    """8 warps (docs/design.md has the sm_90 figures at 2, 4 and 8)."""
    return 8


@dataclass(frozen=True)
class LinearKernels:
    """TTT-Linear's launcher (``triton_common.Launcher``): a walk per pass beside parallel kernels."""

    n_layers: int = 1
    n_pre: int = 1
    prepass = staticmethod(chunk_mix)

    def options(self, widths: tuple[int, ...], mb: int, dtype: torch.dtype, has_acc: bool) -> dict:
        return dict(base_options(widths, mb, dtype), HAS_ACC=has_acc)

    def specs(self, widths: tuple[int, ...], mb: int, dtype: torch.dtype, has_acc: bool) -> list[KernelSpec]:
        """Every kernel a training step and a decode step launch, with the compile-time arguments they get."""
        opts, nw = self.options(widths, mb, dtype, has_acc), _num_warps(widths)
        walk = dict(QUERY=False)
        return [
            KernelSpec("forward walk", _fwd_walk, kernel_constants(_fwd_walk, opts | walk), nw, True),
            KernelSpec("forward output", _fwd_out, kernel_constants(_fwd_out, opts), nw, False),
            KernelSpec("backward output", _bwd_out, kernel_constants(_bwd_out, opts), nw, False),
            KernelSpec("backward walk", _bwd_walk, kernel_constants(_bwd_walk, opts), nw, True),
            KernelSpec("backward input", _bwd_in, kernel_constants(_bwd_in, opts), nw, False),
            KernelSpec("decode step", _fwd_walk, kernel_constants(_fwd_walk, opts | dict(QUERY=True)), nw, True),
        ]

    def launch_forward(self, inputs, state, start_pos, save):
        q, ts = inputs[0], inputs[4]
        bh, seq, dim = q.shape
        mb, heads = ts.shape[0], inputs[5].shape[0]
        n_chunks = -(-(seq + start_pos) // mb)
        f32 = dict(device=q.device, dtype=torch.float32)
        bd = padded(dim)
        opts = self.options((dim, dim), mb, q.dtype, start_pos > 0)
        nw = _num_warps((dim, dim))
        y = torch.empty_like(q)
        out = [t.to(torch.float32, copy=True) for t in state]  # the walk turns the state in into the state out
        fused = len(inputs) == N_INPUTS  # a decode step: no pre-pass, the output inside the walk
        ws, bs = torch.empty(bh, n_chunks, bd, bd, **f32), torch.empty(bh, n_chunks, bd, **f32)
        if fused:
            ws = bs = out[0]  # not written
        scalars = (seq, heads, start_pos, n_chunks)
        _fwd_walk[(bh,)](
            *inputs[:N_INPUTS],
            *out,
            y,
            ws,
            bs,
            *scalars,
            **kernel_constants(_fwd_walk, opts | dict(QUERY=fused)),
            num_warps=nw,
        )
        if not fused:
            _fwd_out[(n_chunks, bh)](
                q,
                inputs[1],
                inputs[2],
                ts,
                inputs[5],
                inputs[6],
                inputs[N_INPUTS],
                state[2],
                state[3],
                ws,
                bs,
                y,
                *scalars,
                **kernel_constants(_fwd_out, opts),
                num_warps=nw,
            )
        return y, out, [ws, bs]  # the same with or without ``save``: the output kernel reads them

    def launch_backward(self, inputs, state, saved, dy, d_state, start_pos):
        q, k, v, lr, ts, ln_w, ln_b, mix = inputs
        ws, bs = saved
        bh, seq, dim = q.shape
        mb, heads = ts.shape[0], ln_w.shape[0]
        n_chunks = -(-(seq + start_pos) // mb)
        bd = padded(dim)
        f32 = dict(device=q.device, dtype=torch.float32)
        opts = self.options((dim, dim), mb, q.dtype, start_pos > 0)
        nw = _num_warps((dim, dim))
        scalars = (seq, heads, start_pos, n_chunks)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlr, dts_tok = torch.empty(bh, seq, **f32), torch.empty(bh, seq, **f32)
        dmix = torch.zeros(mix.shape, **f32)  # the kernels write only their chunks' blocks
        dgq, gs, zh = (torch.empty(bh, seq, dim, **f32) for _ in range(3))
        rs, zgs = torch.empty(bh, seq, **f32), torch.empty(bh, seq, **f32)
        dwq, dbq = torch.empty(bh, n_chunks, bd, bd, **f32), torch.empty(bh, n_chunks, bd, **f32)
        dwc, dbc = torch.empty_like(dwq), torch.empty_like(dbq)
        dln = torch.empty(bh, n_chunks, 2, bd, **f32)
        dw, db, dgw, dgb = d_state  # the state out's gradients; dw, db become the state in's in place
        dgw_in, dgb_in = torch.zeros_like(dgw), torch.zeros_like(dgb)
        _bwd_out[(n_chunks, bh)](
            q,
            k,
            v,
            ts,
            ln_w,
            ln_b,
            mix,
            state[2],
            state[3],
            ws,
            bs,
            dy,
            dq,
            dmix,
            dgq,
            dwq,
            dbq,
            dts_tok,
            dln,
            dgw_in,
            dgb_in,
            gs,
            zh,
            rs,
            zgs,
            *scalars,
            **kernel_constants(_bwd_out, opts),
            num_warps=nw,
        )
        _bwd_walk[(bh,)](
            k,
            v,
            lr,
            ts,
            ln_w,
            ln_b,
            zh,
            gs,
            rs,
            zgs,
            dgq,
            dwq,
            dbq,
            dwc,
            dbc,
            dw,
            db,
            dgw,
            dgb,
            dgw_in,
            dgb_in,
            *scalars,
            **kernel_constants(_bwd_walk, opts),
            num_warps=nw,
        )
        _bwd_in[(n_chunks, bh)](
            k,
            v,
            lr,
            ts,
            ln_w,
            ln_b,
            state[2],
            state[3],
            ws,
            zh,
            gs,
            rs,
            zgs,
            dgq,
            dwc,
            dbc,
            dgw,
            dgb,
            dk,
            dv,
            dlr,
            dts_tok,
            dln,
            *scalars,
            **kernel_constants(_bwd_in, opts),
            num_warps=nw,
        )
        d_state[2].copy_(dgw_in)
        d_state[3].copy_(dgb_in)
        dln = dln.sum(1)[..., :dim]
        return dq, dk, dv, dlr, dts_tok, dln[:, 0], dln[:, 1], dmix


LINEAR = LinearKernels()


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
    recomputes what the forward stores (one more forward walk) instead of keeping it.
    """
    return run_kernel(
        LINEAR,
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
