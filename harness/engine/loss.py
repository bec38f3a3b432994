"""The training loss: token cross-entropy in float32, in row chunks where the logits are large.

At a 50k vocabulary and 16k tokens per micro-batch the logits are 800M elements. The plain
``F.cross_entropy(logits.float(), targets)`` keeps a float32 copy, a float32 log-softmax for the
backward and a float32 gradient beside the bf16 logits and their bf16 gradient (about 12 bytes
per element, ~10 GB). ``cross_entropy`` computes the same function a chunk of rows at a time:
each chunk's float32 log-softmax is reduced to per-token losses and dropped; the backward
recomputes it and writes the gradient in the logits' dtype (about 4 bytes per element: the
logits and their gradient). ``log_softmax(..., dtype=float32)`` reads bf16 logits and writes
float32 in one CUDA kernel, and its backward writes bf16 directly, so the recompute costs no
more memory traffic than the plain path's separate casts (about 30 bytes per element in all,
against 36).

Numbers: every gradient element is computed by the same operations as the plain path's
(float32 log-softmax, NLL, rounding to the logits' dtype), so the gradients are equal element
for element (the tests check it, bit for bit on CPU); the loss is the same per-token values
summed in another order, equal to float32 rounding (relative ~1e-7). Where the logits fit one
chunk the plain path runs unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_ELEMENTS = 1 << 25  # logits per chunk: 128 MB of float32 temporaries (e.g. 670 rows at a 50k vocabulary)


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100, chunk_elements: int = CHUNK_ELEMENTS
) -> torch.Tensor:
    """``F.cross_entropy(logits.float(), targets)`` (mean over the scored tokens) for ``(N, V)`` logits.

    Chunks of ``chunk_elements // V`` rows where the logits are larger than one chunk (module doc).
    ``ignore_index`` is F.cross_entropy's default, the tasks' unscored positions (``harness.tasks.IGNORE_INDEX``).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"cross_entropy: expected logits (tokens, vocab) and targets (tokens,), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    rows = max(1, chunk_elements // logits.shape[1])
    if logits.shape[0] <= rows:
        return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index)
    return _ChunkedCrossEntropy.apply(logits, targets, ignore_index, rows)


def _nll(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, reduction: str) -> torch.Tensor:
    """Cross-entropy through a float32 log-softmax read straight from ``logits`` (no float32 copy)."""
    return F.nll_loss(
        F.log_softmax(logits, -1, dtype=torch.float32), targets, ignore_index=ignore_index, reduction=reduction
    )


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Keeps the logits (in their dtype) and the targets; recomputes each chunk in the backward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, ignore_index: int, rows: int) -> torch.Tensor:
        per_token = torch.cat(
            [
                _nll(logits[s : s + rows], targets[s : s + rows], ignore_index, "none")
                for s in range(0, logits.shape[0], rows)
            ]
        )
        count = (targets != ignore_index).sum()  # 0 scored tokens: nan, as F.cross_entropy gives
        ctx.save_for_backward(logits, targets, count)
        ctx.ignore_index, ctx.rows = ignore_index, rows
        return per_token.sum() / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, count = ctx.saved_tensors
        scale = grad / count  # what the mean's backward hands each scored token
        out = torch.empty_like(logits)
        for s in range(0, logits.shape[0], ctx.rows):
            chunk = logits[s : s + ctx.rows].detach().requires_grad_()
            with torch.enable_grad():
                loss = _nll(chunk, targets[s : s + ctx.rows], ctx.ignore_index, "sum")
                (out[s : s + ctx.rows],) = torch.autograd.grad(loss, chunk, scale)  # in the logits' dtype
        return out, None, None, None
