"""fla's own layers as mixers: GLA, RWKV-6/7, DeltaNet, Gated DeltaNet, RetNet, HGRN2 (``fla_<name>``).

Registered only when flash-linear-attention (``fla``) is installed, and without importing it:
``import fla`` takes seconds and its Triton kernels need a CUDA device, so every entry lists in
``mixbench mixers`` with the ``fla`` backend's reason when it cannot run here, and the layer
itself is built on first use. Each mixer owns an fla ``Cache`` as its decode state, and builds its
layer as fla's layer 0 (so the cache index is always 0; RWKV-7 then uses its own values as the
cross-layer "first values", a simplification of the full model's value residual).

The contract's numbers are estimates here, not counts (the Triton kernels are invisible to
``torch.utils.flop_counter``): ``flops`` = ``2 x parameters`` per token (the projections) plus one
write and one read of the recurrent state per token; ``state_size`` counts the recurrent state
only (short-convolution and token-shift buffers are left out).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, ClassVar

import torch

from models.mixer import Backend, SequenceMixer, needs_cuda_module
from models.registry import register_mixer

# mixbench name -> (fla class, its constructor arguments beyond hidden_size/num_heads/layer_idx,
# from (head_dim, n_layers))
FLA_LAYERS: dict[str, tuple[str, Any]] = {
    "fla_gla": ("fla.layers:GatedLinearAttention", lambda hd, n: {}),
    "fla_rwkv6": ("fla.layers:RWKV6Attention", lambda hd, n: {}),
    "fla_rwkv7": ("fla.layers:RWKV7Attention", lambda hd, n: {"head_dim": None, "num_hidden_layers": max(n, 2)}),
    "fla_deltanet": ("fla.layers:DeltaNet", lambda hd, n: {}),
    "fla_gated_deltanet": ("fla.layers:GatedDeltaNet", lambda hd, n: {"head_dim": hd}),
    "fla_retnet": ("fla.layers:MultiScaleRetention", lambda hd, n: {}),
    "fla_hgrn2": ("fla.layers:HGRN2Attention", lambda hd, n: {"expand_ratio": hd}),
}


def recurrent_state_size(layer: torch.nn.Module) -> int:
    """``heads x d_k x d_v`` of an fla layer, from the attribute names fla's layers use."""
    heads = getattr(layer, "num_v_heads", None) or layer.num_heads
    d_k = getattr(layer, "head_k_dim", None) or getattr(layer, "head_dim", None) or layer.expand_ratio
    d_v = getattr(layer, "head_v_dim", None) or layer.input_dim // layer.num_heads
    return heads * d_k * d_v


class FlaMixer(SequenceMixer):
    """One of fla's layers behind the mixer contract; subclasses name the layer (``fla_path``)."""

    backends = (Backend("fla", needs_cuda_module("fla")),)
    fla_path: ClassVar[str]
    fla_extra: ClassVar[Any]

    def __init__(
        self,
        d_model: int,
        layer_idx: int = 0,
        n_heads: int = 4,
        n_layers: int = 1,
        backbone: str = "transformer",
        backend: str = "auto",
        **layer_kwargs: Any,
    ) -> None:
        super().__init__(backend)
        module_name, _, attr = self.fla_path.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RuntimeError(f"{type(self).__name__}: cannot load {self.fla_path} ({exc})") from exc
        kwargs = {"hidden_size": d_model, "num_heads": n_heads, "layer_idx": 0}
        self.layer = cls(**{**kwargs, **self.fla_extra(d_model // n_heads, n_layers), **layer_kwargs})

    def forward(self, x: torch.Tensor, state: dict[str, Any] | None = None):
        reason = self.backends[0].unavailable_reason(x.device)
        if reason is not None:  # one clear line instead of a Triton error
            raise RuntimeError(f"{type(self).__name__}: fla cannot run here: {reason}")
        cache = None if state is None else state["cache"]
        out = self.layer(x, past_key_values=cache, use_cache=state is not None)
        return out[0], state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        from fla.models.utils import Cache

        return {"cache": Cache()}

    def step(self, x_t: torch.Tensor, state: dict[str, Any]):
        y, state = self.forward(x_t.unsqueeze(1), state)
        return y.squeeze(1), state

    def flops(self, seq_len: int) -> int:
        n_params = sum(p.numel() for p in self.layer.parameters())
        return seq_len * (2 * n_params + 4 * recurrent_state_size(self.layer))

    def state_size(self, seq_len: int) -> int:
        return recurrent_state_size(self.layer)


def register_fla_layers() -> list[str]:
    """Register every ``FLA_LAYERS`` entry when fla is installed; returns the names registered."""
    if importlib.util.find_spec("fla") is None:
        return []
    for name, (path, extra) in FLA_LAYERS.items():
        cls_name = "Fla" + path.rpartition(":")[2]
        body = {"fla_path": path, "fla_extra": staticmethod(extra), "__doc__": f"fla's {path}."}
        cls = type(cls_name, (FlaMixer,), body)
        register_mixer(name, origin="fla")(cls)
    return list(FLA_LAYERS)


register_fla_layers()
