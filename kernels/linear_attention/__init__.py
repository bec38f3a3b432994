"""Causal linear attention: a token-at-a-time reference, the chunked PyTorch form, fla's Triton kernel.

All three take ``(q, k, v, initial_state, scale)`` with ``q, k: (batch, heads, T, d_k)``,
``v: (batch, heads, T, d_v)``, ``initial_state: (batch, heads, d_k, d_v)`` or ``None``, and
return ``(o, final_state)`` with ``o_t = scale * q_t S_t``, ``S_t = S_{t-1} + k_t^T v_t``
(no feature map, no normaliser: the form Theorem 1 of the TTT paper names).
``tests/kernels/test_linear_recurrences.py`` holds them to each other.
"""

from mixbench_kernels.linear_attention.chunked import linear_attention_chunked, linear_attention_flops
from mixbench_kernels.linear_attention.fla import linear_attention_fla
from mixbench_kernels.linear_attention.reference import linear_attention_reference

__all__ = ["linear_attention_chunked", "linear_attention_fla", "linear_attention_flops", "linear_attention_reference"]
