"""Causal linear attention in chunks: quadratic inside a chunk, one state product across chunks.

For a chunk starting from state ``S_0``: ``O = scale * (Q S_0 + tril(Q K^T) V)`` and the state after it
is ``S_0 + K^T V``. The states entering the whole chunks are one exclusive cumulative sum of their
``K^T V``, so every whole chunk is computed at once; a remainder shorter than the chunk is a last
step from the final state. Matmuls only, so ``linear_attention_flops`` is exact.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 64


def _outputs(q, k, v, entering, scale):
    """Outputs of chunks ``(..., n, d)`` that start from states ``entering: (..., d_k, d_v)``."""
    return scale * (q @ entering + torch.tril(q @ k.transpose(-1, -2)) @ v)


def linear_attention_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and function as ``linear_attention_reference``."""
    batch, heads, seq, d_k = q.shape
    state = q.new_zeros(batch, heads, d_k, v.shape[-1]) if initial_state is None else initial_state
    n_full = seq // chunk_size
    outs = []
    if n_full:

        def chunks(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, : n_full * chunk_size].unflatten(2, (n_full, chunk_size))

        kv = chunks(k).transpose(-1, -2) @ chunks(v)  # (batch, heads, n_full, d_k, d_v)
        entering = state.unsqueeze(2) + torch.cumsum(kv, 2) - kv
        outs.append(_outputs(chunks(q), chunks(k), chunks(v), entering, scale).flatten(2, 3))
        state = entering[:, :, -1] + kv[:, :, -1]
    if seq > n_full * chunk_size:
        rest = slice(n_full * chunk_size, seq)
        q_r, k_r, v_r = q[:, :, rest], k[:, :, rest], v[:, :, rest]
        outs.append(_outputs(q_r, k_r, v_r, state, scale))
        state = state + k_r.transpose(-1, -2) @ v_r
    return torch.cat(outs, 2) if outs else v[:, :, :0], state


def linear_attention_flops(seq: int, heads: int, d_k: int, d_v: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Matmul FLOPs of ``linear_attention_chunked`` on one sequence (a multiply-add = 2)."""
    sizes = [chunk_size] * (seq // chunk_size) + ([seq % chunk_size] if seq % chunk_size else [])
    per_chunk = sum(2 * n * n * (d_k + d_v) + 4 * n * d_k * d_v for n in sizes)
    return heads * per_chunk
