"""Causal multi-head softmax attention with rotary embeddings (the Transformer baseline).

Backends, fastest first: ``flash-attn`` (FlashAttention-2, CUDA only) and ``sdpa``
(``torch.nn.functional.scaled_dot_product_attention``, everywhere). Both compute exactly
causal softmax attention; ``tests/models/test_attention.py`` checks sdpa against a naive
float64 reference, and flash-attn against sdpa where a GPU is present.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import apply_rotary, rotary_cos_sin
from models.mixer import Backend, SequenceMixer, always, needs_cuda_module
from models.registry import register_mixer


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-2 on ``(batch, heads, seq, head_dim)`` tensors; imported lazily (CUDA only)."""
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


@register_mixer("attention")
class Attention(SequenceMixer):
    """Llama-style attention: fused QKV projection, RoPE on Q and K, output projection."""

    backends = (Backend("flash-attn", needs_cuda_module("flash_attn")), Backend("sdpa", always))
    attends_to_context = True  # the classic "6ND + attention" FLOPs estimate counts this layer

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        rope_base: float = 10000.0,
        backend: str = "auto",
    ) -> None:
        super().__init__(backend)
        if d_model % n_heads:
            raise ValueError(f"attention: d_model {d_model} is not divisible by n_heads {n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.rope_base = rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        for lin in (self.qkv, self.out):
            nn.init.normal_(lin.weight, std=0.02)

    def _heads(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``(batch, seq, d)`` to rotated q, k and v of shape ``(batch, heads, seq, head_dim)``."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        positions = torch.arange(start, start + t, device=x.device)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_base, dtype=q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.d_model))

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        q, k, v = self._heads(x, 0)
        if self.select_backend(x.device) == "flash-attn":
            y = flash_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if state is not None:
            state = {"k": k, "v": v, "pos": x.shape[1]}
        return self._merge(y), state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        empty = torch.zeros(batch_size, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return {"k": empty, "v": empty, "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        q, k, v = self._heads(x_t.unsqueeze(1), state["pos"])
        keys = torch.cat([state["k"], k], dim=2)
        values = torch.cat([state["v"], v], dim=2)
        y = F.scaled_dot_product_attention(q, keys, values)  # one query sees every cached key
        return self._merge(y).squeeze(1), {"k": keys, "v": values, "pos": state["pos"] + 1}

    def flops(self, seq_len: int) -> int:
        d = self.d_model
        projections = 2 * seq_len * d * 4 * d
        # QK^T and AV over the full T x T score matrix: what sdpa's math path and
        # torch.utils.flop_counter count (a causal kernel skips about half of it).
        scores = 2 * 2 * seq_len * seq_len * d
        return projections + scores

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.d_model  # the KV cache grows with the context
