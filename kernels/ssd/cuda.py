"""Thin guarded wrapper around mamba-ssm's Triton SSD kernel (the ``mamba-ssm`` backend of Mamba-2).

Nothing is imported at module import time: mamba-ssm is a GPU extra and its Triton kernels
need a CUDA device, so the import happens on first call.
"""

from __future__ import annotations

import torch


def ssd_triton(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = 256,
):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``; same contract as the reference."""
    if x.device.type != "cuda":
        raise RuntimeError(f"ssd_triton: mamba-ssm's Triton kernels need CUDA tensors, got {x.device.type}")
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined(
        x,
        dt,
        A,
        B,
        C,
        chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_state,
        dt_softplus=dt_softplus,
        return_final_states=return_final_state,
    )
