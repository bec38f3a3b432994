"""The chunked SSD algorithm of Mamba-2 in pure PyTorch: matmuls inside chunks, a short loop across.

Same function and signature as ``reference.ssd_reference`` plus ``chunk_size``. With scalar
decay per head, the decay between two steps of a chunk is one number per head,
``exp(S_i - S_j)`` with ``S`` the cumulative sum of the log decays ``dt * A`` inside the chunk,
so the chunk's outputs split into four matmul-shaped pieces:

1. within the chunk (the "diagonal block"): ``Y = (L o C B^T) (dt x)`` where
   ``L[i, j] = exp(S_i - S_j)`` for ``j <= i`` and 0 above the diagonal;
2. each chunk's own end state from a zero start: ``sum_j exp(S_end - S_j) dt_j outer(x_j, B_j)``;
3. the states entering every chunk, by a short sequential loop over chunks
   (``H_{c+1} = exp(S_end,c) H_c + local_c``);
4. what the entry state adds to each output: ``exp(S_i) H_c C_i``.

Every exponent is <= 0 (the masked upper triangle is set to -inf before ``exp``), so nothing
overflows. Lengths that are not a multiple of ``chunk_size`` are zero-padded at the end
(``dt = 0`` there: decay 1, no input, final state untouched).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench_kernels.selective_scan.reference import scan_dtype
from mixbench_kernels.ssd.reference import finish_output, prepare_dt

DEFAULT_CHUNK_SIZE = 64


def ssd_chunked(
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
    """SSD, chunk-parallel; returns ``out`` or ``(out, final_state)`` like the reference."""
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be positive, got {chunk_size}")
    dtype_in = x.dtype
    work = scan_dtype(dtype_in)
    x, dt, A, B, C = (t.to(work) for t in (x, dt, A, B, C))
    dt = prepare_dt(dt, dt_bias, dt_softplus)
    batch, seq_len, heads, headdim = x.shape
    groups, d_state = B.shape[2], B.shape[3]
    if heads % groups:
        raise ValueError(f"ssd_chunked: {heads} heads cannot be split evenly over {groups} groups")
    per_group = heads // groups
    state = x.new_zeros(batch, heads, headdim, d_state) if initial_state is None else initial_state.to(work)
    if seq_len == 0:
        out = finish_output(x, x, None, None, dtype_in)
        return (out, state) if return_final_state else out

    chunk = min(chunk_size, seq_len)
    n_chunks = -(-seq_len // chunk)
    pad = n_chunks * chunk - seq_len

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (b, T, ...) -> (b, n_chunks, chunk, ...)
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t
        return t.reshape(batch, n_chunks, chunk, *t.shape[2:])

    # Heads grouped as (groups, per_group) so B and C broadcast over a group's heads.
    xdt = chunked(x * dt[..., None]).permute(0, 3, 1, 2, 4)  # (b, h, c, l, p)
    xdt = xdt.reshape(batch, groups, per_group, n_chunks, chunk, headdim)
    Bc = chunked(B).permute(0, 3, 1, 2, 4).unsqueeze(2)  # (b, g, 1, c, l, n)
    Cc = chunked(C).permute(0, 3, 1, 2, 4).unsqueeze(2)
    log_decay = chunked(dt * A).permute(0, 3, 1, 2)  # (b, h, c, l)
    S = log_decay.cumsum(-1).reshape(batch, groups, per_group, n_chunks, chunk)

    # 1. diagonal blocks: (L o C B^T) @ (dt x)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    seg = (S[..., :, None] - S[..., None, :]).masked_fill(~causal, float("-inf"))
    scores = torch.matmul(Cc, Bc.transpose(-1, -2))  # (b, g, 1, c, l, l): once per group
    y_diag = torch.matmul(torch.exp(seg) * scores, xdt)
    # 2. each chunk's end state from zero: (dt x * decay-to-end)^T @ B
    to_end = torch.exp(S[..., -1:] - S)[..., None]
    local = torch.matmul((xdt * to_end).transpose(-1, -2), Bc)  # (b, g, hg, c, p, n)
    # 3. states entering each chunk: a short sequential loop over chunks
    chunk_decay = torch.exp(S[..., -1])[..., None, None]  # (b, g, hg, c, 1, 1)
    H = state.reshape(batch, groups, per_group, headdim, d_state)
    entries = []
    for c in range(n_chunks):
        entries.append(H)
        H = chunk_decay[:, :, :, c] * H + local[:, :, :, c]
    entry = torch.stack(entries, 3)  # (b, g, hg, c, p, n)
    # 4. entry state -> outputs: exp(S_i) * C_i H_c
    y_off = torch.matmul(Cc, entry.transpose(-1, -2)) * torch.exp(S)[..., None]

    y = (y_diag + y_off).reshape(batch, heads, n_chunks * chunk, headdim)[:, :, :seq_len].transpose(1, 2)
    out = finish_output(y, x, D, z, dtype_in)
    return (out, H.reshape(batch, heads, headdim, d_state)) if return_final_state else out


def ssd_flops(
    seq_len: int, heads: int, headdim: int, d_state: int, groups: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> int:
    """Matmul FLOPs of ``ssd_chunked`` for one sequence (what ``FlopCounterMode`` counts).

    Over the padded length ``Tp``: ``C B^T`` per group ``2 Tp l g n``, the diagonal blocks
    ``2 Tp l h p``, the chunk states ``2 Tp h p n`` and the entry-state outputs ``2 Tp h p n``.
    The element-wise decays and the loop across chunks are not counted.
    """
    if seq_len == 0:
        return 0
    chunk = min(chunk_size, seq_len)
    padded = -(-seq_len // chunk) * chunk
    return 2 * padded * (chunk * groups * d_state + chunk * heads * headdim + 2 * heads * headdim * d_state)
