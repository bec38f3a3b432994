"""FLOPs accounting: the analytic count from the model, beside the classic 6·N·D estimate.

Convention (everywhere in mixbench): matmul and convolution FLOPs, 2 per multiply-add, which
is what ``torch.utils.flop_counter.FlopCounterMode`` counts. Training = 3 × forward (the
backward pass costs twice the forward).
"""

from __future__ import annotations

from torch import nn


def training_flops(model: nn.Module, seq_len: int, tokens: int) -> dict[str, float]:
    """Metrics for a run that trained on ``tokens`` tokens in sequences of ``seq_len``."""
    sequences = tokens / seq_len
    forward = model.flops(seq_len)
    return {
        "flops/forward_per_sequence": float(forward),
        "flops/train": 3.0 * forward * sequences,
        "flops/6nd": 6.0 * model.num_params() * tokens,
    }
