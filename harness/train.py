"""The one training loop every mixer gets: same optimiser, schedule, batch and budget.

AdamW (β 0.9/0.95, decoupled weight decay on matrices only), linear warm-up then cosine decay
to ``min_lr_ratio``, gradient clipping, gradient accumulation up to a token batch, bf16
autocast on CUDA, fixed seeds. A NaN or infinite loss stops the run with the step named.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.progress import progress_bar


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


def plan_training(train_cfg, n_params: int, seq_len: int) -> TrainPlan:  # noqa: ANN001 - a TrainSection
    """Turn a recipe (``tokens: chinchilla`` or a count, ``batch_tokens``) into steps and batches."""
    budget = (
        int(train_cfg.tokens_per_param * n_params) if train_cfg.tokens == "chinchilla" else int(train_cfg.tokens)
    )
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


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms, biases and gains are not decayed."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


@dataclass
class TrainResult:
    metrics: list[tuple[int, str, float]] = field(default_factory=list)  # (step, name, value)
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def train(model: nn.Module, data, train_cfg, plan: TrainPlan, device: torch.device, label: str = "") -> TrainResult:  # noqa: ANN001
    """Train ``model`` on ``data.train`` for ``plan.steps`` optimiser steps; returns the logged metrics."""
    generator = np.random.default_rng(train_cfg.seed)
    n_train = len(data.train)
    order = generator.permutation(n_train)
    cursor = 0

    def next_indices(count: int) -> np.ndarray:
        nonlocal order, cursor
        picked = []
        while count:
            take = min(count, n_train - cursor)
            picked.append(order[cursor : cursor + take])
            cursor += take
            count -= take
            if cursor == n_train:  # a new epoch gets a new permutation
                order, cursor = generator.permutation(n_train), 0
        return np.concatenate(picked)

    optimizer = make_optimizer(model, plan.lr, train_cfg.weight_decay, tuple(train_cfg.betas))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    accumulation = plan.batch_size // plan.micro_batch_size
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    with progress_bar(f"train {label}", total=plan.steps, unit="step") as bar:
        for step in range(plan.steps):
            lr = learning_rate(step, plan, train_cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            total_loss = 0.0
            for _ in range(accumulation):
                inputs, targets = data.batch("train", next_indices(plan.micro_batch_size))
                inputs, targets = inputs.to(device), targets.to(device)
                with autocast:
                    logits = model(inputs)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
                (loss / accumulation).backward()
                total_loss += loss.item() / accumulation
            if not math.isfinite(total_loss):
                raise TrainingDiverged(f"loss became {total_loss} at step {step + 1} of {plan.steps}")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            result.tokens += plan.batch_size * inputs.shape[1]
            elapsed = time.perf_counter() - start
            tokens_per_s = result.tokens / elapsed
            if step % train_cfg.log_every == 0 or step == plan.steps - 1:
                result.metrics += [
                    (step + 1, "train/loss", total_loss),
                    (step + 1, "train/lr", lr),
                    (step + 1, "train/grad_norm", grad_norm),
                    (step + 1, "tokens/s", tokens_per_s),
                ]
            bar.update(loss=total_loss, tokens_per_s=tokens_per_s)
    result.seconds = time.perf_counter() - start
    return result
