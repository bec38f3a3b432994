"""``modeling_mixbench.py`` of an exported run: a mixbench model behind ``AutoModelForCausalLM``.

``mixbench export`` copies this file beside the weights of an architecture that
``transformers`` does not have (TTT, DeltaNet, ...); ``trust_remote_code=True`` runs it. It
builds the model with mixbench itself (which must be importable) from the spec stored in
config.json, so the numbers are those of the code that trained it. Nothing in mixbench
imports this file.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from models import ModelSpec, build


class MixbenchConfig(PretrainedConfig):
    model_type = "mixbench"

    def __init__(self, mixbench_spec: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.mixbench_spec = mixbench_spec or {}
        super().__init__(**kwargs)


class MixbenchForCausalLM(PreTrainedModel):
    """Logits of ``models.build(spec)``; the loss, when labels are given, is next-token cross-entropy."""

    config_class = MixbenchConfig
    base_model_prefix = "model"

    def __init__(self, config: MixbenchConfig) -> None:
        super().__init__(config)
        self.model = build(ModelSpec(**config.mixbench_spec))
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """The weights come from the checkpoint; mixbench's own initialisation stands."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **kwargs: Any) -> CausalLMOutput:
        logits = self.model(input_ids)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)
