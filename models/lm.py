"""The causal language model every mixer is measured in: embeddings, blocks, head.

``build(ModelSpec)`` is the only way the harness makes a model. The model offers the three
things the protocol needs: ``forward`` (training, evaluation), ``prefill`` + ``step``
(generation, decode latency), and its own accounting (parameters, FLOPs, state size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.backbones import Size, get_backbone, get_size
from models.layers import CausalDepthwiseConv, RMSNorm, SwiGLU
from models.registry import active_backend, build_mixer


def split_arch(arch: str) -> tuple[str, str]:
    """``"ttt_linear@mamba"`` -> ``("ttt_linear", "mamba")``; a dotted-path mixer may hold ``:`` and ``.``."""
    mixer, sep, backbone = arch.rpartition("@")
    if not sep or not mixer or not backbone:
        raise ValueError(f"{arch!r} must be written 'mixer@backbone', e.g. 'attention@transformer'")
    return mixer, backbone


@dataclass(frozen=True)
class ModelSpec:
    """What to build: ``mixer@backbone`` at a size, over a vocabulary.

    ``dims`` gives the dimensions outright for a model that is not in the size table (a
    published checkpoint brought in by ``mixbench import``); ``size`` then only names it, and
    ``dims.n_layers`` counts the blocks as built (no backbone multiplier), because a checkpoint
    fixes its own depth. ``norm_eps`` is the epsilon of every RMSNorm of the backbone (Llama and
    Mamba checkpoints use 1e-5; our trained models 1e-6).
    """

    mixer: str
    backbone: str
    size: str
    vocab_size: int
    mixer_overrides: dict[str, Any] = field(default_factory=dict)
    tie_embeddings: bool = True
    dims: Size | None = None
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if isinstance(self.dims, dict):  # read back from a checkpoint's model.json
            object.__setattr__(self, "dims", Size(**self.dims))

    @staticmethod
    def parse(arch: str, size: str, vocab_size: int, **kwargs: Any) -> "ModelSpec":
        """``"ttt_linear@mamba"`` at a size over a vocabulary -> a spec."""
        mixer, backbone = split_arch(arch)
        return ModelSpec(mixer=mixer, backbone=backbone, size=size, vocab_size=vocab_size, **kwargs)

    @property
    def arch(self) -> str:
        return f"{self.mixer}@{self.backbone}"

    @property
    def dimensions(self) -> Size:
        """Width, heads and MLP width: ``dims`` if given, else the size table's row."""
        return self.dims if self.dims is not None else get_size(self.size)

    @property
    def n_blocks(self) -> int:
        """Blocks as built: ``dims.n_layers``, or the size's Transformer count times the backbone's multiplier."""
        if self.dims is not None:
            return self.dims.n_layers
        return get_size(self.size).n_layers * get_backbone(self.backbone).layer_multiplier


class Block(nn.Module):
    """One layer: the backbone's sub-blocks, each ``x + sub(norm(x))``."""

    def __init__(self, spec: ModelSpec, layer_idx: int, n_layers: int) -> None:
        super().__init__()
        size, backbone = spec.dimensions, get_backbone(spec.backbone)
        self.kinds = backbone.sub_blocks
        self.norms = nn.ModuleList(RMSNorm(size.d_model, spec.norm_eps) for _ in self.kinds)
        model_kwargs = {
            "d_model": size.d_model,
            "layer_idx": layer_idx,
            "n_heads": size.n_heads,
            "n_layers": n_layers,
            "backbone": backbone.name,
        }
        if size.n_kv_heads is not None:  # only grouped-query sizes: a mixer taking **kwargs never sees it otherwise
            model_kwargs["n_kv_heads"] = size.n_kv_heads
        subs: list[nn.Module] = []
        for kind in self.kinds:
            if kind == "mixer":
                subs.append(build_mixer(spec.mixer, model_kwargs, spec.mixer_overrides))
            elif kind == "mlp":
                subs.append(SwiGLU(size.d_model, size.mlp_hidden))
            else:
                subs.append(CausalDepthwiseConv(size.d_model, kernel_size=4))
        self.subs = nn.ModuleList(subs)

    @property
    def mixer(self) -> nn.Module:
        return self.subs[self.kinds.index("mixer")]

    def forward(self, x: torch.Tensor, states: list[Any] | None = None) -> tuple[torch.Tensor, list[Any] | None]:
        new_states: list[Any] = []
        for i, (kind, norm, sub) in enumerate(zip(self.kinds, self.norms, self.subs)):
            if kind == "mlp":
                x = x + sub(norm(x))
                new_states.append(None)
            else:
                y, st = sub(norm(x), None if states is None else states[i])
                x = x + y
                new_states.append(st)
        return x, (new_states if states is not None else None)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> list[Any]:
        return [None if k == "mlp" else s.init_state(batch_size, device, dtype) for k, s in zip(self.kinds, self.subs)]

    def step(self, x: torch.Tensor, states: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        new_states: list[Any] = []
        for kind, norm, sub, st in zip(self.kinds, self.norms, self.subs, states):
            if kind == "mlp":
                x = x + sub(norm(x))
                new_states.append(None)
            else:
                y, st = sub.step(norm(x), st)
                x = x + y
                new_states.append(st)
        return x, new_states


class CausalLM(nn.Module):
    """Token embeddings -> blocks -> final RMSNorm -> LM head (tied to the embeddings by default)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        size, n_layers = spec.dimensions, spec.n_blocks
        self.embed = nn.Embedding(spec.vocab_size, size.d_model)
        self.blocks = nn.ModuleList(Block(spec, i, n_layers) for i in range(n_layers))
        self.norm = RMSNorm(size.d_model, spec.norm_eps)
        self.head = nn.Linear(size.d_model, spec.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        for block in self.blocks:
            for kind, sub in zip(block.kinds, block.subs):
                if kind == "mlp":  # mixers initialise themselves; the MLPs follow Llama's 0.02
                    for lin in (sub.gate, sub.up, sub.down):
                        nn.init.normal_(lin.weight, std=0.02)
        if spec.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(batch, seq)`` token ids -> ``(batch, seq, vocab)`` logits."""
        x = self.embed(input_ids)
        for block in self.blocks:
            x, _ = block(x)
        return self.head(self.norm(x))

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[Any]]:
        """Logits for every prefix position and the decode state after the last token."""
        x = self.embed(input_ids)
        state = self.init_state(input_ids.shape[0], input_ids.device, x.dtype)
        new_state = []
        for block, st in zip(self.blocks, state):
            x, st = block(x, st)
            new_state.append(st)
        return self.head(self.norm(x)), new_state

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> list[Any]:
        return [b.init_state(batch_size, device, dtype) for b in self.blocks]

    @torch.no_grad()
    def step(self, token_ids: torch.Tensor, state: list[Any]) -> tuple[torch.Tensor, list[Any]]:
        """One decode step: ``(batch,)`` token ids -> ``(batch, vocab)`` logits and the new state."""
        x = self.embed(token_ids)
        new_state = []
        for block, st in zip(self.blocks, state):
            x, st = block.step(x, st)
            new_state.append(st)
        return self.head(self.norm(x)), new_state

    def num_params(self, non_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())  # a tied head is counted once
        if non_embedding:
            total -= self.embed.weight.numel()
            if not self.spec.tie_embeddings:
                total -= self.head.weight.numel()
        return total

    def flops(self, seq_len: int) -> int:
        """Analytic forward FLOPs (matmuls and convs, 2 per multiply-add) for one sequence."""
        blocks = sum(sub_block_flops(sub, seq_len, self.embed.embedding_dim) for b in self.blocks for sub in b.subs)
        return blocks + 2 * seq_len * self.embed.embedding_dim * self.spec.vocab_size

    def state_size(self, seq_len: int) -> int:
        return sum(sub.state_size(seq_len) for b in self.blocks for k, sub in zip(b.kinds, b.subs) if k != "mlp")

    def backends(self, device: torch.device, dtype: torch.dtype | None = None, decode: bool = False) -> list[str]:
        """The distinct backends this model's mixers run on ``device`` with ``dtype`` activations
        (in ``step`` if ``decode``); recorded with results."""
        return sorted({active_backend(b.mixer, device, dtype, decode) for b in self.blocks})


def sub_block_flops(sub: nn.Module, seq_len: int, d_model: int) -> int:
    """A sub-block's analytic ``flops()``; a plugin without one is counted by running it once.

    The fallback lets a ten-line third-party mixer report FLOPs at all; built-ins always give
    the analytic count, which the tests check against the same counter.
    """
    if hasattr(sub, "flops"):
        return sub.flops(seq_len)
    weight = next(sub.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        sub(torch.randn(1, seq_len, d_model, device=weight.device, dtype=weight.dtype))
    return counter.get_total_flops()


def build(spec: ModelSpec) -> CausalLM:
    return CausalLM(spec)
