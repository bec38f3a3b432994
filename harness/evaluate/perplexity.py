"""Evaluation on held-out blocks: loss, perplexity, and loss by token position.

Loss by position is the paper's "perplexity by token index" curve: whether a mixer keeps
getting better as it sees more context. Positions are grouped into equal buckets so the
store holds a few dozen numbers per run, whatever the sequence length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.engine.parallel import autocast


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    position_loss: list[tuple[int, int, int, float]]  # (bucket, start, end, mean loss)
    sequences: int


def bucket_bounds(seq_len: int, buckets: int) -> list[tuple[int, int]]:
    """``buckets`` contiguous position ranges covering ``0..seq_len`` (fewer if seq_len is short)."""
    n = min(buckets, seq_len)
    edges = [round(i * seq_len / n) for i in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def evaluate(model: nn.Module, data, eval_cfg, device: torch.device) -> EvalResult:
    """Mean token loss over the first ``max_val_sequences`` validation blocks, overall and by position."""
    model.eval()
    n = min(len(data.val), eval_cfg.max_val_sequences)
    loss_sum_by_position: torch.Tensor | None = None
    for lo in range(0, n, eval_cfg.batch_size):
        inputs, targets = data.batch("val", range(lo, min(n, lo + eval_cfg.batch_size)))
        inputs, targets = inputs.to(device), targets.to(device)
        with autocast(device):  # bf16 on CUDA, as in training
            logits = model(inputs).float()
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (batch, seq)
        batch_sum = losses.sum(0).double().cpu()
        loss_sum_by_position = batch_sum if loss_sum_by_position is None else loss_sum_by_position + batch_sum
    if loss_sum_by_position is None:
        raise ValueError("no validation sequences to evaluate")
    by_position = loss_sum_by_position / n
    seq_len = by_position.numel()
    buckets = [
        (i, lo, hi, by_position[lo:hi].mean().item())
        for i, (lo, hi) in enumerate(bucket_bounds(seq_len, eval_cfg.position_buckets))
    ]
    loss = by_position.mean().item()
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), position_loss=buckets, sequences=n)
