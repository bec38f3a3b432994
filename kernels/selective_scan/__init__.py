"""The selective scan of Mamba (v1): a sequential reference, a chunked PyTorch scan, our Triton
kernels, mamba-ssm's CUDA kernel.

All four take mamba-ssm's ``selective_scan_fn`` arguments (``u, delta, z: (batch, d, T)``,
``A: (d, n)``, ``B, C: (batch, n, T)``, ``D: (d,)``) and compute the same function;
``tests/kernels/test_selective_scan.py`` holds them to each other.
"""

from mixbench_kernels.selective_scan.chunked import auto_chunk_size, selective_scan_chunked
from mixbench_kernels.selective_scan.cuda import (
    causal_conv1d_cuda,
    causal_conv1d_update_cuda,
    selective_scan_cuda,
    selective_state_update_cuda,
)
from mixbench_kernels.selective_scan.reference import selective_scan_reference
from mixbench_kernels.selective_scan.triton_backend import selective_scan_triton, triton_unavailable_reason

__all__ = [
    "auto_chunk_size",
    "causal_conv1d_cuda",
    "causal_conv1d_update_cuda",
    "selective_scan_chunked",
    "selective_scan_cuda",
    "selective_scan_reference",
    "selective_scan_triton",
    "selective_state_update_cuda",
    "triton_unavailable_reason",
]
