"""Sequence-mixer plugins, backbones and the causal LM that hosts them.

Importing this package registers the built-in mixers; the harness reaches them only through
``models.registry`` and ``models.build``.
"""

from models import attention  # noqa: F401  (registers "attention")
from models import ttt  # noqa: F401  (registers "ttt_linear", "ttt_mlp")
from models import ttt_generic  # noqa: F401  (registers "ttt": any inner model and optimizer)
from models import mamba, mamba2  # noqa: F401  (registers "mamba", "mamba2")
from models import deltanet, linear_attention  # noqa: F401  (registers "deltanet", "linear_attention")
from models import fla_adapter  # noqa: F401  (registers fla's layers as "fla_*" when fla is installed)
from models.lm import CausalLM, ModelSpec, build, split_arch

__all__ = ["CausalLM", "ModelSpec", "build", "split_arch"]
