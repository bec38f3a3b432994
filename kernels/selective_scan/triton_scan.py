"""The Mamba (v1) selective scan in Triton: forward and backward kernels, and their autograd glue.

One program per ``(batch, block of BLOCK_D channels)`` walks the sequence in chunks of
``BLOCK_T`` steps, carrying the ``(BLOCK_D, d_state)`` state in float32 registers from chunk to
chunk (as mamba-ssm's CUDA kernel gives each block a channel range and walks time). Inside a
chunk the recurrence ``h_t = a_t h_{t-1} + b_t`` (``a_t = exp(delta_t A)``, ``b_t = delta_t u_t
B_t``) over the ``(BLOCK_D, d_state, BLOCK_T)`` tile is one ``tl.associative_scan`` with the
combine ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``: it yields the chunk's decay products
``P_t`` and its states from zero ``S_t``, so ``h_t = S_t + P_t h_entry``. Every factor is a
decay <= 1, so nothing overflows however strong the decay.

The forward saves the state entering every chunk (``(batch, n_chunks, d, d_state)`` float32,
only when a gradient is needed). The backward walks the chunks last to first: it recomputes the
chunk's states from its saved entry, then the adjoint of the states by the same scan run
backwards in time, ``dh_t = a_{t+1} dh_{t+1} + C_t gy_t`` (``a_{t+1}`` read one step ahead,
and 1 at the chunk's end where the adjoint ``G`` of the next chunk's entry state comes in).
From ``h_t`` and ``dh_t``: ``dC_t = sum_d h_t gy_t``, ``d(delta u)_t = sum_n dh_t B_t``,
``dB_t = sum_d dh_t delta_t u_t``, and through the decay ``d log a_t = dh_t a_t h_{t-1} =
dh_t (h_t - b_t)`` gives ``ddelta`` (times ``A``) and ``dA`` (times ``delta``). ``dB`` and
``dC`` sum over channel blocks with atomic adds; ``dA``, ``dD`` and the delta bias's gradient
are written per batch row and summed on the host.

The ``D`` skip, the ``silu(z)`` gate, the delta bias and the softplus are fused into both
kernels; inputs may be bf16, fp16 or float32 with any strides, and everything is computed in
float32. ``mixbench_kernels.selective_scan.triton_backend.selective_scan_triton`` is the entry point (it
checks the inputs first); this module imports triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2_E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x * LOG2_E)


@triton.jit
def _combine(a1, b1, a2, b2):
    """Compose two steps of ``h <- a h + b``: first ``(a1, b1)``, then ``(a2, b2)``."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    """``log(1 + exp(x))`` as torch computes it in float32 (linear above 20, ``exp`` below -15)."""
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _tile(X, b, rows, t, mask, s_b, s_r, s_t):
    """The ``(rows, steps)`` tile of a ``(batch, rows, T)`` tensor, as stored (zero where masked)."""
    return tl.load(X + b * s_b + rows[:, None] * s_r + t[None, :] * s_t, mask=mask, other=0.0)


@triton.jit
def _load_chunk(
    U,
    DELTA,
    B,
    C,
    Z,
    b,
    t,
    T,
    offs_d,
    offs_n,
    mask_d,
    mask_n,
    su_b,
    su_d,
    su_t,
    sd_b,
    sd_d,
    sd_t,
    sB_b,
    sB_n,
    sB_t,
    sC_b,
    sC_n,
    sC_t,
    sz_b,
    sz_d,
    sz_t,
    HAS_Z: tl.constexpr,
):
    """The raw tiles of ``delta, u, B, C, z`` at steps ``t``. No arithmetic on them here: the loops
    issue these loads one chunk ahead, so they are in flight while the current chunk computes."""
    mask_t = (t >= 0) & (t < T)
    mask_dt = mask_d[:, None] & mask_t[None, :]
    mask_nt = mask_n[:, None] & mask_t[None, :]
    delta = _tile(DELTA, b, offs_d, t, mask_dt, sd_b, sd_d, sd_t)
    u = _tile(U, b, offs_d, t, mask_dt, su_b, su_d, su_t)
    Bt = _tile(B, b, offs_n, t, mask_nt, sB_b, sB_n, sB_t)
    Ct = _tile(C, b, offs_n, t, mask_nt, sC_b, sC_n, sC_t)
    if HAS_Z:
        z = _tile(Z, b, offs_d, t, mask_dt, sz_b, sz_d, sz_t)
    else:
        z = u  # unused
    return delta, u, Bt, Ct, z


@triton.jit
def _delta(x, bias, mask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """``delta`` after bias and softplus, zero where masked; and ``d delta / d raw`` (the sigmoid)."""
    x = x.to(tl.float32)
    if HAS_BIAS:
        x += bias[:, None]
    if SOFTPLUS:
        delta, slope = _softplus(x), tl.sigmoid(x)
    else:
        delta, slope = x, x * 0.0 + 1.0
    return tl.where(mask, delta, 0.0), slope


@triton.jit
def _chunk_states(delta_raw, u, Bt, bias, A2, h_in, mask_dt, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """A chunk's ``delta`` (and its slope), decays ``a``, drives ``b`` and states ``h_t``
    (``(BLOCK_D, BLOCK_N, BLOCK_T)``) from the entry state ``h_in``."""
    delta, slope = _delta(delta_raw, bias, mask_dt, HAS_BIAS, SOFTPLUS)
    a = tl.exp2(delta[:, None, :] * A2[:, :, None])
    drive = (delta * u)[:, None, :] * Bt[None, :, :]
    P, S = tl.associative_scan((a, drive), 2, _combine)
    return delta, slope, a, drive, S + P * h_in[:, :, None]


@triton.jit
def _column(x, offs_t, j):
    """``x[:, :, j]`` of a ``(BLOCK_D, BLOCK_N, BLOCK_T)`` tile (a masked sum: registers are not indexable)."""
    return tl.sum(tl.where(offs_t[None, None, :] == j, x, 0.0), axis=2)


@triton.jit
def _selective_scan_fwd(
    U,
    DELTA,
    A,
    B,
    C,
    D,
    Z,
    DBIAS,
    H0,
    OUT,
    HLAST,
    HSAVE,
    T,
    d,
    n,
    n_chunks,
    su_b,
    su_d,
    su_t,
    sd_b,
    sd_d,
    sd_t,
    sB_b,
    sB_n,
    sB_t,
    sC_b,
    sC_n,
    sC_t,
    sz_b,
    sz_d,
    sz_t,
    so_b,
    so_d,
    so_t,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr,
    SAVE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``OUT = (C . h + D u) * silu(z)``; ``HLAST`` the final state; ``HSAVE`` each chunk's entry state."""
    b = tl.program_id(0).to(tl.int64)  # batch offsets pass 2^31 elements at 1.3b widths and T = 32k
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_d, mask_n = offs_d < d, offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    state = b * d * n + offs_d[:, None] * n + offs_n[None, :]  # (batch, d, n) contiguous
    A2 = tl.load(A + offs_d[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0) * LOG2_E
    if HAS_H0:
        h = tl.load(H0 + state, mask=mask_dn, other=0.0)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    Dv = tl.load(D + offs_d, mask=mask_d & HAS_D, other=0.0)
    bias = tl.load(DBIAS + offs_d, mask=mask_d & HAS_BIAS, other=0.0)
    strides = (su_b, su_d, su_t, sd_b, sd_d, sd_t, sB_b, sB_n, sB_t, sC_b, sC_n, sC_t, sz_b, sz_d, sz_t)
    delta_raw, u_raw, Bt, Ct, z = _load_chunk(
        U, DELTA, B, C, Z, b, offs_t, T, offs_d, offs_n, mask_d, mask_n, *strides, HAS_Z
    )
    for c in range(n_chunks):
        t = c * BLOCK_T + offs_t
        mask_dt = mask_d[:, None] & (t < T)[None, :]
        nxt = _load_chunk(U, DELTA, B, C, Z, b, t + BLOCK_T, T, offs_d, offs_n, mask_d, mask_n, *strides, HAS_Z)
        if SAVE:
            tl.store(HSAVE + (b * n_chunks + c) * d * n + offs_d[:, None] * n + offs_n[None, :], h, mask=mask_dn)
        u = u_raw.to(tl.float32)
        delta, slope, a, drive, hs = _chunk_states(
            delta_raw, u, Bt.to(tl.float32), bias, A2, h, mask_dt, HAS_BIAS, SOFTPLUS
        )
        y = tl.sum(hs * Ct.to(tl.float32)[None, :, :], axis=1)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zf = z.to(tl.float32)
            y *= zf * tl.sigmoid(zf)
        tl.store(OUT + b * so_b + offs_d[:, None] * so_d + t[None, :] * so_t, y, mask=mask_dt)
        h = _column(hs, offs_t, BLOCK_T - 1)  # padded steps (delta = 0) carried the last state along
        delta_raw, u_raw, Bt, Ct, z = nxt
    tl.store(HLAST + state, h, mask=mask_dn)


@triton.jit
def _load_chunk_bwd(
    U,
    DELTA,
    B,
    C,
    Z,
    DOUT,
    HSAVE,
    b,
    c,
    T,
    n_chunks,
    d,
    n,
    offs_d,
    offs_n,
    offs_t,
    mask_d,
    mask_n,
    mask_dn,
    su_b,
    su_d,
    su_t,
    sd_b,
    sd_d,
    sd_t,
    sB_b,
    sB_n,
    sB_t,
    sC_b,
    sC_n,
    sC_t,
    sz_b,
    sz_d,
    sz_t,
    so_b,
    so_d,
    so_t,
    HAS_Z: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """What the backward reads of chunk ``c`` (raw, see ``_load_chunk``): its forward tiles, the
    output's gradient, ``delta`` one step ahead (masked at the chunk's last step), its entry state."""
    t = c * BLOCK_T + offs_t
    delta, u, Bt, Ct, z = _load_chunk(
        U,
        DELTA,
        B,
        C,
        Z,
        b,
        t,
        T,
        offs_d,
        offs_n,
        mask_d,
        mask_n,
        su_b,
        su_d,
        su_t,
        sd_b,
        sd_d,
        sd_t,
        sB_b,
        sB_n,
        sB_t,
        sC_b,
        sC_n,
        sC_t,
        sz_b,
        sz_d,
        sz_t,
        HAS_Z,
    )
    valid = (t >= 0) & (t < T)
    gy = _tile(DOUT, b, offs_d, t, mask_d[:, None] & valid[None, :], so_b, so_d, so_t)
    ahead = mask_d[:, None] & ((offs_t < BLOCK_T - 1) & (t >= 0) & (t + 1 < T))[None, :]
    delta_next = _tile(DELTA, b, offs_d, t + 1, ahead, sd_b, sd_d, sd_t)
    entry = b * n_chunks + tl.maximum(c, 0)  # c = -1: the prefetch past the start reads chunk 0 again
    h_in = tl.load(HSAVE + entry * d * n + offs_d[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0)
    return delta, u, Bt, Ct, z, gy, delta_next, h_in


@triton.jit
def _selective_scan_bwd(
    U,
    DELTA,
    A,
    B,
    C,
    D,
    Z,
    DBIAS,
    HSAVE,
    DOUT,
    DHLAST,
    DU,
    DDELTA,
    DA,
    DB,
    DC,
    DD,
    DZ,
    DDBIAS,
    DH0,
    T,
    d,
    n,
    n_chunks,
    su_b,
    su_d,
    su_t,
    sd_b,
    sd_d,
    sd_t,
    sB_b,
    sB_n,
    sB_t,
    sC_b,
    sC_n,
    sC_t,
    sz_b,
    sz_d,
    sz_t,
    so_b,
    so_d,
    so_t,
    sg_b,
    sg_d,
    sg_t,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    HAS_DHLAST: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Every input gradient. ``DU, DDELTA, DZ`` share the strides ``sg_*``; ``DB, DC`` are
    ``(batch, n, T)`` float32 (atomic adds); ``DA (batch, d, n)``, ``DD, DDBIAS (batch, d)`` are
    per batch row; ``DH0 (batch, d, n)``. ``DOUT`` has strides ``so_*``."""
    b = tl.program_id(0).to(tl.int64)  # batch offsets pass 2^31 elements at 1.3b widths and T = 32k
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_d, mask_n = offs_d < d, offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    mask_nd = mask_n[:, None]
    state = b * d * n + offs_d[:, None] * n + offs_n[None, :]
    Av = tl.load(A + offs_d[:, None] * n + offs_n[None, :], mask=mask_dn, other=0.0)
    A2 = Av * LOG2_E
    if HAS_DHLAST:
        G = tl.load(DHLAST + state, mask=mask_dn, other=0.0)  # adjoint of the state entering chunk c + 1
    else:
        G = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    Dv = tl.load(D + offs_d, mask=mask_d & HAS_D, other=0.0)
    bias = tl.load(DBIAS + offs_d, mask=mask_d & HAS_BIAS, other=0.0)
    dA = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    strides = (
        su_b,
        su_d,
        su_t,
        sd_b,
        sd_d,
        sd_t,
        sB_b,
        sB_n,
        sB_t,
        sC_b,
        sC_n,
        sC_t,
        sz_b,
        sz_d,
        sz_t,
        so_b,
        so_d,
        so_t,
    )
    delta_raw, u_raw, Bt, Ct, z, gy, delta_next, h_in = _load_chunk_bwd(
        U,
        DELTA,
        B,
        C,
        Z,
        DOUT,
        HSAVE,
        b,
        n_chunks - 1,
        T,
        n_chunks,
        d,
        n,
        offs_d,
        offs_n,
        offs_t,
        mask_d,
        mask_n,
        mask_dn,
        *strides,
        HAS_Z,
        BLOCK_T,
    )
    for i in range(n_chunks):
        c = n_chunks - 1 - i
        t = c * BLOCK_T + offs_t
        mask_t = t < T
        mask_dt = mask_d[:, None] & mask_t[None, :]
        nxt = _load_chunk_bwd(
            U,
            DELTA,
            B,
            C,
            Z,
            DOUT,
            HSAVE,
            b,
            c - 1,
            T,
            n_chunks,
            d,
            n,
            offs_d,
            offs_n,
            offs_t,
            mask_d,
            mask_n,
            mask_dn,
            *strides,
            HAS_Z,
            BLOCK_T,
        )
        u, Bf, Cf, gy = u_raw.to(tl.float32), Bt.to(tl.float32), Ct.to(tl.float32), gy.to(tl.float32)
        delta, slope, a, drive, hs = _chunk_states(delta_raw, u, Bf, bias, A2, h_in, mask_dt, HAS_BIAS, SOFTPLUS)
        if HAS_Z:
            zf = z.to(tl.float32)
            sig = tl.sigmoid(zf)
            y = tl.sum(hs * Cf[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            dz = gy * y * sig * (1.0 + zf * (1.0 - sig))
            tl.store(DZ + b * sg_b + offs_d[:, None] * sg_d + t[None, :] * sg_t, dz, mask=mask_dt)
            gy *= zf * sig  # now the gradient of y = C . h + D u
        du = gy * Dv[:, None]  # zero without D
        if HAS_D:
            dD += tl.sum(gy * u, axis=1)
        dC = tl.sum(hs * gy[:, None, :], axis=0)
        tl.atomic_add(DC + b * n * T + offs_n[:, None] * T + t[None, :], dC, mask=mask_nd & mask_t[None, :])
        # The decay one step ahead inside the chunk; 1 at its last step, where G comes in.
        ahead = mask_d[:, None] & ((offs_t < BLOCK_T - 1) & (t + 1 < T))[None, :]
        a_next = tl.exp2(_delta(delta_next, bias, ahead, HAS_BIAS, SOFTPLUS)[0][:, None, :] * A2[:, :, None])
        Pr, Sr = tl.associative_scan((a_next, Cf[None, :, :] * gy[:, None, :]), 2, _combine, reverse=True)
        dh = Sr + Pr * G[:, :, None]  # adjoint of h_t
        G = _column(dh * a, offs_t, 0)  # adjoint of the state entering this chunk
        d_du = tl.sum(dh * Bf[None, :, :], axis=1)  # gradient of delta_t u_t
        dB = tl.sum(dh * (delta * u)[:, None, :], axis=0)
        tl.atomic_add(DB + b * n * T + offs_n[:, None] * T + t[None, :], dB, mask=mask_nd & mask_t[None, :])
        r = dh * (hs - drive)  # d loss / d (delta_t A): dh_t a_t h_{t-1}
        dA += tl.sum(r * delta[:, None, :], axis=2)
        ddelta = (tl.sum(r * Av[:, :, None], axis=1) + d_du * u) * slope
        ddelta = tl.where(mask_dt, ddelta, 0.0)
        dbias += tl.sum(ddelta, axis=1)
        du += d_du * delta
        tl.store(DU + b * sg_b + offs_d[:, None] * sg_d + t[None, :] * sg_t, du, mask=mask_dt)
        tl.store(DDELTA + b * sg_b + offs_d[:, None] * sg_d + t[None, :] * sg_t, ddelta, mask=mask_dt)
        delta_raw, u_raw, Bt, Ct, z, gy, delta_next, h_in = nxt
    tl.store(DH0 + state, G, mask=mask_dn)
    tl.store(DA + state, dA, mask=mask_dn)
    tl.store(DD + b * d + offs_d, dD, mask=mask_d)
    tl.store(DDBIAS + b * d + offs_d, dbias, mask=mask_d)


def block_sizes(d: int, n: int, backward: bool) -> dict[str, int]:
    """Tile ``(BLOCK_D, BLOCK_N, BLOCK_T)`` and ``num_warps``: about 2048 float32 elements per 3-d
    tile at 4 warps (16 per thread), and at most 32 (forward) or 16 (backward) channels, as the
    ``(BLOCK_D, BLOCK_T)`` tiles grow too. At d_state 16 on sm_90 this is 125 registers (forward:
    4 blocks per SM) and 255 (backward: 2), no spills (``benchmarks/mamba_scan.py --aot 90``);
    4096-element forward tiles took 221. Unmeasured on a GPU: the speed of other choices."""
    block_n, block_t = triton.next_power_of_2(n), 16
    most = 16 if backward else 32
    block_d = max(1, min(triton.next_power_of_2(d), most, 2048 // (block_n * block_t)))
    return dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_T=block_t, num_warps=4)


IN_DTYPE_POINTERS = ("U", "DELTA", "B", "C", "Z", "OUT", "DOUT", "DU", "DDELTA", "DZ")  # the rest are float32


def pointer_dtypes(kernel, in_dtype: str) -> dict[str, str]:
    """Each pointer argument of ``kernel`` -> its element type (``bf16``...) for inputs of ``in_dtype``:
    what an ahead-of-time compile (``benchmarks/triton_aot.py``) needs to know of a launch."""
    pointers = [a for a in kernel.arg_names if a.isupper() and a != "T"]  # (and the constexpr flags: ignored)
    return {a: in_dtype if a in IN_DTYPE_POINTERS else "fp32" for a in pointers}


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return tuple(x.stride())  # type: ignore[return-value]


def time_major_like(x: torch.Tensor) -> torch.Tensor:
    """An empty ``(batch, d, T)`` tensor of ``x``'s dtype laid out as the mixer's tensors are: a
    transposed view of a contiguous ``(batch, T, d)`` one (channels innermost: coalesced tiles)."""
    batch, d, T = x.shape
    return torch.empty(batch, T, d, device=x.device, dtype=x.dtype).transpose(1, 2)


class SelectiveScanTriton(torch.autograd.Function):
    """``(out, last_state)`` of the fused scan; arguments checked by the caller (``triton_backend``)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus):
        batch, d, T = u.shape
        n = A.shape[1]
        cfg = block_sizes(d, n, backward=False)
        n_chunks = triton.cdiv(T, cfg["BLOCK_T"])
        A, D, delta_bias = (None if x is None else x.float().contiguous() for x in (A, D, delta_bias))
        h0 = None if h0 is None else h0.float().contiguous()
        save = any(ctx.needs_input_grad[:9])
        out = time_major_like(u)
        last = torch.empty(batch, d, n, device=u.device, dtype=torch.float32)
        hsave = torch.empty(batch, n_chunks, d, n, device=u.device, dtype=torch.float32) if save else last
        dummy = A  # any tensor: pointers behind a False flag are never read
        zz = z if z is not None else u
        grid = (batch, triton.cdiv(d, cfg["BLOCK_D"]))
        _selective_scan_fwd[grid](
            u,
            delta,
            A,
            B,
            C,
            dummy if D is None else D,
            zz,
            dummy if delta_bias is None else delta_bias,
            dummy if h0 is None else h0,
            out,
            last,
            hsave,
            T,
            d,
            n,
            n_chunks,
            *_strides3(u),
            *_strides3(delta),
            *_strides3(B),
            *_strides3(C),
            *_strides3(zz),
            *_strides3(out),
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus,
            HAS_H0=h0 is not None,
            SAVE=save,
            **cfg,
        )
        ctx.set_materialize_grads(False)  # an unused output's gradient comes back as None
        if save:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hsave)
            ctx.meta = (softplus, h0 is not None)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, hsave = ctx.saved_tensors
        softplus, has_h0 = ctx.meta
        batch, d, T = u.shape
        n = A.shape[1]
        n_chunks = hsave.shape[1]
        cfg = block_sizes(d, n, backward=True)
        if dout is None:  # only the last state reached the loss
            dout = torch.zeros_like(u)
        f32 = dict(device=u.device, dtype=torch.float32)
        du, ddelta = time_major_like(u), time_major_like(delta)
        dz = time_major_like(z) if z is not None else None
        dB, dC = torch.zeros(batch, n, T, **f32), torch.zeros(batch, n, T, **f32)
        dA, dh0 = torch.empty(batch, d, n, **f32), torch.empty(batch, d, n, **f32)
        dD, dbias = torch.empty(batch, d, **f32), torch.empty(batch, d, **f32)
        zz = z if z is not None else u
        dummy = A
        # The chunking of the saved states is the forward's; its BLOCK_T must be ours.
        grid = (batch, triton.cdiv(d, cfg["BLOCK_D"]))
        _selective_scan_bwd[grid](
            u,
            delta,
            A,
            B,
            C,
            dummy if D is None else D,
            zz,
            dummy if delta_bias is None else delta_bias,
            hsave,
            dout,
            dummy if dlast is None else dlast.float().contiguous(),
            du,
            ddelta,
            dA,
            dB,
            dC,
            dD,
            dz if dz is not None else du,
            dbias,
            dh0,
            T,
            d,
            n,
            n_chunks,
            *_strides3(u),
            *_strides3(delta),
            *_strides3(B),
            *_strides3(C),
            *_strides3(zz),
            *_strides3(dout),
            *_strides3(du),
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_BIAS=delta_bias is not None,
            SOFTPLUS=softplus,
            HAS_DHLAST=dlast is not None,
            **cfg,
        )
        return (
            du,
            ddelta,
            dA.sum(0),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if D is None else dD.sum(0),
            dz,
            None if delta_bias is None else dbias.sum(0),
            dh0 if has_h0 else None,
            None,
        )
