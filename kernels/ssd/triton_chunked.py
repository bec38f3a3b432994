"""SSD (Mamba-2's scan) as one Triton kernel: the chunked algorithm of ``chunked.py``, fused.

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

Backward: the kernel does not save activations; the gradients are those of ``ssd_chunked``
recomputed on the same inputs (PyTorch, float32+), which ``tests/kernels/ssd_triton_interpreted.py``
holds to the sequential reference. A Triton backward is future work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.ssd.chunked import DEFAULT_CHUNK_SIZE, ssd_chunked

_TORCH_TO_DOT = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}
# The kernel's longest chunk per input dtype. On sm_90 (``benchmarks/mamba_kernels_resources.py``,
# headdim 64, d_state 128): 16-bit inputs at 64 use 255 registers, 12 B of spills, 56 KB of shared
# memory (at 128: 2.3 KB of spills); float32 at 32 uses 124 KB (at 64: 210 KB and 1.2 KB of spills,
# at 128: 418 KB, over the 227 KB a block may have).
MAX_CHUNK = {torch.float32: 32, torch.float16: 64, torch.bfloat16: 64}


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
def _ssd_forward(
    X, DT, DT_BIAS, A, B, C, D, Z, H0, Y, HT,
    T, heads, per_group, headdim, d_state,
    sx_b, sx_t, sx_h, sx_p, sdt_b, sdt_t, sdt_h, sb_b, sb_t, sb_g, sb_n, sc_b, sc_t, sc_g, sc_n,
    sz_b, sz_t, sz_h, sz_p, sy_b, sy_t, sy_h, sy_p, sd_h, sd_p,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr, DOT: tl.constexpr, L: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    g = h // per_group
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, L)
    p_ok, n_ok = p < headdim, n < d_state
    a = tl.load(A + h).to(tl.float32)
    state_offs = (bh * headdim + p[:, None]) * d_state + n[None, :]
    state_mask = p_ok[:, None] & n_ok[None, :]
    if HAS_H0:
        H = tl.load(H0 + state_offs, mask=state_mask, other=0.0)
    else:
        H = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(DT_BIAS + h).to(tl.float32)
    if HAS_D:
        skip = tl.load(D + h * sd_h + p * sd_p, mask=p_ok, other=0.0).to(tl.float32)
    causal = rows[:, None] >= rows[None, :]
    for c in range(0, tl.cdiv(T, L)):
        t = c * L + rows
        t_ok = t < T
        dt = tl.load(DT + b * sdt_b + t * sdt_t + h * sdt_h, mask=t_ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = softplus(dt)
        dt = tl.where(t_ok, dt, 0.0)
        S = tl.cumsum(dt * a, axis=0)  # (L,): log decay from the chunk start, non-increasing
        S_end = tl.sum(dt * a, axis=0)
        io_mask = t_ok[:, None] & p_ok[None, :]
        x = tl.load(X + b * sx_b + t[:, None] * sx_t + h * sx_h + p[None, :] * sx_p, mask=io_mask, other=0.0)
        x = x.to(tl.float32)
        bc_mask = t_ok[:, None] & n_ok[None, :]
        Bm = tl.load(B + b * sb_b + t[:, None] * sb_t + g * sb_g + n[None, :] * sb_n, mask=bc_mask, other=0.0)
        Cm = tl.load(C + b * sc_b + t[:, None] * sc_t + g * sc_g + n[None, :] * sc_n, mask=bc_mask, other=0.0)
        Bm, Cm = Bm.to(DOT), Cm.to(DOT)
        xdt = x * dt[:, None]
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
        tl.store(Y + b * sy_b + t[:, None] * sy_t + h * sy_h + p[None, :] * sy_p, y.to(Y.dtype.element_ty), mask=io_mask)
        # the state leaving the chunk
        to_end = xdt * tl.exp(S_end - S)[:, None]
        H = H * tl.exp(S_end) + tl.dot(tl.trans(to_end.to(DOT)), Bm)
    tl.store(HT + state_offs, H, mask=state_mask)


def _block(size: int, low: int = 16) -> int:
    """The power of two >= ``size`` and >= ``low`` (``tl.dot`` needs every dim >= 16)."""
    return max(low, triton.next_power_of_2(size))


def ssd_blocks(headdim: int, d_state: int, block_p: int | None = None) -> tuple[int, int, int]:
    """``(BLOCK_P, BLOCK_N, num_warps)``: head channels per program (at most 64), the padded state
    width, and 8 warps once a program's state slice passes 4096 floats (at headdim 64, d_state 128:
    255 registers per thread and a few bytes of spills on sm_90, ``benchmarks/mamba_kernels_resources.py``)."""
    block_p = block_p or min(_block(headdim), 64)
    block_n = _block(d_state)
    return block_p, block_n, 4 if block_p * block_n <= 4096 else 8


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
    batch, seq_len, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    per_group = heads // groups
    L = min(_block(min(chunk_size, max(seq_len, 1))), MAX_CHUNK[x.dtype])
    block_p, block_n, num_warps = ssd_blocks(headdim, d_state)
    out = torch.empty_like(x)
    final = torch.empty(batch, heads, headdim, d_state, device=x.device, dtype=torch.float32)
    h0 = None if initial_state is None else initial_state.to(torch.float32).contiguous()
    A32 = A.to(torch.float32).contiguous()
    bias = None if dt_bias is None else dt_bias.to(torch.float32).contiguous()
    skip = None if D is None else D.to(torch.float32)
    sd = (0, 0) if skip is None else (skip.stride(0), skip.stride(1) if skip.dim() == 2 else 0)
    zs = z.stride() if z is not None else (0, 0, 0, 0)
    dot = _TORCH_TO_DOT[x.dtype] if x.dtype in _TORCH_TO_DOT else tl.float32
    grid = (batch * heads, triton.cdiv(headdim, block_p))
    _ssd_forward[grid](
        x, dt, bias, A32, B, C, skip, z, h0, out, final,
        seq_len, heads, per_group, headdim, d_state,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *zs, *out.stride(), *sd,
        HAS_BIAS=bias is not None, SOFTPLUS=dt_softplus, HAS_D=skip is not None, HAS_Z=z is not None,
        HAS_H0=h0 is not None, DOT=dot, L=L, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    return out, final


class _SSDTriton(torch.autograd.Function):
    """Triton forward; backward = the gradients of ``ssd_chunked`` recomputed on the saved inputs."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus, chunk_size):  # noqa: ANN001
        ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_state)
        ctx.dt_softplus, ctx.chunk_size = dt_softplus, chunk_size
        out, final = ssd_forward_triton(x, dt, A, B, C, D, z, dt_bias, dt_softplus, initial_state, chunk_size)
        return out, final

    @staticmethod
    def backward(ctx, d_out, d_final):  # noqa: ANN001
        saved = ctx.saved_tensors
        leaves = [None if t is None else t.detach().requires_grad_(ctx.needs_input_grad[i]) for i, t in enumerate(saved)]
        with torch.enable_grad():
            out, final = ssd_chunked(
                *leaves[:5], D=leaves[5], z=leaves[6], dt_bias=leaves[7], dt_softplus=ctx.dt_softplus,
                initial_state=leaves[8], return_final_state=True, chunk_size=ctx.chunk_size,
            )  # fmt: skip
            wanted = [t for t in leaves if t is not None and t.requires_grad]
            outputs, grads_in = [out], [d_out]
            if d_final is not None:
                outputs.append(final)
                grads_in.append(d_final)
            grads = iter(torch.autograd.grad(outputs, wanted, grads_in, allow_unused=True)) if wanted else iter(())
        return (*(next(grads) if t is not None and t.requires_grad else None for t in leaves), None, None)


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


def check_ssd_inputs(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int) -> None:
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
            f"ssd_chunked_triton: expected B and C (batch, T, groups, d_state), got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    if x.shape[2] % B.shape[2]:
        raise ValueError(f"ssd_chunked_triton: {x.shape[2]} heads cannot be split evenly over {B.shape[2]} groups")
