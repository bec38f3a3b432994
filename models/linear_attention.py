"""``linear_attention``: causal linear attention, the family TTT belongs to (TTT paper, Theorem 1).

Per head, ``o_t = scale * q_t S_t`` with ``S_t = S_{t-1} + k_t^T v_t``: no feature map and no
normaliser, exactly the form the theorem equates with TTT-Linear trained by batch gradient descent
from ``W_0 = 0`` (no LayerNorm, residual or bias). Around it: Q, K, V projections, a LayerNorm over
all heads (the stand-in for the missing normaliser, as TTT's post-norm) and the output projection.

``LinearFamilyMixer`` is that outer layer, shared with ``deltanet``: a subclass names its kernels
and any per-token inputs beyond Q, K, V. Backends: ``fla`` (fla's Triton kernel, with fla and a
CUDA device), ``chunked`` (``kernels/``, pure PyTorch), ``reference`` (token at a time; selectable,
never picked by ``auto``).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import nn

from mixbench_kernels.linear_attention import (
    linear_attention_chunked,
    linear_attention_fla,
    linear_attention_flops,
    linear_attention_reference,
)
from models.mixer import Backend, SequenceMixer, always, needs_cuda_module
from models.registry import register_mixer

FAMILY_BACKENDS = (
    Backend("fla", needs_cuda_module("fla")),
    Backend("chunked", always),
    Backend("reference", always),
)


class LinearFamilyMixer(SequenceMixer):
    """Q, K, V projections -> a matrix-state recurrence per head -> LayerNorm -> output projection."""

    backends = FAMILY_BACKENDS
    kernels: ClassVar[dict[str, Callable]]  # backend name -> kernel(q, k, v, *extra, initial_state, scale)

    def __init__(self, d_model: int, n_heads: int, chunk_size: int, backend: str) -> None:
        super().__init__(backend)
        name = type(self).__name__
        if d_model % n_heads:
            raise ValueError(f"{name}: d_model {d_model} is not divisible by n_heads {n_heads}")
        if chunk_size < 1:
            raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
        self.d_model, self.n_heads, self.head_dim, self.chunk_size = d_model, n_heads, d_model // n_heads, chunk_size
        self.scale = self.head_dim**-0.5
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = nn.Linear(d_model, d_model, bias=False)
            nn.init.normal_(lin.weight, std=0.02)
            setattr(self, proj, lin)
        self.post_norm = nn.LayerNorm(d_model, eps=1e-6)

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The kernel's per-token inputs, ``(batch, heads, seq, ...)``: Q, K, V here."""
        heads = (x.shape[0], x.shape[1], self.n_heads, self.head_dim)
        return tuple(p(x).reshape(heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        batch, seq, _ = x.shape
        backend = self.select_backend(x.device)
        kernel = self.kernels[backend]
        opts = {"chunk_size": self.chunk_size} if backend == "chunked" else {}
        o, final = kernel(*self._inputs(x), None if state is None else state["S"], self.scale, **opts)
        y = self.o_proj(self.post_norm(o.transpose(1, 2).reshape(batch, seq, self.d_model)))
        return y, (None if state is None else {"S": final})

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        return {"S": torch.zeros(batch_size, self.n_heads, self.head_dim, self.head_dim, device=device, dtype=dtype)}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def state_size(self, seq_len: int) -> int:
        return self.n_heads * self.head_dim * self.head_dim

    def _projection_flops(self, seq_len: int) -> int:
        return 2 * seq_len * self.d_model * self.d_model * 4  # Q, K, V, O


@register_mixer("linear_attention")
class LinearAttention(LinearFamilyMixer):
    """Causal linear attention (module doc)."""

    kernels = {
        "fla": linear_attention_fla,
        "chunked": linear_attention_chunked,
        "reference": linear_attention_reference,
    }

    def __init__(
        self, d_model: int, layer_idx: int = 0, n_heads: int = 4, chunk_size: int = 64, backend: str = "auto"
    ) -> None:
        super().__init__(d_model, n_heads, chunk_size, backend)

    def flops(self, seq_len: int) -> int:
        """Matmul FLOPs of the chunked form (2 per multiply-add)."""
        hd = self.head_dim
        return self._projection_flops(seq_len) + linear_attention_flops(seq_len, self.n_heads, hd, hd, self.chunk_size)
