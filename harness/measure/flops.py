"""FLOPs accounting: the analytic count from the model, beside the classic estimates.

Convention (everywhere in mixbench): matmul and convolution FLOPs, 2 per multiply-add, which
is what ``torch.utils.flop_counter.FlopCounterMode`` counts. Training = 3 × forward (the
backward pass costs twice the forward).

Three numbers are stored per run so readers can see how the convention ranks architectures:

* ``flops/train``: 3 × the model's analytic forward count (every mixer's own ``flops()``,
  embeddings excluded since a lookup is not a matmul, MLPs, convs and the LM head included);
* ``flops/6nd``: 6 · N · D with N = all parameters, D = training tokens (Kaplan/Chinchilla);
* ``flops/6nd_attention``: 6 · N · D plus the attention term 6 · n_attn_layers · T · d_model · D
  that the classic estimate adds for layers whose mixer attends over the whole context (a mixer
  says so with ``attends_to_context = True``); it is 6·N·D for a model without attention.
"""

from __future__ import annotations

from torch import nn


def attention_layers(model: nn.Module) -> int:
    return sum(bool(getattr(block.mixer, "attends_to_context", False)) for block in model.blocks)


def training_flops(model: nn.Module, seq_len: int, tokens: int) -> dict[str, float]:
    """Metrics for a run that trained on ``tokens`` tokens in sequences of ``seq_len``."""
    forward = model.flops(seq_len)
    six_nd = 6.0 * model.num_params() * tokens
    d_model = model.embed.embedding_dim
    return {
        "flops/forward_per_sequence": float(forward),
        "flops/train": 3.0 * forward * tokens / seq_len,
        "flops/6nd": six_nd,
        "flops/6nd_attention": six_nd + 6.0 * attention_layers(model) * seq_len * d_model * tokens,
    }
