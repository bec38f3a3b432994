"""One decode token of a selective SSM (Mamba and Mamba-2), the state updated in place.

``ssm_state_update_reference`` (PyTorch) and ``ssm_state_update_triton`` (one launch) take
mamba-ssm's ``selective_state_update`` arguments, in its two layouts:

* Mamba:   ``state (batch, d, n)``, ``x, dt, z (batch, d)``, ``A (d, n)``, ``B, C (batch, n)``, ``D, dt_bias (d,)``;
* Mamba-2: ``state (batch, heads, headdim, n)``, ``x, dt, z (batch, heads, headdim)``,
  ``A (heads, headdim, n)``, ``B, C (batch, groups, n)``, ``D, dt_bias (heads, headdim)``;
  per-head values are passed as expanded (stride-0) views.

``h = exp(dt A) h + dt x B``, ``y = h . C + D x``, ``y *= silu(z)``; ``dt <- softplus(dt + dt_bias)``
when asked. The state stays in its own dtype (float32 in the mixers).
"""

from mixbench_kernels.ssm_step.reference import ssm_state_update_reference


def ssm_state_update_triton(*args, **kwargs):
    """The Triton kernel (``mixbench_kernels.ssm_step.triton_step``); triton is imported on first call."""
    from mixbench_kernels.ssm_step.triton_step import ssm_state_update_triton as update

    return update(*args, **kwargs)


__all__ = ["ssm_state_update_reference", "ssm_state_update_triton"]
