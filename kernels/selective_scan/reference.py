"""Sequential selective scan: one Python step per token, obviously right, any float dtype.

The reference every other backend of the Mamba (v1) scan is tested against. Shapes follow
mamba-ssm's ``selective_scan_fn`` (channels before time)::

    u, delta, z : (batch, d, T)      A : (d, n)      B, C : (batch, n, T)      D : (d,)

with ``delta <- softplus(delta + delta_bias)`` when asked, and per channel ``d``, state ``n``::

    h_t = exp(delta_t A) * h_{t-1} + delta_t * B_t * u_t        y_t = C_t . h_t + D * u_t
    out_t = y_t * silu(z_t)

It runs in the input dtype (float64 stays float64; half precisions are upcast to float32 as
mamba-ssm does), slices time with ``unbind`` so its backward is one node per step rather than
one full-size gradient per slice, and is far too slow for training: use ``chunked``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def scan_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a scan runs in: float64 stays, everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def prepare_delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool) -> torch.Tensor:
    """``softplus(delta + bias)`` as mamba-ssm applies it inside its kernel."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)
    return F.softplus(delta) if delta_softplus else delta


def finish_output(
    y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Add the ``D`` skip and apply the ``silu(z)`` gate, then return in the caller's dtype."""
    if D is not None:
        y = y + u * D[:, None].to(y.dtype)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_reference(
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
):
    """The selective scan token by token; returns ``out`` or ``(out, last_state (batch, d, n))``."""
    dtype_in = u.dtype
    work = scan_dtype(dtype_in)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    delta = prepare_delta(delta, delta_bias, delta_softplus)
    batch, d, n = u.shape[0], A.shape[0], A.shape[1]
    h = u.new_zeros(batch, d, n) if initial_state is None else initial_state.to(work)
    # Discretise the whole sequence up front (as mamba-ssm's selective_scan_ref does), then
    # walk it: the loop itself is two element-wise ops and one contraction per token.
    decay = torch.exp(delta.transpose(1, 2)[..., None] * A)  # (batch, T, d, n)
    drive = (delta * u).transpose(1, 2)[..., None] * B.transpose(1, 2)[:, :, None, :]
    ys = []
    for decay_t, drive_t, C_t in zip(decay.unbind(1), drive.unbind(1), C.unbind(-1)):
        h = decay_t * h + drive_t
        ys.append(torch.einsum("bdn,bn->bd", h, C_t))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(u.shape)
    out = finish_output(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out
