"""Mamba (v1): the selective state space block of mamba-ssm, as a sequence mixer.

Layout and initialisation follow ``mamba_ssm.modules.mamba_simple.Mamba``::

    x, z  = in_proj(h)                         # d_model -> 2 * d_inner (d_inner = expand * d_model), no bias
    x     = silu(causal depthwise conv(x))     # kernel d_conv, with bias
    dt, B, C = x_proj(x)                       # d_inner -> dt_rank + 2 * d_state
    delta = softplus(dt_proj(dt))              # dt_rank -> d_inner; bias: softplus^-1 of dt ~ logU[dt_min, dt_max]
    y     = selective_scan(x, delta, A = -exp(A_log), B, C) + D * x
    out   = out_proj(y * silu(z))              # d_inner -> d_model, no bias

``A_log`` starts at ``log(1..d_state)`` for every channel (S4D-real) and ``D`` at ones.
``out_proj`` is scaled by ``1/sqrt(n_layers)`` as mamba-ssm's ``_init_weights`` does with
``rescale_prenorm_residual`` (the other projections keep PyTorch's default init, as there).
The block is built for the ``mamba_native`` backbone (``[mixer]`` sub-blocks, twice the layers)
and ignores ``backbone`` otherwise: dropped into another recipe it is the same block.

Backends: ``mamba-ssm`` (its CUDA ``selective_scan_fn`` and ``causal_conv1d_fn``; CUDA only),
``triton`` (``mixbench_kernels.selective_scan.selective_scan_triton``, our fused scan, with the PyTorch
conv; CUDA, where mamba-ssm does not load) and ``torch``
(``mixbench_kernels.selective_scan.selective_scan_chunked``, everywhere; CPU keeps it). Decode carries
the conv window and the SSM state; ``step`` is the recurrence itself, run by mamba-ssm's Triton
``selective_state_update`` and causal-conv1d's ``causal_conv1d_update`` (both updating the
state in place) where they load, else by our two Triton kernels of the same contract
(``DECODE_KERNELS["triton"]``), else in PyTorch. Without causal-conv1d the conv runs as
time-major shift-adds on CUDA (``conv_silu``). The decode backend is chosen and recorded
apart from the prefill one.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench_kernels.causal_conv import causal_conv1d_shift, causal_conv1d_update_triton
from mixbench_kernels.selective_scan import (
    auto_chunk_size,
    causal_conv1d_cuda,
    causal_conv1d_update_cuda,
    selective_scan_chunked,
    selective_scan_cuda,
    selective_scan_triton,
    selective_state_update_cuda,
    triton_unavailable_reason,
)
from mixbench_kernels.selective_scan.reference import scan_dtype
from mixbench_kernels.ssm_step import ssm_state_update_triton
from models.layers import CausalDepthwiseConv
from models.mixer import Backend, SequenceMixer, always, needs_cuda_module
from models.registry import register_mixer

# The fused one-token kernels: causal-conv1d's CUDA update and mamba-ssm's Triton state update.
MAMBA_SSM_DECODE = needs_cuda_module("mamba_ssm", "causal_conv1d_cuda", "mamba_ssm.ops.triton.selective_state_update")
# Each fused decode backend's (conv update, SSM state update) pair: the same contract, state in place.
DECODE_KERNELS = {
    "mamba-ssm": (causal_conv1d_update_cuda, selective_state_update_cuda),
    "triton": (causal_conv1d_update_triton, ssm_state_update_triton),
}


def conv_silu(
    conv: CausalDepthwiseConv, x: torch.Tensor, window: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``silu(causal conv(x))`` and the window after it (None without one), where causal-conv1d does not run.

    On CUDA: the time-major shift-adds of ``mixbench_kernels.causal_conv`` (no transposes of the
    ``(batch, T, channels)`` activations). Elsewhere: the module's ``nn.Conv1d``, the faster one
    on CPU and the one ``FlopCounterMode`` counts (the analytic FLOPs are checked against it).
    """
    if x.device.type != "cuda":
        y, window = conv(x, window)
        return F.silu(y), window
    y, after = causal_conv1d_shift(x, conv.conv.weight.squeeze(1), conv.conv.bias, window, "silu")
    return y, None if window is None else after.contiguous()


def dt_bias_init(size: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Bias whose softplus is log-uniform in ``[dt_min, dt_max]`` (floored), as in mamba-ssm."""
    dt = torch.exp(torch.rand(size) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


@register_mixer("mamba")
class Mamba(SequenceMixer):
    """The Mamba (v1) block: gated selective SSM over a causal conv, between two projections."""

    backends = (
        Backend("mamba-ssm", needs_cuda_module("mamba_ssm", "selective_scan_cuda", "causal_conv1d_cuda")),
        Backend("triton", triton_unavailable_reason, (torch.bfloat16, torch.float16, torch.float32)),
        Backend("torch", always),
    )
    decode_backends = (
        Backend("mamba-ssm", MAMBA_SSM_DECODE),
        Backend("triton", triton_unavailable_reason),
        Backend("torch", always),
    )

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_layers: int = 1,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        chunk_size: int | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(backend)
        if dt_rank != "auto" and not (isinstance(dt_rank, int) and dt_rank > 0):
            raise ValueError(f"mamba: dt_rank must be 'auto' or a positive int, got {dt_rank!r}")
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.chunk_size = chunk_size  # None: auto_chunk_size(T) of the torch scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv = CausalDepthwiseConv(self.d_inner, kernel_size=d_conv, bias=True)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        with torch.no_grad():
            std = self.dt_rank**-0.5 * dt_scale
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(self.d_inner, dt_min, dt_max, dt_init_floor))
            self.out_proj.weight /= math.sqrt(max(n_layers, 1))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))

    def _ssm_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x: (..., d_inner)`` -> pre-bias ``dt (..., d_inner)``, ``B``, ``C (..., d_state)``."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight), B, C

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        """Whole sequence ``(batch, T, d_model)``; with a decode state, continues from it and returns the next."""
        A = -torch.exp(self.A_log.to(scan_dtype(x.dtype)))
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        fresh = state is None or state["pos"] == 0  # the CUDA kernels start from a zero state
        backend = self.select_backend(x.device, x.dtype)
        if backend == "mamba-ssm" and fresh:
            xs_t = xs.transpose(1, 2)
            conv_w = self.conv.conv.weight.squeeze(1)
            xc = causal_conv1d_cuda(xs_t.contiguous(), conv_w, self.conv.conv.bias, activation="silu").transpose(1, 2)
            # The conv window after this chunk: its last d_conv - 1 inputs (zero-padded if shorter).
            conv_state = None if state is None else F.pad(xs_t, (self.d_conv - 1 - x.shape[1], 0))
            scan, initial = selective_scan_cuda, None
        else:
            xc, conv_state = conv_silu(self.conv, xs, None if state is None else state["conv"])
            chunked = partial(selective_scan_chunked, chunk_size=self.chunk_size)
            scan = selective_scan_triton if backend == "triton" else chunked
            initial = None if state is None else state["ssm"]
        dt, B, C = self._ssm_inputs(xc)
        result = scan(
            xc.transpose(1, 2),
            dt.transpose(1, 2),
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.to(A.dtype),
            z.transpose(1, 2),
            delta_bias=self.dt_proj.bias.to(A.dtype),
            delta_softplus=True,
            initial_state=initial,
            return_last_state=state is not None,
        )
        if state is None:
            return self.out_proj(result.transpose(1, 2)), None
        y, ssm = result
        new_state = {"conv": conv_state.contiguous(), "ssm": ssm.contiguous(), "pos": state["pos"] + x.shape[1]}
        return self.out_proj(y.transpose(1, 2)), new_state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        return {
            "conv": self.conv.init_state(batch_size, device, dtype),
            "ssm": torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=scan_dtype(dtype)),
            "pos": 0,
        }

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        """One token ``(batch, d_model)``: the recurrence ``h = exp(delta A) h + delta B x``, read by ``C``."""
        backend = self.select_backend(x_t.device, x_t.dtype, decode=True)
        if backend in DECODE_KERNELS:
            return self._step_fused(x_t, state, *DECODE_KERNELS[backend])
        return self._step_torch(x_t, state)

    def _step_torch(self, x_t: torch.Tensor, state: dict[str, Any]):
        """``step`` in PyTorch: returns a new state, leaves ``state`` as it was."""
        work = state["ssm"].dtype
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        xc, conv_state = self.conv.step(xs, state["conv"])
        xc = F.silu(xc)
        dt, B, C = self._ssm_inputs(xc)
        xc, dt, B, C, z = (t.to(work) for t in (xc, dt, B, C, z))
        delta = F.softplus(dt + self.dt_proj.bias.to(work))  # (batch, d_inner)
        A = -torch.exp(self.A_log.to(work))
        h = torch.exp(delta[:, :, None] * A) * state["ssm"] + (delta * xc)[:, :, None] * B[:, None, :]
        y = (h * C[:, None, :]).sum(-1) + self.D.to(work) * xc
        y = (y * F.silu(z)).to(x_t.dtype)
        return self.out_proj(y), {"conv": conv_state, "ssm": h, "pos": state["pos"] + 1}

    def _step_fused(self, x_t: torch.Tensor, state: dict[str, Any], conv_update, state_update):
        """``step`` through one-token kernels (``DECODE_KERNELS``) updating ``state["conv"]`` and
        ``state["ssm"]`` in place."""
        xs, z = self.in_proj(x_t).chunk(2, dim=-1)
        conv = self.conv.conv
        xc = conv_update(xs, state["conv"], conv.weight.squeeze(1), conv.bias, "silu")
        dt, B, C = self._ssm_inputs(xc)
        work = state["ssm"].dtype
        y = state_update(
            state["ssm"],
            xc,
            dt,
            -torch.exp(self.A_log.to(work)),
            B,
            C,
            self.D.to(work),
            z=z,
            dt_bias=self.dt_proj.bias.to(work),
            dt_softplus=True,
        )
        return self.out_proj(y.to(x_t.dtype)), {**state, "pos": state["pos"] + 1}

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs of one sequence as ``FlopCounterMode`` counts the torch backend (2 per MAC).

        Counted: the four projections, the depthwise conv, and the scan's read-out
        ``y_t = C_t . h_t`` (a batched matmul over the chunk-padded length). Not counted, by
        the project convention: the element-wise work (softplus, the decays ``exp(delta A)``,
        the state update, gates), about 6 more operations per ``(t, d_inner, d_state)``.
        """
        d, di, n, r = self.d_model, self.d_inner, self.d_state, self.dt_rank
        chunk = min(self.chunk_size or auto_chunk_size(seq_len), max(seq_len, 1))
        padded = -(-seq_len // chunk) * chunk
        projections = 2 * seq_len * (d * 2 * di + di * (r + 2 * n) + r * di + di * d)
        return projections + self.conv.flops(seq_len) + 2 * padded * di * n

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size(seq_len) + self.d_inner * self.d_state
