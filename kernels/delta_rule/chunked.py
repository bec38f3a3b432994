"""The delta rule in chunks (the WY form of Yang et al. 2024), matmuls only.

Inside a chunk entered with state ``S_0``, write ``S_t = S_{t-1} + k_t^T u_t``. Then
``u_t = beta_t (v_t - k_t S_0 - sum_{j<t} (k_t . k_j) u_j)``: a unit lower-triangular system
``(I + diag(beta) strictly_lower(K K^T)) U = diag(beta) (V - K S_0)``. Its solution is
``U = U' - W S_0`` with ``[W | U'] = T [K | V]``, ``T`` the system's inverse times ``diag(beta)``;
``W`` and ``U'`` do not depend on ``S_0``, so they are solved for every chunk at once (forward
substitution, one row-times-matrix product per row). The scan over chunks is then

    U = U' - W S_0,     O = scale * (Q S_0 + tril(Q K^T) U),     S_n = S_0 + K^T U.

Forward substitution instead of ``torch.linalg.solve_triangular`` costs the same multiply-adds and
keeps every one of them a matmul that ``torch.utils.flop_counter`` sees: ``delta_rule_flops`` is exact.
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK_SIZE = 64


def _wy(k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W, U'`` of chunks ``(..., n, d)`` with ``beta: (..., n)``."""
    n, d_k = k.shape[-2], k.shape[-1]
    a = torch.tril(beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)), diagonal=-1)
    rhs = beta.unsqueeze(-1) * torch.cat([k, v], -1)
    rows = [rhs[..., :1, :]]
    for i in range(1, n):
        rows.append(rhs[..., i : i + 1, :] - a[..., i : i + 1, :i] @ torch.cat(rows, -2))
    x = torch.cat(rows, -2)
    return x[..., :d_k], x[..., d_k:]


def delta_rule_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments and function as ``delta_rule_reference``."""
    batch, heads, seq, d_k = q.shape
    state = q.new_zeros(batch, heads, d_k, v.shape[-1]) if initial_state is None else initial_state
    n_full = seq // chunk_size
    runs = [(0, n_full, chunk_size)] if n_full else []
    if seq > n_full * chunk_size:
        runs.append((n_full * chunk_size, 1, seq - n_full * chunk_size))
    outs = []
    for start, n_chunks, n in runs:

        def chunks(t: torch.Tensor) -> torch.Tensor:
            return t[:, :, start : start + n_chunks * n].unflatten(2, (n_chunks, n))

        qc, kc = chunks(q), chunks(k)
        w, u0 = _wy(kc, chunks(v), chunks(beta.unsqueeze(-1)).squeeze(-1))
        qk = torch.tril(qc @ kc.transpose(-1, -2))
        for i in range(n_chunks):
            u = u0[:, :, i] - w[:, :, i] @ state
            outs.append(scale * (qc[:, :, i] @ state + qk[:, :, i] @ u))
            state = state + kc[:, :, i].transpose(-1, -2) @ u
    return torch.cat(outs, 2) if outs else v[:, :, :0], state


def delta_rule_flops(seq: int, heads: int, d_k: int, d_v: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> int:
    """Matmul FLOPs of ``delta_rule_chunked`` on one sequence (a multiply-add = 2)."""
    sizes = [chunk_size] * (seq // chunk_size) + ([seq % chunk_size] if seq % chunk_size else [])
    per = (4 * n * n * d_k + 2 * n * n * d_v + n * (n - 1) * (d_k + d_v) + 6 * n * d_k * d_v for n in sizes)
    return heads * sum(per)
