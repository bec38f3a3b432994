"""Sequence-mixer plugins, backbones and the causal LM that hosts them.

Importing this package registers the built-in mixers; the harness reaches them only through
``models.registry`` and ``models.build``.
"""

from models import (  # noqa: F401  (registers "mamba", "mamba2")  # noqa: F401  (registers "deltanet", "linear_attention")
    attention,
    deltanet,
    fla_adapter,
    linear_attention,
    mamba,
    mamba2,
    ttt,
    ttt_generic,
)
from models.lm import CausalLM, ModelSpec, build, split_arch

__all__ = ["CausalLM", "ModelSpec", "build", "split_arch"]
