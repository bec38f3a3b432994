"""Mamba-2: the SSD block of mamba-ssm (multi-head, scalar decay per head), as a sequence mixer.

Layout and initialisation follow ``mamba_ssm.modules.mamba2.Mamba2`` (``ngroups`` groups of
B/C, ``D`` per head, gated RMSNorm before ``out_proj``)::

    z, xBC, dt = in_proj(h)                    # d_model -> 2 d_inner + 2 ngroups d_state + heads, no bias
    x, B, C    = silu(causal depthwise conv(xBC))
    y          = SSD(x, softplus(dt + dt_bias), A = -exp(A_log), B, C) + D * x    # per head
    out        = out_proj(rmsnorm(y * silu(z)))   # norm per group, eps 1e-5; no bias

``heads = d_inner / headdim``. ``headdim`` defaults to mamba-ssm's 64, which every preset size
here divides (the tiny size has d_inner 128: two heads); a width it does not divide is refused
with a clear error naming the divisors to choose from. ``d_state`` defaults to mamba-ssm's 128.
``dt_bias`` is the inverse softplus of ``dt ~ logU[dt_min, dt_max]`` (floored); ``A`` starts
uniform in ``[1, 16]`` per head; ``D`` at ones; ``out_proj`` scaled by ``1/sqrt(n_layers)``.

Backends, fastest first: ``mamba-ssm`` (its Triton ``mamba_chunk_scan_combined``, plus
``causal_conv1d_fn`` for stateless passes; CUDA only), ``triton`` (ours: ``mixbench_kernels.ssd``'s
``ssd_chunked_triton``; CUDA, or CPU under ``TRITON_INTERPRET=1``; the conv then runs as
``models.mamba.conv_silu``) and ``torch`` (``mixbench_kernels.ssd.ssd_chunked``, everywhere).
``step`` runs mamba-ssm's Triton ``selective_state_update`` (heads layout) and causal-conv1d's
``causal_conv1d_update`` where they load, else our two Triton kernels of the same contract
(``mixbench_kernels.causal_conv.causal_conv1d_update_triton``, ``mixbench_kernels.ssm_step.ssm_state_update_triton``),
in place, else PyTorch; chosen and recorded apart.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench_kernels.selective_scan import causal_conv1d_cuda
from mixbench_kernels.selective_scan.reference import scan_dtype
from mixbench_kernels.ssd import DEFAULT_CHUNK_SIZE, ssd_chunked, ssd_chunked_triton, ssd_flops, ssd_triton
from mixbench_kernels.ttt import triton_unavailable_reason
from models.layers import CausalDepthwiseConv
from models.mamba import DECODE_KERNELS, MAMBA_SSM_DECODE, conv_silu, dt_bias_init
from models.mixer import Backend, SequenceMixer, always, needs_cuda_module
from models.registry import register_mixer


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """``rmsnorm(y * silu(z)) * weight``, normalised per group of channels, computed in float32+."""
    work = scan_dtype(y.dtype)
    g = (y.to(work) * F.silu(z.to(work))).unflatten(-1, (groups, -1))
    g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)
    return (g.flatten(-2) * weight.to(work)).to(y.dtype)


@register_mixer("mamba2")
class Mamba2(SequenceMixer):
    """The Mamba-2 block: gated multi-head SSD over a causal conv, with a gated RMSNorm."""

    backends = (
        Backend("mamba-ssm", needs_cuda_module("mamba_ssm", "causal_conv1d_cuda", "mamba_ssm.ops.triton.ssd_combined")),
        Backend("triton", triton_unavailable_reason),
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
        d_state: int = 128,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        backend: str = "auto",
    ) -> None:
        super().__init__(backend)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if not isinstance(headdim, int) or headdim < 1 or self.d_inner % headdim:
            options = [h for h in range(1, min(self.d_inner, 64) + 1) if self.d_inner % h == 0]
            raise ValueError(
                f"mamba2: headdim {headdim!r} does not divide d_inner = expand * d_model = {self.d_inner}; "
                f"choose a divisor, e.g. headdim={options[-1]} (divisors <= 64: {options})"
            )
        self.headdim, self.heads = headdim, self.d_inner // headdim
        if ngroups < 1 or self.heads % ngroups:
            raise ValueError(f"mamba2: ngroups {ngroups} must divide the number of heads {self.heads}")
        if chunk_size < 1:
            raise ValueError(f"mamba2: chunk_size must be positive, got {chunk_size}")
        self.ngroups, self.chunk_size = ngroups, chunk_size
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + self.conv_dim + self.heads, bias=False)
        self.conv = CausalDepthwiseConv(self.conv_dim, kernel_size=d_conv, bias=True)
        self.dt_bias = nn.Parameter(dt_bias_init(self.heads, dt_min, dt_max, dt_init_floor))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.heads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm_weight = nn.Parameter(torch.ones(self.d_inner))
        self.norm_eps = 1e-5
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        with torch.no_grad():
            self.out_proj.weight /= math.sqrt(max(n_layers, 1))

    def _split(self, zxbcdt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return zxbcdt.split([self.d_inner, self.conv_dim, self.heads], dim=-1)

    def _heads(self, xbc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Conv output ``(..., conv_dim)`` -> x ``(..., heads, headdim)``, B and C ``(..., groups, d_state)``."""
        x, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        groups = (self.ngroups, self.d_state)
        return x.unflatten(-1, (self.heads, self.headdim)), B.unflatten(-1, groups), C.unflatten(-1, groups)

    def _out(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.out_proj(gated_rms_norm(y.flatten(-2), z, self.norm_weight, self.ngroups, self.norm_eps))

    def forward(self, u: torch.Tensor, state: dict[str, Any] | None = None):
        """Whole sequence ``(batch, T, d_model)``; with a decode state, continues from it and returns the next."""
        A = -torch.exp(self.A_log.to(scan_dtype(u.dtype)))
        z, xbc, dt = self._split(self.in_proj(u))
        backend = self.select_backend(u.device)
        if backend == "mamba-ssm" and state is None:
            w = self.conv.conv.weight.squeeze(1)
            xbc = causal_conv1d_cuda(xbc.transpose(1, 2).contiguous(), w, self.conv.conv.bias, "silu").transpose(1, 2)
            conv_state = None
        else:
            xbc, conv_state = conv_silu(self.conv, xbc, None if state is None else state["conv"])
        x, B, C = self._heads(xbc)
        scan = {"mamba-ssm": ssd_triton, "triton": ssd_chunked_triton, "torch": ssd_chunked}[backend]
        result = scan(
            x,
            dt,
            A,
            B,
            C,
            D=self.D.to(A.dtype),
            dt_bias=self.dt_bias.to(A.dtype),
            dt_softplus=True,
            initial_state=None if state is None else state["ssm"],
            return_final_state=state is not None,
            chunk_size=self.chunk_size,
        )
        if state is None:
            return self._out(result, z), None
        y, ssm = result
        return self._out(y, z), {"conv": conv_state, "ssm": ssm, "pos": state["pos"] + u.shape[1]}

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        ssm = torch.zeros(batch_size, self.heads, self.headdim, self.d_state, device=device, dtype=scan_dtype(dtype))
        return {"conv": self.conv.init_state(batch_size, device, dtype), "ssm": ssm, "pos": 0}

    def step(self, u_t: torch.Tensor, state: dict[str, Any]):
        """One token ``(batch, d_model)``: per head ``H = exp(dt A) H + dt outer(x, B)``, read by ``C``."""
        backend = self.select_backend(u_t.device, u_t.dtype, decode=True)
        if backend in DECODE_KERNELS:
            return self._step_fused(u_t, state, *DECODE_KERNELS[backend])
        return self._step_torch(u_t, state)

    def _step_torch(self, u_t: torch.Tensor, state: dict[str, Any]):
        """``step`` in PyTorch: returns a new state, leaves ``state`` as it was."""
        work = state["ssm"].dtype
        z, xbc, dt = self._split(self.in_proj(u_t))
        xbc, conv_state = self.conv.step(xbc, state["conv"])
        x, B, C = (t.to(work) for t in self._heads(F.silu(xbc)))
        per_group = self.heads // self.ngroups
        B, C = B.repeat_interleave(per_group, dim=1), C.repeat_interleave(per_group, dim=1)  # (batch, heads, n)
        dt = F.softplus(dt.to(work) + self.dt_bias.to(work))  # (batch, heads)
        decay = torch.exp(dt * -torch.exp(self.A_log.to(work)))
        H = decay[:, :, None, None] * state["ssm"] + (dt[:, :, None] * x)[..., None] * B[:, :, None, :]
        y = torch.einsum("bhpn,bhn->bhp", H, C) + self.D.to(work)[:, None] * x
        return self._out(y.to(u_t.dtype), z), {"conv": conv_state, "ssm": H, "pos": state["pos"] + 1}

    def _step_fused(self, u_t: torch.Tensor, state: dict[str, Any], conv_update, state_update):
        """``step`` through one-token kernels (``DECODE_KERNELS``) updating ``state["conv"]`` and
        ``state["ssm"]`` in place.

        The kernel takes per-channel ``A``, ``dt``, ``dt_bias`` and ``D``: the per-head values are
        broadcast over ``headdim`` (expanded views, no copies), as mamba-ssm's own ``Mamba2.step``.
        """
        z, xbc, dt = self._split(self.in_proj(u_t))
        conv = self.conv.conv
        x, B, C = self._heads(conv_update(xbc, state["conv"], conv.weight.squeeze(1), conv.bias, "silu"))
        work, per_head = state["ssm"].dtype, (self.heads, self.headdim)
        y = state_update(
            state["ssm"],
            x,
            dt[:, :, None].expand(-1, *per_head),
            -torch.exp(self.A_log.to(work))[:, None, None].expand(*per_head, self.d_state),
            B,
            C,
            self.D.to(work)[:, None].expand(per_head),
            dt_bias=self.dt_bias.to(work)[:, None].expand(per_head),
            dt_softplus=True,
        )
        return self._out(y.to(u_t.dtype), z), {**state, "pos": state["pos"] + 1}

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs of one sequence as ``FlopCounterMode`` counts the torch backend (2 per MAC).

        Counted: ``in_proj``, the depthwise conv, ``out_proj`` and the matmuls of the chunked SSD
        algorithm (``mixbench_kernels.ssd.ssd_flops``: ``C B^T`` per chunk, the masked diagonal blocks,
        chunk states and entry-state read-out, over the chunk-padded length). Not counted, by
        the project convention: element-wise work (decays, the loop across chunks, the gated norm).
        """
        projections = 2 * seq_len * self.d_model * (self.in_proj.out_features + self.d_inner)
        scan = ssd_flops(seq_len, self.heads, self.headdim, self.d_state, self.ngroups, self.chunk_size)
        return projections + self.conv.flops(seq_len) + scan

    def state_size(self, seq_len: int) -> int:
        return self.conv.state_size(seq_len) + self.heads * self.headdim * self.d_state
