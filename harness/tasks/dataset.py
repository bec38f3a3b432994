"""A task as training data for the one training loop, and accuracy on held-out sequences.

``TaskData`` has what ``harness.engine.train.train`` asks of data (``len(data.train)`` and
``data.batch(split, indices) -> (inputs, targets)``), with targets at ``IGNORE_INDEX`` where
nothing is scored, so the same ``F.cross_entropy`` averages over the scored positions only.
``evaluate_task`` reports the fraction of scored tokens predicted exactly (argmax), the
fraction of sequences with every scored token right, and the mean loss on scored tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.tasks.base import Sequences, Task, make_sequences


@dataclass(frozen=True)
class TaskData:
    task: Task
    seq_len: int
    train: Sequences
    val: Sequences

    @property
    def vocab_size(self) -> int:
        return self.task.vocab_size

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences ``indices`` of ``split`` as (inputs, targets), int64, each (len, seq_len)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        seqs = self.train if split == "train" else self.val
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64).reshape(-1))
        return seqs.inputs[idx], seqs.targets[idx]


def load_task_data(task: Task, seq_len: int, n_train: int, n_val: int, seed: int) -> TaskData:
    """Training and held-out sequences, each split from its own random stream of ``seed``."""
    return TaskData(
        task=task,
        seq_len=seq_len,
        train=make_sequences(task, seq_len, n_train, seed, "train"),
        val=make_sequences(task, seq_len, n_val, seed, "val"),
    )


@dataclass(frozen=True)
class TaskEvalResult:
    accuracy: float  # scored tokens predicted exactly (argmax)
    sequence_accuracy: float  # sequences with every scored token right
    loss: float  # mean cross-entropy over scored tokens
    perplexity: float
    scored: int  # scored tokens evaluated
    sequences: int
    position_loss: list[tuple[int, int, int, float]] = field(default_factory=list)  # none for tasks


@torch.no_grad()
def evaluate_task(model: nn.Module, data: TaskData, batch_size: int, device: torch.device) -> TaskEvalResult:
    """Accuracy and loss over every held-out sequence, at the scored positions only."""
    model.eval()
    n = len(data.val)
    if n == 0:
        raise ValueError("no held-out sequences to evaluate")
    correct = scored = loss_sum = perfect = 0.0
    for lo in range(0, n, batch_size):
        inputs, targets = data.batch("val", range(lo, min(n, lo + batch_size)))
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs).float()
        mask = targets != -100
        hit = (logits.argmax(-1) == targets) & mask
        correct += hit.sum().item()
        scored += mask.sum().item()
        perfect += (hit.sum(1) == mask.sum(1)).sum().item()
        loss_sum += F.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").item()
    loss = loss_sum / scored
    return TaskEvalResult(
        accuracy=correct / scored,
        sequence_accuracy=perfect / n,
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        scored=int(scored),
        sequences=n,
    )
