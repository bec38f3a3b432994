"""One decode token of the depthwise causal conv in one Triton launch (causal-conv1d's update, without it).

One program per (batch, block of channels) reads its channels' window and the new input,
writes the output (optionally through SiLU) and shifts the window left by one in place, so
the state buffer is reused token after token (a CUDA graph can replay it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mixbench_kernels.causal_conv.reference import check_conv_args


@triton.jit
def _conv_update(
    X,
    STATE,
    W,
    BIAS,
    Y,
    channels,
    sx_b,
    sx_c,
    ss_b,
    ss_c,
    ss_k,
    sw_c,
    sw_k,
    sy_b,
    sy_c,
    WIDTH: tl.constexpr,
    WIDTH_P: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.arange(0, WIDTH_P)
    c_ok = c < channels
    old = k[None, :] < WIDTH - 1
    state_ptrs = STATE + b * ss_b + c[:, None] * ss_c + k[None, :] * ss_k
    window = tl.load(state_ptrs, mask=c_ok[:, None] & old, other=0.0).to(tl.float32)
    x = tl.load(X + b * sx_b + c * sx_c, mask=c_ok, other=0.0).to(tl.float32)
    window = tl.where(k[None, :] == WIDTH - 1, x[:, None], window)
    w = tl.load(W + c[:, None] * sw_c + k[None, :] * sw_k, mask=c_ok[:, None] & (k[None, :] < WIDTH), other=0.0)
    y = tl.sum(window * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(BIAS + c, mask=c_ok, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(Y + b * sy_b + c * sy_c, y.to(Y.dtype.element_ty), mask=c_ok)
    # the window moves left by one: column k + 1 (the new input for k + 1 = WIDTH - 1) lands in column k
    new = c_ok[:, None] & (k[None, :] >= 1) & (k[None, :] < WIDTH)
    tl.store(state_ptrs - ss_k, window.to(STATE.dtype.element_ty), mask=new)


def causal_conv1d_update_triton(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
) -> torch.Tensor:
    """As ``causal_conv1d_update_reference``: ``x (batch, channels)``, ``conv_state`` rolled in place."""
    check_conv_args(x, weight, activation, "causal_conv1d_update_triton")
    batch, channels = x.shape
    width = weight.shape[1]
    if conv_state.shape != (batch, channels, width - 1):
        raise ValueError(
            f"causal_conv1d_update_triton: conv_state must be (batch, channels, width - 1) = "
            f"{(batch, channels, width - 1)}, got {tuple(conv_state.shape)}"
        )
    y = torch.empty_like(x)
    block = min(triton.next_power_of_2(channels), 256)
    _conv_update[(batch, triton.cdiv(channels, block))](
        x,
        conv_state,
        weight,
        bias,
        y,
        channels,
        *x.stride(),
        *conv_state.stride(),
        *weight.stride(),
        *y.stride(),
        WIDTH=width,
        WIDTH_P=triton.next_power_of_2(width),
        HAS_BIAS=bias is not None,
        SILU=activation == "silu",
        BLOCK_C=block,
    )
    return y
