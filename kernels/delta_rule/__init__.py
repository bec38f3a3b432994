"""The delta rule (DeltaNet): a token-at-a-time reference, the chunked PyTorch form, fla's Triton kernel.

All three take ``(q, k, v, beta, initial_state, scale)`` with ``q, k: (batch, heads, T, d_k)``,
``v: (batch, heads, T, d_v)``, ``beta: (batch, heads, T)``, ``initial_state: (batch, heads, d_k, d_v)``
or ``None``, and return ``(o, final_state)`` with

    S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}),      o_t = scale * q_t S_t,

one step of gradient descent on ``1/2 ||k_t S - v_t||^2`` with learning rate ``beta_t`` per token:
TTT-Linear with mini-batch 1 and no LayerNorm, residual or bias (Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length"). ``tests/kernels/test_linear_recurrences.py``
holds the forms to each other.
"""

from mixbench_kernels.delta_rule.chunked import delta_rule_chunked, delta_rule_flops
from mixbench_kernels.delta_rule.fla import delta_rule_fla
from mixbench_kernels.delta_rule.reference import delta_rule_reference

__all__ = ["delta_rule_chunked", "delta_rule_fla", "delta_rule_flops", "delta_rule_reference"]
