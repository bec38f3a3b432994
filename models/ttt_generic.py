"""``ttt``: a TTT layer whose hidden state is any model, trained by any inner optimizer.

The paper's central idea (Sun et al. 2024, §2): the hidden state of an RNN layer can be a model,
updated by a step of self-supervised learning per token. TTT-Linear and TTT-MLP fix that model
and plain gradient descent; here both are suite settings:

* ``inner``: ``linear`` or ``mlp`` (the built-ins, with their weights named as in ``ttt_linear`` /
  ``ttt_mlp``), or any ``nn.Module`` by dotted path ``package.module:Class``, built per head as
  ``Class(head_dim, **inner_kwargs)`` and mapping ``(..., head_dim) -> (..., head_dim)``;
* ``inner_optimizer``: ``gd``, ``momentum`` or ``adam`` (``mixbench_kernels.ttt.optim``), whose moments
  travel in the decode state.

Everything else is the built-in layer's (``models.ttt.TTTLayer``, reused): projections, RoPE within
the mini-batch, the learnable inner learning rate and per-position scale, the post-norm, gate and
output projection, and the paper's mini-batch scheme for every combination. Two backends:
``dual`` (the built-ins' fast dual form: ``linear|mlp`` with ``gd`` only) and ``generic``
(``mixbench_kernels.ttt.generic``: gradients by ``torch.func``, any inner model and optimizer). With
``inner: linear|mlp`` and ``gd`` both compute the built-in TTT-Linear / TTT-MLP.

The knobs ``inner_layer_norm``, ``inner_residual`` and ``inner_bias`` (built-ins only) exist for
the paper's Theorem 1: without them, at ``mini_batch_size: 1``, TTT-Linear is linear attention.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.ttt import fresh_state, ttt_dual
from mixbench_kernels.ttt.generic import InnerFn, dense_stack, ttt_generic
from mixbench_kernels.ttt.optim import InnerOptimizer, fresh_generic_state
from models.mixer import Backend, always
from models.registry import register_mixer
from models.ttt import TTTLayer

BUILTIN_INNER = {"linear": (), "mlp": (4,)}  # hidden widths, in multiples of head_dim


def load_inner_model(path: str) -> type[nn.Module]:
    """The class named by ``package.module:Class``, with one clear line when it is not there."""
    module_name, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"ttt: cannot load inner model {path!r} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"ttt: inner model {path!r} is not an nn.Module subclass")
    return cls


def inner_call_text(cls: type, kwargs: dict[str, Any] | None) -> str:
    """How the layer calls an inner model's class, for error messages."""
    return f"{cls.__name__}(head_dim{''.join(f', {k}={v!r}' for k, v in (kwargs or {}).items())})"


def module_inner_fn(modules: list[nn.Module]) -> tuple[dict[str, torch.Tensor], InnerFn]:
    """Per-head copies of a module -> their stacked initial parameters and a pure ``InnerFn``."""
    if any(True for _ in modules[0].buffers()):
        raise ValueError(f"ttt: inner model {type(modules[0]).__name__} has buffers; only parameters can be trained")
    params, _ = stack_module_state(modules)
    skeleton = copy.deepcopy(modules[0]).to("meta")  # the code, without storage
    names = list(params)

    def fn(p: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, dict(zip(names, p)), (x,))

    return params, fn


@register_mixer("ttt")
class TTT(TTTLayer):
    """TTT with a pluggable inner model and inner optimizer (settings in the module doc)."""

    backends = (Backend("dual", always), Backend("generic", always))

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        backbone: str = "transformer",
        inner: str = "linear",
        inner_optimizer: str = "gd",
        inner_kwargs: dict[str, Any] | None = None,
        mini_batch_size: int = 16,
        base_lr: float | None = None,  # None: the paper's 1.0 for a linear inner model, 0.1 otherwise
        beta1: float = 0.9,
        beta2: float = 0.999,
        adam_lr: float = 1e-2,
        eps: float = 1e-6,
        inner_layer_norm: bool = True,
        inner_residual: bool = True,
        inner_bias: bool = True,
        rope_base: float = 10000.0,
        conv_kernel: int = 4,
        backend: str = "auto",
    ) -> None:
        builtin = inner in BUILTIN_INNER
        if not builtin and ":" not in inner:
            raise ValueError(f"ttt: inner {inner!r} is not 'linear', 'mlp' or a dotted path 'package.module:Class'")
        if not builtin and not inner_bias:
            raise ValueError("ttt: inner_bias applies to the built-in inner models; a custom one defines its own")
        if builtin and inner_kwargs:
            raise ValueError(f"ttt: inner_kwargs applies to a custom inner model, not to {inner!r}")
        head_dim = d_model // max(n_heads, 1)
        hidden = tuple(m * head_dim for m in BUILTIN_INNER.get(inner, ()))
        lr = base_lr if base_lr is not None else (1.0 if inner == "linear" else 0.1)
        super().__init__(
            d_model, layer_idx, n_heads, backbone, hidden, mini_batch_size, lr, rope_base, conv_kernel, backend
        )
        self.inner, self.optimizer = inner, InnerOptimizer(inner_optimizer, beta1, beta2, adam_lr, eps)
        self.inner_layer_norm, self.inner_residual, self.inner_bias = inner_layer_norm, inner_residual, inner_bias
        self.use_dual = builtin and inner_optimizer == "gd"
        if backend == "dual" and not self.use_dual:
            raise ValueError(
                f"ttt: backend 'dual' needs inner linear|mlp with inner_optimizer gd, not {inner}/{inner_optimizer}"
            )
        if not inner_layer_norm:
            del self.ttt_norm_weight, self.ttt_norm_bias
        if builtin:  # the dense stack's W1, b1 (, W2, b2) made by TTTLayer are the initial weights
            if not inner_bias:
                for i in range(1, self.n_inner + 1):
                    delattr(self, f"b{i}")
            self.inner_names = [f"{p}{i}" for i in range(1, self.n_inner + 1) for p in ("Wb" if inner_bias else "W")]
            self._inner_fn = dense_stack(inner_bias)
        else:
            del self.W1, self.b1
            cls = load_inner_model(inner)
            try:
                modules = [cls(head_dim, **(inner_kwargs or {})) for _ in range(n_heads)]
            except TypeError as exc:
                call = inner_call_text(cls, inner_kwargs)
                raise ValueError(f"ttt: cannot build inner model {inner!r} as {call}: {exc}") from exc
            probe = modules[0](torch.zeros(2, head_dim))
            if probe.shape != (2, head_dim):
                shapes = f"(2, {head_dim}) to {tuple(probe.shape)}, not (2, {head_dim})"
                raise ValueError(f"ttt: inner model {inner!r} maps {shapes}")
            params, self._inner_fn = module_inner_fn(modules)
            self.inner_names = list(params)
            self.inner_init = nn.ParameterList(nn.Parameter(p) for p in params.values())
        self._flop_cache: dict[tuple[str, int], int] = {}

    def select_backend(self, device: torch.device, dtype: torch.dtype | None = None, decode: bool = False) -> str:
        if self.backend == "auto" and not self.use_dual:
            return "generic"
        return super().select_backend(device, dtype, decode)

    # -- the inner learner's state -------------------------------------------------------------

    def _inner_init(self) -> tuple[torch.Tensor, ...]:
        """The inner model's initial parameters, ``(heads, ...)`` each."""
        if hasattr(self, "inner_init"):
            return tuple(self.inner_init)
        return tuple(getattr(self, n) for n in self.inner_names)

    def _fresh_inner(self, form: str, batch: int, device=None, dtype=None):
        init = tuple(p.unsqueeze(0).expand(batch, *p.shape).to(device=device, dtype=dtype) for p in self._inner_init())
        if form == "generic":
            return fresh_generic_state(init, self.optimizer)
        layers = tuple(zip(init[::2], init[1::2])) if self.inner_bias else tuple((w, None) for w in init)
        return fresh_state(layers)

    def _inner_loop(self, form: str, q, k, v, lr, inner):
        ln = {}
        if self.inner_layer_norm:
            shape = (self.n_heads, 1, self.head_dim)
            ln = dict(
                ln_weight=self.ttt_norm_weight.reshape(shape).to(q.dtype),
                ln_bias=self.ttt_norm_bias.reshape(shape).to(q.dtype),
            )
        opts = dict(token_scale=self.token_scale().to(q.dtype), residual=self.inner_residual, **ln)
        if form == "dual":
            return ttt_dual(q, k, v, lr, inner, **opts)
        return ttt_generic(q, k, v, lr, inner, inner_fn=self._inner_fn, optimizer=self.optimizer, **opts)

    # -- the contract ------------------------------------------------------------------------

    def flops(self, seq_len: int) -> int:
        """The built-ins' analytic count on the dual form; otherwise the projections analytically and
        the inner loop counted once per chunk length on a probe chunk (any inner model: no formula)."""
        form = self.select_backend(torch.device("cpu"))
        if form == "dual" and self.inner_bias and self.inner_layer_norm and self.inner_residual:
            return super().flops(seq_len)
        d, h, b = self.d_model, self.n_heads, self.mini_batch_size
        total = 2 * seq_len * d * d * 4 + 2 * seq_len * d * h  # Q, K or gate, V, O; learning-rate gate
        if self.share_qk:
            total += self.conv_q.flops(seq_len) + self.conv_k.flops(seq_len)
        full, rest = divmod(seq_len, b)
        total += full * self._chunk_flops(form, b) if full else 0
        return total + (self._chunk_flops(form, rest) if rest else 0)

    def _chunk_flops(self, form: str, n: int) -> int:
        if (form, n) not in self._flop_cache:
            p = next(self.parameters())
            q, k, v = torch.randn(3, 1, self.n_heads, n, self.head_dim, device=p.device, dtype=p.dtype).unbind(0)
            lr = torch.full((1, self.n_heads, n), 0.1, device=p.device, dtype=p.dtype)
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                self._inner_loop(form, q, k, v, lr, self._fresh_inner(form, 1))
            self._flop_cache[(form, n)] = counter.get_total_flops()
        return self._flop_cache[(form, n)]

    def state_size(self, seq_len: int) -> int:
        inner = sum(p.numel() for p in self._inner_init())
        copies = 2 + (self.optimizer.n_moments if self.select_backend(torch.device("cpu")) == "generic" else 0)
        convs = self.conv_q.state_size(seq_len) + self.conv_k.state_size(seq_len) if self.share_qk else 0
        return copies * inner + convs  # weights at the mini-batch start, gradient sum so far, moments
