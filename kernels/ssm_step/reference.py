"""The one-token selective SSM update in plain PyTorch: the reference of ``triton_step``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_heads(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
):
    """Mamba's layout seen as Mamba-2's with one head of ``d`` channels (views, no copies); checks shapes."""
    if state.dim() not in (3, 4):
        raise ValueError(
            f"ssm_state_update: state must be (batch, d, n) or (batch, heads, headdim, n), got {tuple(state.shape)}"
        )
    expected = {"x": state.shape[:-1], "dt": state.shape[:-1], "A": state.shape[1:]}
    for name, t in (("x", x), ("dt", dt), ("A", A)):
        if t.shape != expected[name]:
            raise ValueError(
                f"ssm_state_update: {name} must be {tuple(expected[name])} for state {tuple(state.shape)}, "
                f"got {tuple(t.shape)}"
            )
    if state.dim() == 3:
        state, x, dt, A, B, C = state[:, None], x[:, None], dt[:, None], A[None], B[:, None], C[:, None]
        D, z, dt_bias = (None if t is None else t[None] if t.dim() == 1 else t[:, None] for t in (D, z, dt_bias))
    batch, heads, headdim, n = state.shape
    if B.shape != C.shape or B.dim() != 3 or B.shape[0] != batch or B.shape[2] != n or heads % B.shape[1]:
        raise ValueError(
            f"ssm_state_update: B and C must be (batch, groups, n) = ({batch}, a divisor of {heads}, {n}), "
            f"got {tuple(B.shape)} and {tuple(C.shape)}"
        )
    return state, x, dt, A, B, C, D, z, dt_bias


def ssm_state_update_reference(
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
    """One token; ``state`` updated in place; returns ``y`` in ``x``'s dtype."""
    h, x4, dt4, A4, B4, C4, D4, z4, bias4 = as_heads(state, x, dt, A, B, C, D, z, dt_bias)
    work = h.dtype
    per_group = h.shape[1] // B4.shape[1]
    B4, C4 = (t.to(work).repeat_interleave(per_group, dim=1)[:, :, None, :] for t in (B4, C4))
    dt4 = dt4.to(work) + (0 if bias4 is None else bias4.to(work))
    dt4 = F.softplus(dt4) if dt_softplus else dt4
    xw = x4.to(work)
    new = torch.exp(dt4[..., None] * A4.to(work)) * h + (dt4 * xw)[..., None] * B4
    h.copy_(new)
    y = (new * C4).sum(-1) + (0 if D4 is None else D4.to(work) * xw)
    if z4 is not None:
        y = y * F.silu(z4.to(work))
    return y.reshape(x.shape).to(x.dtype)
