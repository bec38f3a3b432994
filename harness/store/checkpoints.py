"""Checkpoints: the final weights of a done run (safetensors) beside the spec that rebuilds it.

``results/checkpoints/<run_key>/`` holds ``model.safetensors`` and ``model.json`` (the model
spec, the tokenizer and the cell config). safetensors holds tensors only, so loading a
checkpoint never executes code from the file, unlike an unguarded ``torch.load``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from models import CausalLM, ModelSpec, build
from models.errors import MixbenchError

DEFAULT_CHECKPOINT_DIR = Path("results") / "checkpoints"
WEIGHTS, META = "model.safetensors", "model.json"


class CheckpointError(MixbenchError):
    """A checkpoint that is missing or does not match its spec; the message names the folder."""


def save_checkpoint(model: CausalLM, folder: Path, tokenizer: str, config: dict[str, Any]) -> Path:
    """Write weights and metadata; written to a temporary name first so a crash leaves no half file."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".partial")
    save_model(model, str(tmp))
    tmp.replace(folder / WEIGHTS)
    meta = {"spec": asdict(model.spec), "tokenizer": tokenizer, "config": config}
    (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return folder


def load_meta(folder: Path) -> dict[str, Any]:
    """``model.json`` of a checkpoint: the spec (as a dict), the tokenizer and the cell config."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / META).is_file():
        raise CheckpointError(f"{folder}: no checkpoint here (expected {WEIGHTS} and {META})")
    return json.loads((folder / META).read_text())


def load_checkpoint(folder: Path, device: torch.device | str = "cpu") -> tuple[CausalLM, dict[str, Any]]:
    """Rebuild the model from ``model.json`` and load its weights; returns (model, metadata)."""
    folder = Path(folder)
    meta = load_meta(folder)
    model = build(ModelSpec(**meta["spec"]))
    missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=False, device=str(device))
    if missing or unexpected:
        raise CheckpointError(f"{folder}: weights do not match the spec (missing {missing}, unexpected {unexpected})")
    return model.to(device).eval(), meta
