"""The inner model of a TTT layer and its analytic gradient, shared by every form of the op.

Notation (Sun et al. 2024, "Learning to (Learn at Test Time)", §2): per head, the inner model
``f`` is a stack of dense layers ``z_l = x_l W_l + b_l`` with ``x_{l+1} = gelu_tanh(z_l)``
(one layer: TTT-Linear; two layers with a 4x hidden width: TTT-MLP), optionally followed by a
LayerNorm and a residual: ``f(x) = x + LN(z_L)``. Its self-supervised loss on a token is

    l(W; k, v) = 1/2 || LN(z_L(k)) - (v - k) ||^2      (residual; without it the target is v)

The gradient of ``l`` with respect to every ``W_l, b_l`` is written out by hand here (LayerNorm
backward fused with the L2 loss, GELU backward): no autograd inside the inner loop, so the outer
gradient flows through it with ordinary autograd, once.

Tensors carry leading dims ``(batch, heads)``; a layer's ``W`` is ``(batch, heads, d_in, d_out)``
and its ``b`` ``(batch, heads, 1, d_out)`` or ``None`` (no bias: a knob for Theorem 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

Layer = tuple[torch.Tensor, torch.Tensor | None]  # (W, b) of one dense layer of f
LN_EPS = 1e-6
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


class TTTState(NamedTuple):
    """Where the inner learner stands between tokens.

    ``params``: the weights at the start of the current mini-batch. ``grads``: the sum over the
    mini-batch's tokens seen so far of ``lr_j * grad l(params; token j)`` (zero at a mini-batch
    boundary). ``pos``: how many tokens of the current mini-batch have been seen (0 .. b-1).
    The weights in force after token ``pos`` are ``params - token_scale[pos] * grads``.
    """

    params: tuple[Layer, ...]
    grads: tuple[Layer, ...]
    pos: int


def fresh_state(params: tuple[Layer, ...]) -> TTTState:
    """The state before the first token: initial weights, nothing accumulated."""
    zeros = tuple((torch.zeros_like(w), None if b is None else torch.zeros_like(b)) for w, b in params)
    return TTTState(tuple(params), zeros, 0)


def layer_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim with per-head ``weight``/``bias`` of shape ``(heads, 1, dim)``."""
    return F.layer_norm(z, z.shape[-1:], eps=LN_EPS) * weight + bias


def layer_norm_l2_grad(z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """d/dz of ``1/2 ||LN(z) - target||^2``, per token, without autograd."""
    centred = z - z.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + LN_EPS)  # (Tensor.var is slow on CPU)
    z_hat = centred * rstd
    g_hat = (z_hat * weight + bias - target) * weight  # dloss / dz_hat
    # Backward of the normalisation: remove the mean and the component along z_hat.
    return rstd * (g_hat - g_hat.mean(-1, keepdim=True) - z_hat * (g_hat * z_hat).mean(-1, keepdim=True))


def gelu_tanh_grad(z: torch.Tensor) -> torch.Tensor:
    """Derivative of ``F.gelu(z, approximate="tanh")``."""
    t = torch.tanh(_SQRT_2_OVER_PI * (z + 0.044715 * z**3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * z * z)


def dense(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    w, b = layer
    return x @ w if b is None else x @ w + b


def forward_inputs(params: tuple[Layer, ...], x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run ``f``'s dense stack on ``x``: the input ``x_l`` and pre-activation ``z_l`` of every layer."""
    xs, zs = [], []
    for i, layer in enumerate(params):
        if i:
            x = F.gelu(zs[-1], approximate="tanh")
        xs.append(x)
        zs.append(dense(x, layer))
    return xs, zs


def output_grads(
    params: tuple[Layer, ...],
    zs: list[torch.Tensor],
    target: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
) -> list[torch.Tensor]:
    """``dl/dz_l`` for every layer, per token; ``ln_weight=None`` means no LayerNorm in ``f``."""
    if ln_weight is None:
        g = zs[-1] - target
    else:
        g = layer_norm_l2_grad(zs[-1], target, ln_weight, ln_bias)
    gs = [g]
    for i in range(len(params) - 1, 0, -1):
        g = (g @ params[i][0].transpose(-1, -2)) * gelu_tanh_grad(zs[i - 1])
        gs.insert(0, g)
    return gs


def reconstruction_target(k: torch.Tensor, v: torch.Tensor, residual: bool) -> torch.Tensor:
    """What the dense stack must output for ``f(k)`` to reconstruct ``v``."""
    return v - k if residual else v


def finish_output(
    z: torch.Tensor, q: torch.Tensor, ln_weight: torch.Tensor | None, ln_bias: torch.Tensor | None, residual: bool
) -> torch.Tensor:
    """``f(q) = q + LN(z_L(q))``, or the bare ``z_L`` without the LayerNorm/residual knobs."""
    if ln_weight is not None:
        z = layer_norm(z, ln_weight, ln_bias)
    return q + z if residual else z
