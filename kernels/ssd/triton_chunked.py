"""SSD (Mamba-2's scan) in Triton: the chunked algorithm of ``chunked.py``, fused, forward and backward.

Same function and signature as ``ssd_chunked``. One program per (batch, head, block of
``BLOCK_P`` head channels) keeps its ``(BLOCK_P, d_state)`` slice of the state in float32
registers and walks the chunks in order; per chunk of ``L`` tokens it computes, with three
``tl.dot``s and one cumulative sum,

* the within-chunk part ``(exp(S_i - S_j) [j <= i] * C_i.B_j) @ (dt x)`` (``S``: cumulative
  log decay ``dt A`` inside the chunk, every exponent <= 0),
* what the entering state adds, ``exp(S_i) C_i H^T``, then the ``D`` skip and the ``silu(z)`` gate,
* the state leaving the chunk, ``exp(S_end) H + (dt x exp(S_end - S))^T B``,

so the sequence is read once and the output written once; nothing of size ``T x d_state`` is
stored. ``dt + dt_bias`` and its softplus are applied in the kernel. Tokens past the end of the
sequence get ``dt = 0`` (decay 1, no input): the final state is that of the last real token.

Backward (``_ssd_backward``): nothing is saved in the forward but its inputs. The backward first
reruns the forward kernel with ``STATES_ONLY`` to write the state entering every chunk (float32,
``batch * heads * n_chunks * headdim * d_state``: 4 bytes per element of ``x`` times
``d_state / L``), then one program per (batch, head, block of head channels) walks the chunks last
to first, carrying ``dH``, the gradient of the state leaving the chunk (from the final state's
gradient, or 0), in float32 registers. Per chunk, with ``dY`` the gradient of the output before
the gate (``dz`` needs that output: recomputed), ``G = (dY (dt x)^T) o decay``:

* ``dC = G B + (exp(S) dY) H``, ``dB = G^T C + (dt x exp(S_end - S)) dH``,
* ``d(dt x) = (C B^T o decay)^T dY + exp(S_end - S) B dH^T``, hence ``dx`` (plus ``D dY``) and
  part of ``ddt``,
* the gradient of the log decays: ``dS`` from every ``exp`` above (``_log_decay_grad``), reverse
  cumulative sum, times ``A`` into ``ddt`` and times ``dt`` into ``dA``; then the softplus's slope,
* ``dH <- exp(S_end) dH + (exp(S) dY)^T C``: at the end the initial state's gradient.

Sums over head channels (and over a group's heads for ``B``, ``C``) are float32 partials, one
slice per program, reduced by PyTorch: deterministic, and ``dB``, ``dC`` take
``n_pblocks * batch * T * heads * d_state`` floats each meanwhile. The backward has its own chunk
and channel block (``MAX_CHUNK_BWD``, ``ssd_blocks``): it holds twice the forward's state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixbench_kernels.ssd.chunked import DEFAULT_CHUNK_SIZE

_TORCH_TO_DOT = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# The kernel's longest chunk per input dtype. On sm_90 (``benchmarks/mamba_kernels_resources.py``,
# headdim 64, d_state 128, Triton 3.9): 16-bit inputs at 64 use 255 registers, 212 B of spills, 56 KB
# of shared memory (at 32: 233 registers, no spills, 32 KB); float32 at 32 uses 124 KB and 120 B of
# spills (at 64: 210 KB and 860 B; at 128 over the 227 KB a block may have).
MAX_CHUNK = {torch.float32: 32, torch.float16: 64, torch.bfloat16: 64}
# The backward's chunk: its own, as it recomputes the entry states at that length (``ssd_blocks``).
MAX_CHUNK_BWD = {torch.float32: 16, torch.float16: 16, torch.bfloat16: 16}


@triton.jit
def softplus(v):
    """``log(1 + exp(v))`` as torch computes it (linear above 20), with ``log1p`` accurate near 0.

    ``log1p(u) = log(w) * u / (w - 1)`` with ``w = 1 + u`` rounded (Goldberg's trick): exact to
    float32 rounding even where ``1 + u`` loses ``u``'s low bits, which ``tl.log(1 + u)`` does not.
    """
    u = tl.exp(tl.minimum(v, 20.0))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(v > 20.0, v, log1p)


@triton.jit
def _chunk_dt(DT, DT_BIAS, b, h, t, t_ok, sdt_b, sdt_t, sdt_h, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A chunk's ``dt`` after bias and softplus (0 past the end of the sequence) and ``d dt / d raw``
    (the softplus's slope, a sigmoid; 1 without softplus): one reading of dt for forward and backward."""
    raw = tl.load(DT + b * sdt_b + t * sdt_t + h * sdt_h, mask=t_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(DT_BIAS + h).to(tl.float32)
    if SOFTPLUS:
        dt, slope = softplus(raw), tl.sigmoid(raw)
    else:
        dt, slope = raw, raw * 0.0 + 1.0
    return tl.where(t_ok, dt, 0.0), slope


@triton.jit
def _ssd_forward(
    X,
    DT,
    DT_BIAS,
    A,
    B,
    C,
    D,
    Z,
    H0,
    Y,
    HT,
    HS,
    T,
    heads,
    per_group,
    headdim,
    d_state,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_g,
    sb_n,
    sc_b,
    sc_t,
    sc_g,
    sc_n,
    sz_b,
    sz_t,
    sz_h,
    sz_p,
    sy_b,
    sy_t,
    sy_h,
    sy_p,
    sd_h,
    sd_p,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr,
    STATES_ONLY: tl.constexpr,
    DOT: tl.constexpr,
    L: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """``Y`` and the final state ``HT``; or, with ``STATES_ONLY`` (the backward's recompute), only the
    state entering each chunk, into ``HS (batch, heads, n_chunks, headdim, d_state)`` float32."""
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    g = h // per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, L)
    p_ok, n_ok = p < headdim, n < d_state
    a = tl.load(A + h).to(tl.float32)
    slice_offs = p[:, None] * d_state + n[None, :]
    state_mask = p_ok[:, None] & n_ok[None, :]
    if HAS_H0:
        H = tl.load(H0 + bh * headdim * d_state + slice_offs, mask=state_mask, other=0.0)
    else:
        H = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D + h * sd_h + p * sd_p, mask=p_ok, other=0.0).to(tl.float32)
    causal = rows[:, None] >= rows[None, :]
    n_chunks = tl.cdiv(T, L)
    for c in range(0, n_chunks):
        t = c * L + rows
        t_ok = t < T
        dt, _ = _chunk_dt(DT, DT_BIAS, b, h, t, t_ok, sdt_b, sdt_t, sdt_h, HAS_BIAS, SOFTPLUS)
        S = tl.cumsum(dt * a, axis=0)  # (L,): log decay from the chunk start, non-increasing
        S_end = tl.sum(dt * a, axis=0)
        io_mask = t_ok[:, None] & p_ok[None, :]
        x = tl.load(X + b * sx_b + t[:, None] * sx_t + h * sx_h + p[None, :] * sx_p, mask=io_mask, other=0.0)
        x = x.to(tl.float32)
        bc_mask = t_ok[:, None] & n_ok[None, :]
        Bm = tl.load(B + b * sb_b + t[:, None] * sb_t + g * sb_g + n[None, :] * sb_n, mask=bc_mask, other=0.0)
        Bm = Bm.to(DOT)
        xdt = x * dt[:, None]
        if STATES_ONLY:
            tl.store(HS + (bh.to(tl.int64) * n_chunks + c) * headdim * d_state + slice_offs, H, mask=state_mask)
        else:
            Cm = tl.load(C + b * sc_b + t[:, None] * sc_t + g * sc_g + n[None, :] * sc_n, mask=bc_mask, other=0.0)
            Cm = Cm.to(DOT)
            # within the chunk: (L o C B^T) @ (dt x); exp of -inf above the diagonal is 0
            decay = tl.exp(tl.where(causal, S[:, None] - S[None, :], float("-inf")))
            scores = tl.dot(Cm, tl.trans(Bm)) * decay
            y = tl.dot(scores.to(DOT), xdt.to(DOT))
            # the entering state, read by C and decayed to each position
            y += tl.dot(Cm, tl.trans(H).to(DOT)) * tl.exp(S)[:, None]
            if HAS_D:
                y += x * skip[None, :]
            if HAS_Z:
                zv = tl.load(Z + b * sz_b + t[:, None] * sz_t + h * sz_h + p[None, :] * sz_p, mask=io_mask, other=0.0)
                zv = zv.to(tl.float32)
                y = y * zv * tl.sigmoid(zv)
            tl.store(
                Y + b * sy_b + t[:, None] * sy_t + h * sy_h + p[None, :] * sy_p, y.to(Y.dtype.element_ty), mask=io_mask
            )
        # the state leaving the chunk
        to_end = xdt * tl.exp(S_end - S)[:, None]
        H = H * tl.exp(S_end) + tl.dot(tl.trans(to_end.to(DOT)), Bm)
    if not STATES_ONLY:
        tl.store(HT + bh * headdim * d_state + slice_offs, H, mask=state_mask)


@triton.jit
def _log_decay_grad(M, dY, CH, exp_S, to_end, BdH, dH_H, S_end, rows, L: tl.constexpr):
    """``dl = d loss / d (dt a)`` per token of a chunk, from ``dS = d loss / d S`` (``S = cumsum(dt a)``):
    ``dl = reverse cumsum(dS)``. ``dS_i`` collects the within-chunk decays ``exp(S_i - S_j)``
    (row sums minus column sums of ``M = G o C B^T o decay``), the entry state's ``exp(S_i)``, and
    the leaving state's ``exp(S_end - S_j)`` (``-u_j``, and ``+sum u`` at ``S_end``) and ``exp(S_end)``."""
    u = tl.sum(to_end * BdH, axis=1)
    dS = tl.sum(M, axis=1) - tl.sum(M, axis=0) + exp_S * tl.sum(dY * CH, axis=1) - u
    dS += tl.where(rows == L - 1, tl.exp(S_end) * dH_H + tl.sum(u, axis=0), 0.0)
    return tl.cumsum(dS, axis=0, reverse=True)


@triton.jit
def _ssd_backward(
    X,
    DT,
    DT_BIAS,
    A,
    B,
    C,
    D,
    Z,
    HS,
    DY,
    DHT,
    DX,
    DZ,
    DDT,
    DA,
    DB,
    DC,
    DD,
    DH0,
    T,
    batch,
    heads,
    per_group,
    headdim,
    d_state,
    sx_b,
    sx_t,
    sx_h,
    sx_p,
    sdt_b,
    sdt_t,
    sdt_h,
    sb_b,
    sb_t,
    sb_g,
    sb_n,
    sc_b,
    sc_t,
    sc_g,
    sc_n,
    sz_b,
    sz_t,
    sz_h,
    sz_p,
    sy_b,
    sy_t,
    sy_h,
    sy_p,
    sg_b,
    sg_t,
    sg_h,
    sg_p,
    sd_h,
    sd_p,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DHT: tl.constexpr,
    DOT: tl.constexpr,
    L: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Every input gradient, walking the chunks last to first with ``dH``, the gradient of the state
    entering the next chunk (from ``DHT`` or 0), in float32 registers. ``HS``: the entry states of
    ``_ssd_forward(STATES_ONLY)``. ``DX, DZ`` share the strides ``sg_*``, ``DY`` has ``sy_*``. Sums over
    head channels go to float32 partials, one slice per program, reduced on the host:
    ``DDT (n_pblocks, batch, T, heads)`` (already through the softplus), ``DB, DC (n_pblocks, batch,
    T, heads, d_state)``, ``DA (n_pblocks, batch, heads)``, ``DD (batch, heads, headdim)``; and
    ``DH0 (batch, heads, headdim, d_state)``."""
    bh = tl.program_id(0).to(tl.int64)
    pb = tl.program_id(1)
    b, h = bh // heads, bh % heads
    g = h // per_group
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, L)
    p_ok, n_ok = p < headdim, n < d_state
    a = tl.load(A + h).to(tl.float32)
    slice_offs = p[:, None] * d_state + n[None, :]
    state_mask = p_ok[:, None] & n_ok[None, :]
    if HAS_DHT:
        dH = tl.load(DHT + bh * headdim * d_state + slice_offs, mask=state_mask, other=0.0)
    else:
        dH = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if HAS_D:
        skip = tl.load(D + h * sd_h + p * sd_p, mask=p_ok, other=0.0).to(tl.float32)
        dD = tl.zeros((BLOCK_P,), dtype=tl.float32)
    dA = 0.0
    causal = rows[:, None] >= rows[None, :]
    n_chunks = tl.cdiv(T, L)
    partial = pb * batch + b  # this program's slice of the partial sums
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        t = c * L + rows
        t_ok = t < T
        dt, slope = _chunk_dt(DT, DT_BIAS, b, h, t, t_ok, sdt_b, sdt_t, sdt_h, HAS_BIAS, SOFTPLUS)
        S = tl.cumsum(dt * a, axis=0)
        S_end = tl.sum(dt * a, axis=0)
        exp_S, to_end_decay = tl.exp(S), tl.exp(S_end - S)
        io_mask = t_ok[:, None] & p_ok[None, :]
        bc_mask = t_ok[:, None] & n_ok[None, :]
        x = tl.load(X + b * sx_b + t[:, None] * sx_t + h * sx_h + p[None, :] * sx_p, mask=io_mask, other=0.0)
        x = x.to(tl.float32)
        Bm = tl.load(B + b * sb_b + t[:, None] * sb_t + g * sb_g + n[None, :] * sb_n, mask=bc_mask, other=0.0)
        Cm = tl.load(C + b * sc_b + t[:, None] * sc_t + g * sc_g + n[None, :] * sc_n, mask=bc_mask, other=0.0)
        Bm, Cm = Bm.to(DOT), Cm.to(DOT)
        dY = tl.load(DY + b * sy_b + t[:, None] * sy_t + h * sy_h + p[None, :] * sy_p, mask=io_mask, other=0.0)
        dY = dY.to(tl.float32)
        xdt = x * dt[:, None]
        to_end = xdt * to_end_decay[:, None]
        decay = tl.exp(tl.where(causal, S[:, None] - S[None, :], float("-inf")))
        scores = tl.dot(Cm, tl.trans(Bm)) * decay  # (C B^T o decay)
        # Each (BLOCK_P, BLOCK_N) tile's uses are grouped so that few are live at once (registers):
        # the entry state's first ...
        H = tl.load(HS + (bh * n_chunks + c) * headdim * d_state + slice_offs, mask=state_mask, other=0.0)
        CH = tl.dot(Cm, tl.trans(H).to(DOT))  # C H^T, before its decay exp(S)
        dH_H = tl.sum(dH * H)
        if HAS_Z:  # the gate needs the output before it: recompute it
            y = tl.dot(scores.to(DOT), xdt.to(DOT)) + CH * exp_S[:, None]
            if HAS_D:
                y += x * skip[None, :]
            zv = tl.load(Z + b * sz_b + t[:, None] * sz_t + h * sz_h + p[None, :] * sz_p, mask=io_mask, other=0.0)
            zv = zv.to(tl.float32)
            sig = tl.sigmoid(zv)
            dz = dY * y * sig * (1.0 + zv * (1.0 - sig))
            tl.store(
                DZ + b * sg_b + t[:, None] * sg_t + h * sg_h + p[None, :] * sg_p,
                dz.to(DZ.dtype.element_ty),
                mask=io_mask,
            )
            dY = dY * zv * sig  # now the gradient of the output before the gate
        dYe = (dY * exp_S[:, None]).to(DOT)  # what reads the entry state
        dC = tl.dot(dYe, H.to(DOT))
        # ... then the gradient of the leaving state, which becomes that of the entering one
        dHc = dH.to(DOT)
        dB = tl.dot(to_end.to(DOT), dHc)
        BdH = tl.dot(Bm, tl.trans(dHc))  # B dH^T: what the leaving state sends back to each token
        dH = dH * tl.exp(S_end) + tl.dot(tl.trans(dYe), Cm).to(tl.float32)
        # within the chunk
        dYc = dY.to(DOT)
        d_scores = tl.dot(dYc, tl.trans(xdt.to(DOT)))  # dY xdt^T
        G = (d_scores * decay).to(DOT)  # d loss / d (C B^T)
        dC += tl.dot(G, Bm)
        dB += tl.dot(tl.trans(G), Cm)
        dxdt = tl.dot(tl.trans(scores).to(DOT), dYc) + to_end_decay[:, None] * BdH
        dl = _log_decay_grad(d_scores * scores, dY, CH, exp_S, to_end, BdH, dH_H, S_end, rows, L)
        dA += tl.sum(dl * dt, axis=0)
        ddt = tl.where(t_ok, (tl.sum(dxdt * x, axis=1) + dl * a) * slope, 0.0)
        tl.store(DDT + (partial * T + t) * heads + h, ddt, mask=t_ok)
        dx = dxdt * dt[:, None]
        if HAS_D:
            dx += dY * skip[None, :]
            dD += tl.sum(dY * x, axis=0)
        tl.store(
            DX + b * sg_b + t[:, None] * sg_t + h * sg_h + p[None, :] * sg_p, dx.to(DX.dtype.element_ty), mask=io_mask
        )
        bc_offs = ((partial * T + t[:, None]) * heads + h) * d_state + n[None, :]
        tl.store(DB + bc_offs, dB, mask=bc_mask)
        tl.store(DC + bc_offs, dC, mask=bc_mask)
    tl.store(DH0 + bh * headdim * d_state + slice_offs, dH, mask=state_mask)
    tl.store(DA + partial * heads + h, dA)
    if HAS_D:
        tl.store(DD + bh * headdim + p, dD, mask=p_ok)


def _block(size: int, low: int = 16) -> int:
    """The power of two >= ``size`` and >= ``low`` (``tl.dot`` needs every dim >= 16)."""
    return max(low, triton.next_power_of_2(size))


def chunk_length(chunk_size: int, seq_len: int, cap: int) -> int:
    """The kernel's chunk: ``chunk_size`` (at most the sequence) rounded up to a power of two >= 16, capped."""
    return min(_block(min(chunk_size, max(seq_len, 1))), cap)


def ssd_blocks(headdim: int, d_state: int, block_p: int | None = None, backward: bool = False) -> tuple[int, int, int]:
    """``(BLOCK_P, BLOCK_N, num_warps)``: head channels per program, the padded state width, and 8
    warps once a program's state slice passes 4096 floats (at headdim 64, d_state 128: 255 registers
    per thread on sm_90, spills per ``MAX_CHUNK``, ``benchmarks/mamba_kernels_resources.py``).
    The forward takes up to 64 channels. The backward holds two state slices (the entry state and
    the gradient carried back) besides the chunk's tiles: at most 32 channels, 8 warps from 2048
    floats; at headdim 64, d_state 128, chunk 16 that spills 168 B per thread (bf16) or 396 B
    (float32) on sm_90, against 580 / 852 B with 64 channels and 1272 B at chunk 32 (bf16). The
    price: two channel blocks per head at headdim 64, so twice the ``dB``, ``dC`` partials."""
    block_p = block_p or min(_block(headdim), 32 if backward else 64)
    block_n = _block(d_state)
    return block_p, block_n, 4 if block_p * block_n <= (2048 if backward else 4096) else 8


def _per_head(A: torch.Tensor, D: torch.Tensor | None, dt_bias: torch.Tensor | None):
    """``A``, ``dt_bias`` and ``D`` as the kernels read them (float32), and ``D``'s strides (per
    head or per channel)."""
    skip = None if D is None else D.to(torch.float32)
    sd = (0, 0) if skip is None else (skip.stride(0), skip.stride(1) if skip.dim() == 2 else 0)
    bias = None if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    return A.to(torch.float32).contiguous(), bias, skip, sd


def _run_forward(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    initial_state: torch.Tensor | None,
    L: int,
    states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One launch of ``_ssd_forward`` with chunks of ``L``: ``(out in x's dtype, final state float32
    (batch, heads, headdim, d_state))``; or, given ``states`` ``(batch, heads, n_chunks, headdim,
    d_state)`` float32, only the state entering each chunk written there (no output)."""
    batch, seq_len, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    block_p, block_n, num_warps = ssd_blocks(headdim, d_state)
    states_only = states is not None
    out = states if states_only else torch.empty_like(x)
    final = states if states_only else torch.empty(batch, heads, headdim, d_state, device=x.device, dtype=torch.float32)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    A32, bias, skip, sd = _per_head(A, D, dt_bias)
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    ys = (0, 0, 0, 0) if states_only else out.stride()
    grid = (batch * heads, triton.cdiv(headdim, block_p))
    _ssd_forward[grid](
        x,
        dt,
        bias,
        A32,
        B,
        C,
        skip,
        z,
        h0,
        out,
        final,
        states,
        seq_len,
        heads,
        heads // groups,
        headdim,
        d_state,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        *zs,
        *ys,
        *sd,
        HAS_BIAS=bias is not None,
        SOFTPLUS=dt_softplus,
        HAS_D=skip is not None,
        HAS_Z=z is not None,
        HAS_H0=h0 is not None,
        STATES_ONLY=states_only,
        DOT=_TORCH_TO_DOT[x.dtype],
        L=L,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    return None if states_only else (out, final)


def ssd_forward_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    initial_state: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch of the kernel: ``(out in x's dtype, final state float32 (batch, heads, headdim, d_state))``."""
    L = chunk_length(chunk_size, x.shape[1], MAX_CHUNK[x.dtype])
    return _run_forward(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, L)


def ssd_backward_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    initial_state: torch.Tensor | None,
    chunk_size: int,
    d_out: torch.Tensor | None,
    d_final: torch.Tensor | None,
) -> tuple[torch.Tensor | None, ...]:
    """The gradients of ``(x, dt, A, B, C, D, z, dt_bias, initial_state)`` (``None`` for absent inputs),
    each in its input's dtype, given those of the output and the final state (``None``: zero).

    Two launches: ``_ssd_forward(STATES_ONLY)`` recomputes the state entering every chunk (float32,
    ``batch * heads * n_chunks * headdim * d_state``), then ``_ssd_backward``; the float32 partial
    sums it writes (``dB``, ``dC``: ``n_pblocks * batch * T * heads * d_state`` each) are reduced here."""
    batch, seq_len, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    L = chunk_length(chunk_size, seq_len, MAX_CHUNK_BWD[x.dtype])
    block_p, block_n, num_warps = ssd_blocks(headdim, d_state, backward=True)
    n_pblocks = triton.cdiv(headdim, block_p)
    f32 = dict(device=x.device, dtype=torch.float32)
    states = torch.empty(batch, heads, triton.cdiv(seq_len, L), headdim, d_state, **f32)
    _run_forward(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, L, states)
    d_out = torch.zeros_like(x) if d_out is None else d_out
    d_final = None if d_final is None else d_final.to(torch.float32).contiguous()
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dz = None if z is None else torch.empty(x.shape, device=x.device, dtype=z.dtype)
    ddt = torch.empty(n_pblocks, batch, seq_len, heads, **f32)
    dA = torch.empty(n_pblocks, batch, heads, **f32)
    dB = torch.empty(n_pblocks, batch, seq_len, heads, d_state, **f32)
    dC = torch.empty_like(dB)
    dD = None if D is None else torch.empty(batch, heads, headdim, **f32)
    dh0 = torch.empty(batch, heads, headdim, d_state, **f32)
    A32, bias, skip, sd = _per_head(A, D, dt_bias)
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    grid = (batch * heads, n_pblocks)
    _ssd_backward[grid](
        x,
        dt,
        bias,
        A32,
        B,
        C,
        skip,
        z,
        states,
        d_out,
        d_final,
        dx,
        dz,
        ddt,
        dA,
        dB,
        dC,
        dD,
        dh0,
        seq_len,
        batch,
        heads,
        heads // groups,
        headdim,
        d_state,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        *zs,
        *d_out.stride(),
        *dx.stride(),
        *sd,
        HAS_BIAS=bias is not None,
        SOFTPLUS=dt_softplus,
        HAS_D=skip is not None,
        HAS_Z=z is not None,
        HAS_DHT=d_final is not None,
        DOT=_TORCH_TO_DOT[x.dtype],
        L=L,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        num_warps=num_warps,
    )
    ddt = ddt.sum(0)  # the gradient of the raw dt: the kernel applied the softplus's slope

    def group_sum(
        partials: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:  # over channel blocks and a group's heads
        return partials.view(n_pblocks, batch, seq_len, groups, heads // groups, d_state).sum((0, 4)).to(like.dtype)

    return (
        dx,
        ddt.to(dt.dtype),
        dA.sum((0, 1)).to(A.dtype),
        group_sum(dB, B),
        group_sum(dC, C),
        None if D is None else _skip_grad(dD, D),
        dz,
        None if dt_bias is None else ddt.sum((0, 1)).to(dt_bias.dtype),
        None if initial_state is None else dh0.to(initial_state.dtype),
    )


def _skip_grad(partials: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """``D``'s gradient from the per-(batch, head, channel) sums: per channel, or per head summed over channels."""
    per_channel = partials.sum(0)
    return (per_channel.sum(-1) if D.dim() == 1 else per_channel).to(D.dtype)


class _SSDTriton(torch.autograd.Function):
    """Triton forward and backward; only the inputs are saved (the backward recomputes the chunk states)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, chunk_size):
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state)
        ctx.dt_softplus, ctx.chunk_size = dt_softplus, chunk_size
        ctx.set_materialize_grads(False)  # an unused output's gradient comes back as None
        return ssd_forward_triton(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, chunk_size)

    @staticmethod
    def backward(ctx, d_out, d_final):
        grads = ssd_backward_triton(
            *ctx.saved_tensors[:8], ctx.dt_softplus, ctx.saved_tensors[8], ctx.chunk_size, d_out, d_final
        )
        return (*(g if need else None for g, need in zip(grads, ctx.needs_input_grad)), None, None)


def ssd_chunked_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """SSD through the Triton kernel; returns ``out`` or ``(out, final_state)`` like ``ssd_chunked``.

    Inputs in float32, bfloat16 or float16 (the output keeps ``x``'s dtype); the state is float32.
    The kernel's chunk is ``chunk_size`` rounded up to a power of two >= 16 (``tl.dot``'s minimum)
    and capped by ``MAX_CHUNK``; the chunking changes the rounding, not the function.
    """
    check_ssd_inputs(x, dt, A, B, C, chunk_size)
    out, final = _SSDTriton.apply(x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, chunk_size)
    return (out, final) if return_final_state else out


def check_ssd_inputs(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int
) -> None:
    """One line naming what is wrong, before any kernel launches."""
    if x.dtype not in _TORCH_TO_DOT:
        raise ValueError(f"ssd_chunked_triton: x must be float32, bfloat16 or float16, got {x.dtype}")
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked_triton: chunk_size must be positive, got {chunk_size}")
    if x.dim() != 4 or dt.shape != x.shape[:3] or A.shape != x.shape[2:3]:
        raise ValueError(
            f"ssd_chunked_triton: expected x (batch, T, heads, headdim), dt (batch, T, heads), A (heads,); "
            f"got x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}"
        )
    if B.shape != C.shape or B.dim() != 4 or B.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"ssd_chunked_triton: expected B and C (batch, T, groups, d_state), "
            f"got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    if x.shape[2] % B.shape[2]:
        raise ValueError(f"ssd_chunked_triton: {x.shape[2]} heads cannot be split evenly over {B.shape[2]} groups")
