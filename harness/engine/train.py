"""The one training loop every mixer gets: same optimiser, schedule, batch and budget.

AdamW (β 0.9/0.95, decoupled weight decay on matrices only), linear warm-up then cosine decay
to ``min_lr_ratio``, gradient clipping, gradient accumulation up to a token batch, bf16
autocast on CUDA, a float32 cross-entropy computed in row chunks (``harness.engine.loss``),
fixed seeds. The same loop runs on one process or data-parallel under torchrun
(``harness.engine.distributed``, ``harness.engine.parallel``), and resumes mid-cell from
``torch.distributed.checkpoint`` snapshots (``harness.engine.resume``). A NaN or infinite loss
stops the run with the step named.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness.common.progress import progress_bar
from harness.engine.distributed import Group
from harness.engine.loss import cross_entropy
from harness.engine.parallel import autocast, gradient_sync
from harness.engine.resume import Preempted, PreemptionFlag, StepCheckpoints
from harness.engine.sampler import BlockSampler

# The rows every log writes (``TrainResult.metrics``): the live curve of a running cell.
# ``tokens/s`` is the average since the start; ``tokens/s/recent`` covers the steps since the last log.
CURVE_NAMES = ("train/loss", "train/lr", "train/grad_norm", "tokens/s", "tokens/s/recent")

# ``on_log(after, rows, step, tokens)``: ``rows`` are the curve beyond step ``after``, at step ``step``
# with ``tokens`` trained. A resumed run first passes ``after=0`` with the checkpoint's whole curve.
LogHook = Callable[[int, list[tuple[int, str, float]], int, int], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step."""


@dataclass(frozen=True)
class TrainPlan:
    """The numbers a run trains with, derived from the suite's recipe and the model size."""

    steps: int
    batch_size: int  # sequences per optimiser step
    micro_batch_size: int  # sequences per forward pass
    tokens: int  # tokens the run will see (steps × batch × seq_len)
    lr: float
    warmup_steps: int


def plan_training(train_cfg, n_params: int, seq_len: int) -> TrainPlan:
    """Turn a recipe (``tokens: chinchilla`` or a count, ``batch_tokens``) into steps and batches."""
    budget = int(train_cfg.tokens_per_param * n_params) if train_cfg.tokens == "chinchilla" else int(train_cfg.tokens)
    batch_size = max(1, train_cfg.batch_tokens // seq_len)
    micro = min(train_cfg.micro_batch_size or batch_size, batch_size)
    if batch_size % micro:
        raise ValueError(
            f"train.micro_batch_size {micro} must divide the batch of {batch_size} sequences "
            f"(batch_tokens {train_cfg.batch_tokens} / seq_len {seq_len})"
        )
    steps = max(1, math.ceil(budget / (batch_size * seq_len)))
    warmup = max(1, round(train_cfg.warmup_fraction * steps)) if train_cfg.warmup_fraction > 0 else 0
    return TrainPlan(steps, batch_size, micro, steps * batch_size * seq_len, float(train_cfg.lr), warmup)


def learning_rate(step: int, plan: TrainPlan, min_lr_ratio: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` down to ``min_lr_ratio × lr``."""
    if step < plan.warmup_steps:
        return plan.lr * (step + 1) / plan.warmup_steps
    decay_steps = max(1, plan.steps - plan.warmup_steps)
    progress = min(1.0, (step - plan.warmup_steps) / decay_steps)
    floor = min_lr_ratio * plan.lr
    return floor + 0.5 * (plan.lr - floor) * (1 + math.cos(math.pi * progress))


def make_optimizer(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool = False
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and gains are not decayed.

    ``fused`` (one kernel for the whole update) is for CUDA.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class TrainResult:
    metrics: list[tuple[int, str, float]] = field(default_factory=list)  # (step, name, value)
    tokens: int = 0
    seconds: float = 0.0
    resumed_from: int = 0  # the step of the checkpoint this run went on from (0: from scratch)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def micro_batching(plan: TrainPlan, world_size: int) -> tuple[int, int]:
    """(sequences per forward pass, micro-batches per step) on each rank.

    The global batch is the same at any world size: micro-batch × accumulation × ranks.
    """
    per_rank = plan.batch_size // world_size
    micro = min(plan.micro_batch_size, per_rank)
    if plan.batch_size % world_size or per_rank % micro:
        raise ValueError(
            f"the batch of {plan.batch_size} sequences does not split into micro-batches of {micro} "
            f"on each of {world_size} ranks; change train.batch_tokens or train.micro_batch_size"
        )
    return micro, per_rank // micro


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned host memory and an asynchronous copy on CUDA, so the copy overlaps compute."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def train(
    model: nn.Module,
    data,
    train_cfg,
    plan: TrainPlan,
    device: torch.device,
    label: str = "",
    *,
    group: Group | None = None,
    checkpoints: StepCheckpoints | None = None,
    on_log: LogHook | None = None,
) -> TrainResult:
    """Train ``model`` on ``data.train`` for ``plan.steps`` optimiser steps; returns the logged metrics.

    The one loop at every world size: ``model`` may be wrapped for DDP/FSDP
    (``harness.engine.parallel``), and each rank reads its slice of every global batch. With
    ``checkpoints`` the run resumes from the latest complete one, saves every
    ``train.checkpoint_every`` steps, and on SIGTERM/SIGUSR1 saves and raises
    :class:`Preempted`. Losses stay on the device and are read once per ``log_every`` steps
    (all ranks averaged); ``on_log`` then receives the new rows (:data:`LogHook`), e.g. to store the live curve.
    """
    group = group or Group()
    micro, accumulation = micro_batching(plan, group.world_size)
    sampler = BlockSampler(
        len(data.train), plan.batch_size, rank=group.rank, world_size=group.world_size, seed=train_cfg.seed
    )
    optimizer = make_optimizer(
        model, plan.lr, train_cfg.weight_decay, tuple(train_cfg.betas), fused=device.type == "cuda"
    )
    result, step, prior_seconds = TrainResult(), 0, 0.0
    if checkpoints is not None and (path := checkpoints.latest()) is not None:
        template = {"step": 0, "sampler": sampler.state_dict(), "metrics": [], "tokens": 0, "seconds": 0.0}
        saved = checkpoints.load(path, model, optimizer, template)
        sampler.load_state_dict(saved["sampler"])
        step = result.resumed_from = int(saved["step"])
        result.metrics = [(int(s), str(n), float(v)) for s, n, v in saved["metrics"]]
        result.tokens, prior_seconds = int(saved["tokens"]), float(saved["seconds"])
    every = train_cfg.checkpoint_every if checkpoints is not None else 0
    flag = PreemptionFlag()
    pending_loss: list[torch.Tensor] = []  # per-step losses on the device, read every log_every steps
    pending_from = logged = step
    model.train()
    start = time.perf_counter()
    if on_log is not None and step:
        on_log(0, list(result.metrics), step, result.tokens)
    last_log = (start, result.tokens)  # (time, tokens) at the previous log: the recent rate's interval
    title = f"train {label}" + (f" (resumed at step {step})" if step else "")
    with (
        flag.installed() if checkpoints is not None else nullcontext(),
        progress_bar(title, total=plan.steps, unit="step", enabled=group.is_main) as bar,
    ):
        bar.update(advance=step)
        for step in range(step, plan.steps):
            lr = learning_rate(step, plan, train_cfg.min_lr_ratio)
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
            indices = sampler.next_batch()
            step_loss = torch.zeros((), device=device)
            for i in range(accumulation):
                inputs, targets = data.batch("train", indices[i * micro : (i + 1) * micro])
                inputs, targets = _to_device(inputs, device), _to_device(targets, device)
                with gradient_sync(model, i == accumulation - 1):
                    with autocast(device):
                        logits = model(inputs)
                        loss = cross_entropy(logits.flatten(0, 1), targets.flatten())
                    (loss / accumulation).backward()
                step_loss += loss.detach() / accumulation
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending_loss.append(step_loss)
            result.tokens += plan.batch_size * inputs.shape[1]
            if step % train_cfg.log_every == 0 or step == plan.steps - 1:
                losses = group.mean(torch.stack(pending_loss)).tolist()  # the one host sync per log_every steps
                for offset, value in enumerate(losses):
                    if not math.isfinite(value):
                        raise TrainingDiverged(
                            f"loss became {value} at step {pending_from + offset + 1} of {plan.steps}"
                        )
                norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: a DTensor
                now = time.perf_counter()
                tokens_per_s = result.tokens / (prior_seconds + now - start)
                recent = (result.tokens - last_log[1]) / max(now - last_log[0], 1e-9)
                rows = [
                    (step + 1, "train/loss", losses[-1]),
                    (step + 1, "train/lr", lr),
                    (step + 1, "train/grad_norm", norm.item()),
                    (step + 1, "tokens/s", tokens_per_s),
                    (step + 1, "tokens/s/recent", recent),
                ]
                result.metrics += rows
                bar.update(advance=len(losses), loss=losses[-1], tokens_per_s=tokens_per_s)
                pending_loss, pending_from, last_log = [], step + 1, (now, result.tokens)
                if on_log is not None:
                    on_log(logged, rows, step + 1, result.tokens)
                    logged = step + 1
            stop = checkpoints is not None and group.any(flag.requested)
            if checkpoints is not None and (stop or (every and ((step + 1) % every == 0 or step == plan.steps - 1))):
                seconds = prior_seconds + time.perf_counter() - start
                saved_at = checkpoints.save(
                    step + 1,
                    model,
                    optimizer,
                    {
                        "step": step + 1,
                        "sampler": sampler.state_dict(),
                        "metrics": result.metrics,
                        "tokens": result.tokens,
                        "seconds": seconds,
                    },
                )
                if stop:
                    raise Preempted(step + 1, plan.steps, saved_at, flag.signal_name or "a signal on another rank")
    result.seconds = prior_seconds + time.perf_counter() - start
    return result
