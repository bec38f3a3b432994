"""One decode token of the selective SSM (Mamba and Mamba-2) in one Triton launch.

One program per (batch, head, block of head channels): it loads its ``(BLOCK_P, n)`` slice of
the state (float32), applies softplus to ``dt + dt_bias``, decays and feeds the state, writes it
back in place, and writes ``y = h . C + D x`` gated by ``silu(z)``. Mamba's layout is run as one
head of ``d`` channels (``reference.as_heads``), so both blocks share the kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixbench_kernels.ssd.triton_chunked import softplus
from mixbench_kernels.ssm_step.reference import as_heads


@triton.jit
def _state_update(
    STATE,
    X,
    DT,
    A,
    B,
    C,
    D,
    Z,
    BIAS,
    Y,
    heads,
    headdim,
    n,
    per_group,
    ss_b,
    ss_h,
    ss_p,
    ss_n,
    sx_b,
    sx_h,
    sx_p,
    sdt_b,
    sdt_h,
    sdt_p,
    sa_h,
    sa_p,
    sa_n,
    sb_b,
    sb_g,
    sb_n,
    sc_b,
    sc_g,
    sc_n,
    sd_h,
    sd_p,
    sz_b,
    sz_h,
    sz_p,
    sbias_h,
    sbias_p,
    sy_b,
    sy_h,
    sy_p,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    g = h // per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.arange(0, BLOCK_N)
    p_ok, k_ok = p < headdim, k < n
    mask = p_ok[:, None] & k_ok[None, :]
    state_ptrs = STATE + b * ss_b + h * ss_h + p[:, None] * ss_p + k[None, :] * ss_n
    state = tl.load(state_ptrs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + b * sx_b + h * sx_h + p * sx_p, mask=p_ok, other=0.0).to(tl.float32)
    dt = tl.load(DT + b * sdt_b + h * sdt_h + p * sdt_p, mask=p_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(BIAS + h * sbias_h + p * sbias_p, mask=p_ok, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = softplus(dt)
    a = tl.load(A + h * sa_h + p[:, None] * sa_p + k[None, :] * sa_n, mask=mask, other=0.0).to(tl.float32)
    Bv = tl.load(B + b * sb_b + g * sb_g + k * sb_n, mask=k_ok, other=0.0).to(tl.float32)
    Cv = tl.load(C + b * sc_b + g * sc_g + k * sc_n, mask=k_ok, other=0.0).to(tl.float32)
    state = tl.exp(dt[:, None] * a) * state + (dt * x)[:, None] * Bv[None, :]
    tl.store(state_ptrs, state.to(STATE.dtype.element_ty), mask=mask)
    y = tl.sum(state * Cv[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D + h * sd_h + p * sd_p, mask=p_ok, other=0.0).to(tl.float32)
    if HAS_Z:
        zv = tl.load(Z + b * sz_b + h * sz_h + p * sz_p, mask=p_ok, other=0.0).to(tl.float32)
        y = y * zv * tl.sigmoid(zv)
    tl.store(Y + b * sy_b + h * sy_h + p * sy_p, y.to(Y.dtype.element_ty), mask=p_ok)


def ssm_state_update_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """As ``ssm_state_update_reference``, in one launch: ``state`` updated in place, ``y`` returned."""
    h, x4, dt4, A4, B4, C4, D4, z4, bias4 = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    batch, heads, headdim, n = h.shape
    y = torch.empty(x4.shape, device=x.device, dtype=x.dtype)
    block_n = triton.next_power_of_2(n)
    block_p = max(1, min(triton.next_power_of_2(headdim), 4096 // block_n))
    none3 = (0, 0, 0)
    _state_update[(batch * heads, triton.cdiv(headdim, block_p))](
        h,
        x4,
        dt4,
        A4,
        B4,
        C4,
        D4,
        z4,
        bias4,
        y,
        heads,
        headdim,
        n,
        heads // B4.shape[1],
        *h.stride(),
        *x4.stride(),
        *dt4.stride(),
        *A4.stride(),
        *B4.stride(),
        *C4.stride(),
        *(D4.stride() if D4 is not None else (0, 0)),
        *(z4.stride() if z4 is not None else none3),
        *(bias4.stride() if bias4 is not None else (0, 0)),
        *y.stride(),
        HAS_D=D4 is not None,
        HAS_Z=z4 is not None,
        HAS_BIAS=bias4 is not None,
        SOFTPLUS=dt_softplus,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
    )
    return y.reshape(x.shape)
