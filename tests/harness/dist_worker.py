"""One rank of a multi-process training test, started by ``torch.multiprocessing`` (gloo on CPU).

``train_micro`` is the whole run, the same on every rank and in the single-process reference:
build the micro model from a seed, wrap it as asked, train with mid-cell checkpoints, return
the logged train losses.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from harness.config.suite import TrainSection
from harness.data import DataConfig, load_packed
from harness.engine.distributed import Group
from harness.engine.parallel import choose_mode, full_model, prepare
from harness.engine.resume import StepCheckpoints
from harness.engine.train import plan_training, seed_everything, train
from models import ModelSpec, build

TRAIN = TrainSection(
    tokens=8 * 256,
    batch_tokens=256,
    micro_batch_size=2,
    lr=3e-3,
    log_every=1,
    seed=3,
    checkpoint_every=4,
    keep_checkpoints=2,
)
SEQ_LEN = 32


def train_micro(
    corpus: Path, cache: Path, folder: Path | None, group: Group, mode: str = "ddp"
) -> tuple[list[float], torch.nn.Module]:
    """(the logged train losses, the trained model as ``train`` saw it: wrapped for DDP/FSDP)."""
    data = load_packed(DataConfig(source=str(corpus), tokenizer="bytes", seq_len=SEQ_LEN), cache)
    seed_everything(0)
    model = build(ModelSpec.parse("attention@transformer", "micro", data.vocab_size))
    plan = plan_training(TRAIN, model.num_params(), SEQ_LEN)
    wrapped = prepare(model, choose_mode(mode, model.num_params(), group), torch.device("cpu"))
    steps = StepCheckpoints(folder, group, TRAIN.keep_checkpoints) if folder is not None else None
    result = train(wrapped, data, TRAIN, plan, torch.device("cpu"), group=group, checkpoints=steps)
    return [v for _, name, v in result.metrics if name == "train/loss"], wrapped


def weight_norms(model: torch.nn.Module) -> dict[str, float]:
    return {name: p.detach().norm().item() for name, p in model.named_parameters()}


def worker(rank: int, world: int, port: int, corpus: str, out: str) -> None:
    """Rank ``rank``: a DDP run and an FSDP2 run, each checkpointed in ``out/<mode>``.

    Rank 0 writes ``out/<mode>.json``: the losses and the norms of the full trained weights
    (gathered from the shards under FSDP) that evaluation and safetensors would get.
    """
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    group = Group(rank=rank, world_size=world, timeout=timedelta(seconds=60), _control=dist.group.WORLD)
    out_dir = Path(out)
    for mode in ("ddp", "fsdp"):
        losses, wrapped = train_micro(Path(corpus), out_dir / "cache", out_dir / mode, group, mode)
        full = full_model(wrapped, group, torch.device("cpu"))
        if rank == 0:
            (out_dir / f"{mode}.json").write_text(json.dumps({"losses": losses, "norms": weight_norms(full)}))
    dist.destroy_process_group()
