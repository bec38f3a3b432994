"""Chunked parallel selective scan in pure PyTorch: Mamba (v1) prefill and training on any device.

Same function and signature as ``reference.selective_scan_reference``. The sequence is cut
into ``n_chunks`` chunks of ``chunk_size`` tokens and the linear recurrence
``h_t = a_t * h_{t-1} + b_t`` (``a_t = exp(delta_t A)``, ``b_t = delta_t u_t B_t``, per channel
and state) is solved in two levels:

1. inside every chunk at once, from a zero state: ``chunk_size`` vectorised steps, each over
   all chunks together, give each chunk's local end state;
2. across chunks, sequentially: a chunk's whole decay is ``exp(A * sum(delta over chunk))``
   (the log decays of a chunk sum to ``A`` times the cumulative sum of its ``delta``), so the
   true state entering chunk ``c`` is ``H_c = P_{c-1} * H_{c-1} + local_end_{c-1}``;
3. inside every chunk again, now from ``H_c``, producing the outputs ``y_t = C_t . h_t``.

Python runs ``2 * chunk_size + n_chunks`` loop steps instead of ``T`` (the backward as many
again); with ``chunk_size ~ sqrt(T) / 2`` that is about 250 at T = 8192. Every step works on
a ``(batch, n_chunks, d_state, d)`` slice that stays in cache. Every factor is a decay <= 1,
so nothing overflows however strong the decay (unlike factorising ``exp(S_t - S_s)`` into
``exp(S_t) * exp(-S_s)``, which fails in float32 once a chunk decays past e^-88).

The backward pass is written by hand (``_ChunkedScan``): the same two-level scan run
backwards in time over the adjoint state, with the forward states recomputed chunk-parallel
from the saved chunk-entry states. Between forward and backward only the inputs and the
chunk-entry states are kept (O(batch * d * (T + n_chunks * d_state))); the recomputed states,
O(batch * T * d * d_state), live only while the backward runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mixbench_kernels.selective_scan.reference import finish_output, prepare_delta, scan_dtype

LOG2_E = 1.0 / math.log(2.0)
LN_2 = math.log(2.0)


def auto_chunk_size(seq_len: int) -> int:
    """The power of two at or above sqrt(T) / 2, within [16, 256].

    Measured on CPU (d_inner 128, d_state 16, forward + backward): the best chunk was 16-32 at
    T = 512, 32 at 2048, 64-128 at 8192 and 128 at 32768; per-chunk-step work (about 25 ops)
    outweighs per-chunk work (a few ops), hence below sqrt(T).
    """
    target = math.sqrt(max(seq_len, 1)) / 2
    return int(min(256, max(16, 2 ** math.ceil(math.log2(max(target, 1.0))))))


def _to_steps(x: torch.Tensor, chunk: int, n_chunks: int) -> torch.Tensor:
    """``(batch, c, T)`` -> ``(chunk, batch, n_chunks, c)``, zero-padded at the end, step-major."""
    b, c, t = x.shape
    x = F.pad(x, (0, n_chunks * chunk - t))
    return x.view(b, c, n_chunks, chunk).permute(3, 0, 2, 1).contiguous()


def _from_steps(x: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Inverse of ``_to_steps``: ``(chunk, batch, n_chunks, c)`` -> ``(batch, c, T)``.

    The result is a transposed view of a time-major ``(batch, T, c)`` tensor: CPU copies that
    swap the channel and time axes are ~30x slower than ones that keep channels innermost.
    """
    chunk, b, n_chunks, c = x.shape
    return x.permute(1, 2, 0, 3).reshape(b, n_chunks * chunk, c)[:, :seq_len].transpose(1, 2)


class _ChunkedScan(torch.autograd.Function):
    """Core recurrence ``y_t = C_t . h_t`` with ``delta`` already final (bias, softplus applied).

    Internal layout: states are ``(batch, n_chunks, n, d)`` (``d`` last, the long axis);
    per-step inputs are rows of the step-major tensors from ``_to_steps``. Decays are computed
    as ``exp2(delta * A * log2(e))``: the same number, and ~3x cheaper than ``exp`` on CPU.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, chunk):
        b, d, seq_len = u.shape
        n = A.shape[1]
        n_chunks = -(-seq_len // chunk)
        # Padded steps have delta = 0: decay 1 and no input, so the final state is untouched.
        delta_s, u_s = _to_steps(delta, chunk, n_chunks), _to_steps(u, chunk, n_chunks)
        B_s, C_s = _to_steps(B, chunk, n_chunks), _to_steps(C, chunk, n_chunks)
        A2 = (A * LOG2_E).t().contiguous()  # (n, d), log2 of the decay per unit delta
        du_s = delta_s * u_s
        steps = _Steps(delta_s, du_s, A2, B_s)

        # 1. local end state of every chunk, all chunks at once, from zero.
        local = steps.drive(0)
        for j in range(1, chunk):
            local = torch.addcmul(steps.drive(j), steps.decay(j), local)
        # 2. states entering each chunk, chunk by chunk; a chunk's decay is exp(A * sum delta).
        chunk_decay = torch.exp2(delta_s.sum(0).unsqueeze(-2) * A2)  # (b, n_chunks, n, d)
        entry = [u.new_zeros(b, n, d) if h0 is None else h0.transpose(1, 2).to(u.dtype)]
        for c in range(n_chunks):
            entry.append(torch.addcmul(local[:, c], chunk_decay[:, c], entry[-1]))
        H = torch.stack(entry, 1)  # (b, n_chunks + 1, n, d); H[:, -1] is the final state
        # 3. outputs, all chunks at once, from their true entry states.
        h = H[:, :n_chunks]
        ys = []
        for j in range(chunk):
            h = torch.addcmul(steps.drive(j), steps.decay(j), h)
            ys.append(torch.matmul(C_s[j].unsqueeze(-2), h).squeeze(-2))  # (b, n_chunks, d)
        y = _from_steps(torch.stack(ys), seq_len)
        ctx.save_for_backward(delta_s, u_s, A2, B_s, C_s, H)
        ctx.meta = (seq_len, chunk, h0 is not None)
        return y, H[:, -1].transpose(1, 2)

    @staticmethod
    def backward(ctx, gy, g_last):
        delta_s, u_s, A2, B_s, C_s, H = ctx.saved_tensors
        seq_len, chunk, has_h0 = ctx.meta
        n_chunks = delta_s.shape[2]
        b, _, n, d = H.shape
        gy_s = _to_steps(gy.to(H.dtype), chunk, n_chunks)  # (chunk, b, n_chunks, d)
        du_s = delta_s * u_s
        steps = _Steps(delta_s, du_s, A2, B_s)

        # 1. Forward states again, all chunks at once, and meanwhile the adjoint each chunk's
        #    outputs send to its entry state: sum_t (a_0 ... a_t) * outer(C_t, gy_t).
        hs = []
        h = H[:, :n_chunks]
        from_inside = torch.zeros_like(h)
        reach = None  # a_0 * ... * a_t: decay from the chunk's entry to step t
        for j in range(chunk):
            a = steps.decay(j)
            h = torch.addcmul(steps.drive(j), a, h)
            hs.append(h)
            reach = a if reach is None else reach * a
            from_inside.addcmul_(reach, C_s[j].unsqueeze(-1) * gy_s[j].unsqueeze(-2))
        # 2. adjoints leaving each chunk (arriving from later chunks), last chunk first.
        G = H.new_zeros(b, n, d) if g_last is None else g_last.transpose(1, 2).to(H.dtype)
        leaving = [G] * n_chunks
        for c in range(n_chunks - 1, -1, -1):
            leaving[c] = G
            G = torch.addcmul(from_inside[:, c], reach[:, c], G)  # reach is now the chunk's decay
        g_h0 = G.transpose(1, 2) if has_h0 else None
        # 3. every chunk backwards from its true leaving adjoint, collecting the input grads.
        g = torch.stack(leaving, 1)
        g_du, g_dec, g_B, g_C = ([None] * chunk for _ in range(4))
        g_A = torch.zeros_like(g)
        for j in range(chunk - 1, -1, -1):
            g = torch.addcmul(g, C_s[j].unsqueeze(-1), gy_s[j].unsqueeze(-2))  # adjoint of h_t
            g_C[j] = torch.einsum("bcnd,bcd->bcn", hs[j], gy_s[j])
            g_du[j] = torch.matmul(B_s[j].unsqueeze(-2), g).squeeze(-2)
            g_B[j] = torch.einsum("bcnd,bcd->bcn", g, du_s[j])
            g = g * steps.decay(j)  # now the adjoint of h_{t-1}
            r = g * (hs[j - 1] if j > 0 else H[:, :n_chunks])  # d loss / d (delta_t A), per (n, d)
            g_dec[j] = (r * A2).sum(-2)
            g_A.addcmul_(r, delta_s[j].unsqueeze(-2))
        g_du_s = torch.stack(g_du)
        g_u = _from_steps(g_du_s * delta_s, seq_len)
        g_delta = _from_steps(torch.stack(g_dec) * LN_2 + g_du_s * u_s, seq_len)
        g_A = g_A.sum((0, 1)).t()
        g_B = _from_steps(torch.stack(g_B), seq_len)
        g_C = _from_steps(torch.stack(g_C), seq_len)
        return g_u, g_delta, g_A, g_B, g_C, g_h0, None


class _Steps:
    """The per-step discretised inputs of all chunks at once, built on demand (never stored)."""

    def __init__(self, delta_s, du_s, A2, B_s):
        self.delta_s, self.du_s, self.A2, self.B_s = delta_s, du_s, A2, B_s

    def decay(self, j: int) -> torch.Tensor:  # a_t = exp(delta_t A): (b, n_chunks, n, d)
        return torch.exp2(self.delta_s[j].unsqueeze(-2) * self.A2)

    def drive(self, j: int) -> torch.Tensor:  # b_t = delta_t u_t B_t: (b, n_chunks, n, d)
        return self.B_s[j].unsqueeze(-1) * self.du_s[j].unsqueeze(-2)


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    chunk_size: int | None = None,
):
    """The selective scan, chunk-parallel; same arguments and results as the reference.

    ``chunk_size=None`` picks ``auto_chunk_size(T)``; any positive size works, dividing ``T``
    or not.
    """
    dtype_in = u.dtype
    work = scan_dtype(dtype_in)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    seq_len = u.shape[-1]
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"selective_scan_chunked: chunk_size must be positive, got {chunk_size}")
    chunk = min(chunk_size or auto_chunk_size(seq_len), max(seq_len, 1))
    if seq_len == 0:
        y = u.new_zeros(u.shape)
        last = u.new_zeros(u.shape[0], A.shape[0], A.shape[1]) if initial_state is None else initial_state.to(work)
    else:
        h0 = None if initial_state is None else initial_state.to(work)
        y, last = _ChunkedScan.apply(u, delta, A, B, C, h0, chunk)
    out = finish_output(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out
