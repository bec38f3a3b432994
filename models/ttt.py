"""TTT-Linear and TTT-MLP: RNN layers whose hidden state is a model trained at test time.

Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States"
(arXiv 2407.04620), matching the official PyTorch code (``ttt-lm-pytorch/ttt.py``). Per head of
size ``head_dim = d_model / n_heads``, an inner model ``f(x) = x + LN(dense stack(x))`` (TTT-Linear:
one ``head_dim x head_dim`` layer; TTT-MLP: ``head_dim -> 4 head_dim -> head_dim`` with GELU)
is trained by mini-batch gradient descent on ``1/2 ||LN(f_core(k)) - (v - k)||^2`` as the
sequence goes by, and the layer outputs ``f(q_t; W_t)``. The inner loop lives in
``kernels/ttt`` (dual form, and the primal reference beside it); this file is the outer layer:

* learned projections: ``transformer`` backbone: separate Q, K, V; ``mamba`` backbone: one
  projection shared by Q and K, then separate causal depthwise convs (kernel 4), and a GELU
  output gate (the official ``share_qk`` + ``use_gate``);
* RoPE on Q and K at the position *within* the mini-batch (position mod b), in the official
  code's adjacent-pair layout;
* inner learning rate ``base_lr * sigmoid(x theta_lr + b_lr) / head_dim`` per head and token,
  times ``max(1/i + offset_i, 0)`` at position ``i`` of the mini-batch (learnable offsets);
* post-LayerNorm over all heads, the gate, the output projection.

A sequence whose length is not a multiple of b ends in a partial mini-batch: its tokens are
the first tokens of a mini-batch (gradients at that mini-batch's ``W_0``, scales ``1/1 .. 1/r``),
exactly what token-by-token decode computes, and the returned state continues it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mixbench_kernels.ttt import fresh_state, triton_unavailable_reason, ttt
from models.layers import CausalDepthwiseConv, rotary_cos_sin
from models.mixer import Backend, SequenceMixer, always
from models.registry import register_mixer


def _state_in(state: tuple, dtype: torch.dtype) -> tuple:
    """``state`` (any TTT state tuple: ``TTTState``, the generic layer's) with every tensor in ``dtype``."""

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.to(dtype)
        if isinstance(x, tuple):
            parts = [cast(part) for part in x]
            return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
        return x

    return cast(state)


def rotary_adjacent_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE rotating dims ``(2i, 2i+1)`` together, as the official TTT code (EasyLM layout) does.

    Same angles as ``models.layers.apply_rotary``, which pairs ``(i, i + head_dim/2)`` instead;
    ``cos``/``sin`` are the tables of ``rotary_cos_sin`` (their two halves are equal).
    """
    half = x.shape[-1] // 2
    c, s = cos[..., :half], sin[..., :half]
    even, odd = x.unflatten(-1, (half, 2)).unbind(-1)
    return torch.stack((even * c - odd * s, odd * c + even * s), dim=-1).flatten(-2)


class TTTLayer(SequenceMixer):
    """The shared outer layer; a subclass only names its inner model's hidden widths."""

    backends = (
        Backend("triton", triton_unavailable_reason),  # also step(): one fused launch per token
        Backend("dual", always),
        Backend("primal", always),  # the reference: selectable, never picked by "auto"
    )

    def __init__(
        self,
        d_model: int,
        layer_idx: int,
        n_heads: int,
        backbone: str,
        inner_hidden: tuple[int, ...],
        mini_batch_size: int,
        base_lr: float,
        rope_base: float,
        conv_kernel: int,
        backend: str,
    ) -> None:
        super().__init__(backend)
        name = type(self).__name__
        if d_model % n_heads:
            raise ValueError(f"{name}: d_model {d_model} is not divisible by n_heads {n_heads}")
        if (d_model // n_heads) % 2:
            raise ValueError(f"{name}: head_dim {d_model // n_heads} must be even for rotary embeddings")
        if backbone not in ("transformer", "mamba"):
            raise ValueError(f"{name}: backbone {backbone!r} has no TTT form; use 'transformer' or 'mamba'")
        if mini_batch_size < 1:
            raise ValueError(f"{name}: mini_batch_size must be >= 1, got {mini_batch_size}")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.layer_idx, self.mini_batch_size = layer_idx, mini_batch_size
        self.base_lr, self.rope_base = base_lr, rope_base
        self.share_qk = self.use_gate = backbone == "mamba"
        h, hd = n_heads, self.head_dim

        def linear() -> nn.Linear:
            lin = nn.Linear(d_model, d_model, bias=False)
            nn.init.normal_(lin.weight, std=0.02)  # the official code's _init_weights
            return lin

        self.q_proj, self.v_proj, self.o_proj = linear(), linear(), linear()
        if self.share_qk:  # one projection for Q and K, which part ways through their own convs
            self.conv_q = CausalDepthwiseConv(d_model, conv_kernel)
            self.conv_k = CausalDepthwiseConv(d_model, conv_kernel)
        else:
            self.k_proj = linear()
        if self.use_gate:
            self.g_proj = linear()

        # Inner learning rate gate (§2.7) and the per-position scale 1/i with a learnable offset.
        self.lr_weight = nn.Parameter(torch.randn(h, d_model) * 0.02)
        self.lr_bias = nn.Parameter(torch.zeros(h))
        self.learnable_token_idx = nn.Parameter(torch.zeros(mini_batch_size))

        # The inner model: per-head LayerNorm and dense layers W1, b1 (, W2, b2), named as in the
        # official code; TTT-Linear and TTT-MLP differ only in the widths.
        self.ttt_norm_weight = nn.Parameter(torch.ones(h, hd))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(h, hd))
        widths = (hd, *inner_hidden, hd)
        self.n_inner = len(widths) - 1
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            setattr(self, f"W{i}", nn.Parameter(torch.randn(h, d_in, d_out) * 0.02))
            setattr(self, f"b{i}", nn.Parameter(torch.zeros(h, 1, d_out)))
        self.inner_widths = widths
        self.post_norm = nn.LayerNorm(d_model, eps=1e-6)

    # -- the pieces of forward ---------------------------------------------------------------

    def _initial_params(self, batch: int, dtype: torch.dtype | None = None) -> tuple:
        def tile(p: torch.Tensor) -> torch.Tensor:
            return p.unsqueeze(0).expand(batch, *p.shape).to(dtype or p.dtype)

        return tuple((tile(getattr(self, f"W{i}")), tile(getattr(self, f"b{i}"))) for i in range(1, self.n_inner + 1))

    def _qkv(self, x: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        convs: dict[str, Any] = {}
        if self.share_qk:
            shared = self.q_proj(x)
            q, convs["conv_q"] = self.conv_q(shared, None if state is None else state["conv_q"])
            k, convs["conv_k"] = self.conv_k(shared, None if state is None else state["conv_k"])
        else:
            q, k = self.q_proj(x), self.k_proj(x)
        heads = (x.shape[0], x.shape[1], self.n_heads, self.head_dim)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, self.v_proj(x)))
        return q, k, v, convs

    def _rope(self, q: torch.Tensor, k: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = (pos + torch.arange(q.shape[2], device=q.device)) % self.mini_batch_size
        cos, sin = rotary_cos_sin(positions, self.head_dim, self.rope_base, dtype=q.dtype)
        return rotary_adjacent_pairs(q, cos, sin), rotary_adjacent_pairs(k, cos, sin)

    def inner_lr(self, x: torch.Tensor) -> torch.Tensor:
        """``base_lr * sigmoid(x theta_lr + b_lr) / head_dim``: ``(batch, heads, seq)``."""
        gate = torch.sigmoid(F.linear(x, self.lr_weight, self.lr_bias)).transpose(1, 2)
        return self.base_lr * gate / self.head_dim

    def token_scale(self) -> torch.Tensor:
        """``max(1/i + offset_i, 0)`` for positions ``i = 1 .. b`` of a mini-batch."""
        offset = self.learnable_token_idx
        position = torch.arange(1, len(offset) + 1, device=offset.device, dtype=offset.dtype)
        return torch.clamp_min(1.0 / position + offset, 0.0)

    # -- the contract ------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        batch, seq, _ = x.shape
        q, k, v, convs = self._qkv(x, state)
        backend = self.select_backend(x.device, q.dtype)
        inner = state["ttt"] if state is not None else self._fresh_inner(backend, batch)
        q, k = self._rope(q, k, inner.pos)
        # The inner loop runs in float32 (or float64) whatever the autocast or model dtype, as the
        # paper's kernels keep the state in fp32: in bf16 the small updates of W would round away.
        # The Triton kernel reads bf16/fp16 inputs as they are and computes in float32 on chip;
        # casting them up front would only make its dots slower.
        work = torch.promote_types(q.dtype, torch.float32)
        inputs = q.dtype if backend == "triton" else work
        with torch.autocast(x.device.type, enabled=False):
            z, inner = self._inner_loop(
                backend, q.to(inputs), k.to(inputs), v.to(inputs), self.inner_lr(x).to(inputs), _state_in(inner, work)
            )
        z = z.to(q.dtype)
        y = self.post_norm(z.transpose(1, 2).reshape(batch, seq, self.d_model))
        if self.use_gate:
            y = F.gelu(self.g_proj(x), approximate="tanh") * y
        return self.o_proj(y), (None if state is None else {"ttt": inner, **convs})

    def _fresh_inner(
        self, backend: str, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple:
        """The inner learner's state before the first token (``backend`` picks its form)."""
        return fresh_state(
            tuple((w.to(device=device), b.to(device=device)) for w, b in self._initial_params(batch, dtype))
        )

    def _inner_loop(self, backend: str, q, k, v, lr, inner) -> tuple[torch.Tensor, tuple]:
        """``backend``'s inner loop over the tokens; inputs already in the dtype it computes in.

        Under ``torch.compile`` this is one custom op (``mixbench_kernels.ttt.op``): no graph break.
        """
        shape = (self.n_heads, 1, self.head_dim)
        return ttt(
            backend,
            q,
            k,
            v,
            lr,
            inner,
            token_scale=self.token_scale().to(q.dtype),
            ln_weight=self.ttt_norm_weight.reshape(shape).to(q.dtype),
            ln_bias=self.ttt_norm_bias.reshape(shape).to(q.dtype),
        )

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        work = torch.promote_types(dtype, torch.float32)  # the inner state is kept in float32 (see forward)
        state: dict[str, Any] = {"ttt": self._fresh_inner(self.select_backend(device, dtype), batch_size, device, work)}
        if self.share_qk:
            state["conv_q"] = self.conv_q.init_state(batch_size, device, dtype)
            state["conv_k"] = self.conv_k.init_state(batch_size, device, dtype)
        return state

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def flops(self, seq_len: int) -> int:
        """Matmul/conv FLOPs of the dual form from a fresh state (2 per multiply-add)."""
        d, h = self.d_model, self.n_heads
        total = 2 * seq_len * d * d * 4  # Q (shared with K on mamba), K or gate, V, O
        total += 2 * seq_len * d * h  # learning-rate gate
        if self.share_qk:
            total += self.conv_q.flops(seq_len) + self.conv_k.flops(seq_len)
        b = self.mini_batch_size
        chunks = [b] * (seq_len // b) + ([seq_len % b] if seq_len % b else [])
        for n in chunks:
            for i, (d_in, d_out) in enumerate(zip(self.inner_widths[:-1], self.inner_widths[1:])):
                dense = 2 * n * d_in * d_out
                # keys forward, queries forward, the update W_b (and b_b), and backprop below the top
                total += h * (3 * dense + (dense if i else 0) + 2 * n * d_out)
                total += h * 2 * n * n * (d_in + d_out)  # xq x^T and (eta * scores) @ g
        return total

    def state_size(self, seq_len: int) -> int:
        inner = sum(getattr(self, f"{p}{i}").numel() for i in range(1, self.n_inner + 1) for p in "Wb")
        convs = self.conv_q.state_size(seq_len) + self.conv_k.state_size(seq_len) if self.share_qk else 0
        return 2 * inner + convs  # weights at the mini-batch start + the gradient sum so far


@register_mixer("ttt_linear")
class TTTLinear(TTTLayer):
    """TTT-Linear: ``f(x) = x + LN(x W + b)`` per head."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        backbone: str = "transformer",
        mini_batch_size: int = 16,
        base_lr: float = 1.0,
        rope_base: float = 10000.0,
        conv_kernel: int = 4,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            d_model, layer_idx, n_heads, backbone, (), mini_batch_size, base_lr, rope_base, conv_kernel, backend
        )


@register_mixer("ttt_mlp")
class TTTMLP(TTTLayer):
    """TTT-MLP: ``f(x) = x + LN(gelu(x W1 + b1) W2 + b2)`` per head, hidden width 4x."""

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        backbone: str = "transformer",
        mini_batch_size: int = 16,
        base_lr: float = 0.1,
        rope_base: float = 10000.0,
        conv_kernel: int = 4,
        backend: str = "auto",
    ) -> None:
        hidden = (4 * (d_model // max(n_heads, 1)),)
        super().__init__(
            d_model, layer_idx, n_heads, backbone, hidden, mini_batch_size, base_lr, rope_base, conv_kernel, backend
        )
