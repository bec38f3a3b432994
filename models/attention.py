"""Causal multi-head softmax attention with rotary embeddings (the Transformer baseline).

Backends, fastest first: ``flash-attn`` (FlashAttention-2: CUDA, fp16/bf16 inputs only) and
``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``, everywhere, any dtype). The
choice is made per call from the device and the dtype of q (bf16 training and evaluation under
autocast run flash-attn on a GPU; float32 latency rows run sdpa). Both compute exactly causal softmax
attention; ``tests/models/test_attention.py`` checks sdpa against a naive float64 reference,
and flash-attn against sdpa where a GPU is present.

Decode keeps K and V in a preallocated cache (two tensors of ``(batch, heads, capacity,
head_dim)``, not views of the QKV projection) and writes each new token in place; the capacity
grows geometrically, so a token costs O(1) amortised copies instead of a copy of the whole
cache. ``step`` is ``forward`` on one token against the cache, so prefill and decode run the
same backend.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import apply_rotary, rotary_cos_sin
from models.mixer import Backend, SequenceMixer, always, needs_cuda_module
from models.registry import register_mixer

KV_SPARE = 256  # positions a cache reserves past what it holds, so decode after a prefill does not copy at once


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FlashAttention-2 on ``(batch, heads, seq, head_dim)`` tensors; imported lazily (CUDA only)."""
    from flash_attn import flash_attn_func

    # With fewer queries than keys (decode, a continued prefill) flash-attn aligns the causal
    # mask bottom-right: query i sees keys up to i + (keys - queries), as the cache needs.
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal sdpa where the ``t`` queries are the last ``t`` of the ``s`` keys' positions."""
    t, s = q.shape[2], k.shape[2]
    if t == s:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # sdpa's causal mask is top-left
    if t == 1:
        return F.scaled_dot_product_attention(q, k, v)  # one query sees every cached key
    mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def reserve(cache: torch.Tensor, filled: int, needed: int) -> torch.Tensor:
    """``cache`` if it holds ``needed`` positions, else a larger one holding its first ``filled``.

    The new capacity is at least double the old one, so appending token by token costs O(1)
    amortised copies.
    """
    capacity = cache.shape[2]
    if needed <= capacity:
        return cache
    b, h, _, hd = cache.shape
    grown = cache.new_empty(b, h, max(needed + KV_SPARE, 2 * capacity), hd)
    grown[:, :, :filled] = cache[:, :, :filled]
    return grown


@register_mixer("attention")
class Attention(SequenceMixer):
    """Llama-style attention: fused QKV projection, RoPE on Q and K, output projection.

    ``n_kv_heads`` below ``n_heads`` is grouped-query attention (Llama 2/3, SmolLM): each key/value
    head serves ``n_heads / n_kv_heads`` consecutive query heads, and the decode cache holds only
    the key/value heads. It is a model-level setting (it comes with the size, like ``n_heads``),
    so it is not one of the mixer's defaults and leaves every existing run key as it was.
    """

    backends = (
        Backend("flash-attn", needs_cuda_module("flash_attn", "flash_attn_2_cuda"), (torch.float16, torch.bfloat16)),
        Backend("sdpa", always),
    )
    attends_to_context = True  # the classic "6ND + attention" FLOPs estimate counts this layer

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        rope_base: float = 10000.0,
        backend: str = "auto",
        n_kv_heads: int | None = None,
    ) -> None:
        super().__init__(backend)
        if d_model % n_heads:
            raise ValueError(f"attention: d_model {d_model} is not divisible by n_heads {n_heads}")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"attention: n_kv_heads {n_kv_heads} does not divide n_heads {n_heads}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.n_kv_heads, self.kv_dim = n_kv_heads, n_kv_heads * self.head_dim
        self.rope_base = rope_base
        self.qkv = nn.Linear(d_model, d_model + 2 * self.kv_dim, bias=False)  # rows: q, then k, then v
        self.out = nn.Linear(d_model, d_model, bias=False)
        for lin in (self.qkv, self.out):
            nn.init.normal_(lin.weight, std=0.02)

    def _heads(self, x: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``(batch, seq, d)`` to rotated q ``(batch, heads, seq, head_dim)``, k and v (``kv_heads``)."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        q, k, v = (y.view(b, t, -1, self.head_dim).transpose(1, 2) for y in (q, k, v))
        positions = torch.arange(start, start + t, device=x.device)
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_base, dtype=q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = y.shape
        return self.out(y.transpose(1, 2).reshape(b, t, self.d_model))

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        """Whole sequence; with a decode state, continues it (writing K and V into its cache)."""
        pos = 0 if state is None else state["pos"]
        q, k, v = self._heads(x, pos)
        if state is not None:
            end = pos + x.shape[1]
            k_cache, v_cache = (reserve(state[name], pos, end) for name in ("k", "v"))
            k_cache[:, :, pos:end] = k
            v_cache[:, :, pos:end] = v
            k, v = k_cache[:, :, :end].to(q.dtype), v_cache[:, :, :end].to(q.dtype)
            state = {"k": k_cache, "v": v_cache, "pos": end}
        if self.select_backend(q.device, q.dtype) == "flash-attn":
            y = flash_attention(q, k, v)  # takes fewer key/value heads as they are
        else:
            group = self.n_heads // self.n_kv_heads
            if group > 1:
                k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            y = sdpa_attention(q, k, v)
        return self._merge(y), state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        def empty() -> torch.Tensor:
            return torch.zeros(batch_size, self.n_kv_heads, 0, self.head_dim, device=device, dtype=dtype)

        return {"k": empty(), "v": empty(), "pos": 0}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        """One token against the cache: writes its K and V at ``pos`` in place (see ``reserve``)."""
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def flops(self, seq_len: int) -> int:
        d = self.d_model
        projections = 2 * seq_len * d * (2 * d + 2 * self.kv_dim)  # q, k, v and out
        # QK^T and AV over the full T x T score matrix: what sdpa's math path and
        # torch.utils.flop_counter count (a causal kernel skips about half of it).
        scores = 2 * 2 * seq_len * seq_len * d
        return projections + scores

    def state_size(self, seq_len: int) -> int:
        return 2 * seq_len * self.kv_dim  # the KV cache grows with the context (spare capacity not counted)
