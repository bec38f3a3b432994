"""Sequential SSD (Mamba-2's scalar-decay state space model): one Python step per token.

The reference every other backend of the SSD scan is tested against. Shapes follow mamba-ssm's
``mamba_chunk_scan_combined`` (time before heads)::

    x, z : (batch, T, heads, headdim)   dt : (batch, T, heads)   A : (heads,)
    B, C : (batch, T, groups, d_state)  D : (heads,) or (heads, headdim)

with ``dt <- softplus(dt + dt_bias)`` when asked; head ``h`` reads group ``h // (heads / groups)``;
per head the state is a ``(headdim, d_state)`` matrix::

    H_t = exp(dt_t A) * H_{t-1} + dt_t * outer(x_t, B_t)       y_t = H_t C_t + D * x_t
    out_t = y_t * silu(z_t)                                      (only when z is given)

Runs in the input dtype (float64 stays; half precisions are computed in float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixbench_kernels.selective_scan.reference import scan_dtype


def prepare_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool) -> torch.Tensor:
    """``softplus(dt + dt_bias)`` as mamba-ssm applies it inside its kernels."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    return F.softplus(dt) if dt_softplus else dt


def heads_of_groups(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(batch, T, groups, n)`` -> ``(batch, T, heads, n)``: each group serves ``heads / groups`` heads."""
    groups = t.shape[2]
    if heads % groups:
        raise ValueError(f"ssd: {heads} heads cannot be split evenly over {groups} groups")
    return t.repeat_interleave(heads // groups, dim=2)


def finish_output(
    y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """Add the ``D`` skip (per head or per head channel) and the optional ``silu(z)`` gate."""
    if D is not None:
        D = D.to(y.dtype)
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def ssd_reference(
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
):
    """SSD token by token; returns ``out`` or ``(out, final_state (batch, heads, headdim, d_state))``."""
    dtype_in = x.dtype
    work = scan_dtype(dtype_in)
    x, dt, A, B, C = (t.to(work) for t in (x, dt, A, B, C))
    dt = prepare_dt(dt, dt_bias, dt_softplus)
    batch, _, heads, headdim = x.shape
    B, C = heads_of_groups(B, heads), heads_of_groups(C, heads)
    state = x.new_zeros(batch, heads, headdim, B.shape[-1]) if initial_state is None else initial_state.to(work)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), B.unbind(1), C.unbind(1)):
        decay = torch.exp(dt_t * A)[:, :, None, None]  # (batch, heads, 1, 1)
        state = decay * state + (dt_t[:, :, None] * x_t)[..., None] * B_t[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C_t))
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
    out = finish_output(y, x, D, z, dtype_in)
    return (out, state) if return_final_state else out
