"""How a model runs on its devices: DDP or FSDP2, compile, activation checkpointing, precision.

PyTorch's own engine does the work; this module only chooses and applies it, so the training
loop is the same at every world size:

- world size 1: the model as built (no wrapper);
- ``ddp``: ``DistributedDataParallel``, a full replica per rank;
- ``fsdp``: FSDP2, ``fully_shard`` on every block and then on the whole model, with bf16
  parameters and fp32 gradient reductions on CUDA (float32 throughout on CPU, where gloo
  and the CPU kernels want it).

``auto`` picks FSDP from ``FSDP_FROM_PARAMS`` parameters up, where the optimizer state of a
full replica per GPU starts to crowd activations, and DDP below. Compile and activation
checkpointing act per block and keep parameter names, so checkpoints and the final
safetensors weights are the same whatever was switched on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from harness.engine.distributed import Group
from models import build

FSDP_FROM_PARAMS = 300_000_000  # 350m and up shard; 125m and below replicate
MODES = ("auto", "ddp", "fsdp")


def choose_mode(requested: str, n_params: int, group: Group) -> str:
    """``none`` on one process; else ``ddp`` or ``fsdp`` as asked, ``auto`` by model size."""
    if requested not in MODES:
        raise ValueError(f"train.parallel must be one of {', '.join(MODES)}, got {requested!r}")
    if not group.distributed:
        return "none"
    if requested == "auto":
        return "fsdp" if n_params >= FSDP_FROM_PARAMS else "ddp"
    return requested


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype training, evaluation and lm-eval compute in on ``device``: bf16 on CUDA, else float32."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def backend_label(model: nn.Module, device: torch.device) -> str:
    """The backends that ran: training, evaluation and lm-eval all compute in
    ``compute_dtype(device)`` (bf16 autocast on CUDA), so one dtype names them all."""
    return ",".join(model.backends(device, compute_dtype(device)))


def autocast(device: torch.device):
    """Autocast to ``compute_dtype`` on CUDA for training, evaluation and lm-eval alike; none elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=compute_dtype(device))
    return nullcontext()


def prepare(
    model: nn.Module, mode: str, device: torch.device, *, compile: bool = False, activation_checkpointing: bool = False
) -> nn.Module:
    """Apply activation checkpointing, compile and the parallel wrapper, in that order, per block."""
    blocks = model.blocks
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint  # keeps parameter names, unlike a wrapper

        for block in blocks:
            checkpoint(block)
    if compile:
        for block in blocks:
            block.compile()
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # imported only when used (slow)

        policy = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if device.type == "cuda"
            else MixedPrecisionPolicy()
        )
        for block in blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model
    if mode == "ddp":
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(enabled)
    yield


def full_model(model: nn.Module, group: Group, device: torch.device) -> nn.Module | None:
    """Rank 0: a plain model holding every trained weight (for evaluation and safetensors).

    Collective under FSDP (every rank must call it); the other ranks get None.
    """
    if isinstance(model, DistributedDataParallel):
        return model.module if group.is_main else None
    if not hasattr(model, "set_requires_gradient_sync"):  # not FSDP2: the model itself
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not group.is_main:
        return None
    plain = build(model.spec).to(device)
    plain.load_state_dict(state)
    return plain
