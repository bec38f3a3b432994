"""Backbone recipes and the size table: how mixers become a stack of residual blocks.

A backbone is a list of pre-norm residual sub-blocks repeated ``n_layers`` times. Three
recipes cover the TTT paper:

* ``transformer`` (T): ``[mixer, mlp]`` with RMSNorm and SwiGLU (Llama's Transformer++);
* ``mamba`` (M): ``[conv, mixer, mlp]``: a residual depthwise causal conv (kernel 4) first,
  and the mixer built in its Mamba-backbone form (it receives ``backbone="mamba"``);
* ``mamba_native``: ``[mixer]`` only, twice the layers: the Mamba block holds its own
  projections, conv and gate, as in mamba-ssm.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    name: str
    sub_blocks: tuple[str, ...]  # each of "conv", "mixer", "mlp"
    layer_multiplier: int = 1


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("transformer", ("mixer", "mlp")),
        Backbone("mamba", ("conv", "mixer", "mlp")),
        Backbone("mamba_native", ("mixer",), layer_multiplier=2),
    )
}


@dataclass(frozen=True)
class Size:
    """One model size; ``n_layers`` is the Transformer count (a backbone may multiply it).

    ``n_kv_heads`` is the number of key/value heads of grouped-query attention (Llama 2/3,
    SmolLM); None means one per query head, the multi-head attention every preset trains.
    """

    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int
    n_kv_heads: int | None = None


# The paper's configurations (TTT paper, Table/appendix: Transformer++ widths, depths, heads
# and SwiGLU widths), plus tiny sizes that train on a laptop CPU in seconds.
SIZES: dict[str, Size] = {
    "micro": Size(d_model=32, n_layers=2, n_heads=2, mlp_hidden=96),
    "tiny": Size(d_model=64, n_layers=2, n_heads=4, mlp_hidden=176),
    # between tiny and small: 1.5x tiny's width at its depth (head_dim 16 like micro and tiny),
    # the third point of suites/miniature.yaml that a 2-core CPU trains in minutes at T=1024
    "mini": Size(d_model=96, n_layers=2, n_heads=6, mlp_hidden=256),
    "small": Size(d_model=128, n_layers=4, n_heads=4, mlp_hidden=352),
    "125m": Size(d_model=768, n_layers=12, n_heads=12, mlp_hidden=2048),
    "350m": Size(d_model=1024, n_layers=24, n_heads=16, mlp_hidden=2736),
    "760m": Size(d_model=1536, n_layers=24, n_heads=16, mlp_hidden=4096),
    "1.3b": Size(d_model=2048, n_layers=24, n_heads=32, mlp_hidden=5504),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known backbones: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def get_size(name: str) -> Size:
    if name not in SIZES:
        raise KeyError(f"unknown size {name!r}; known sizes: {', '.join(SIZES)}")
    return SIZES[name]
