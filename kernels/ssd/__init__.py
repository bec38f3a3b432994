"""SSD, the scan of Mamba-2: a sequential reference, the chunked PyTorch algorithm, our fused Triton
kernel (``triton_chunked.py``) and mamba-ssm's Triton kernels.

All four take ``mamba_chunk_scan_combined``'s arguments (``x: (batch, T, heads, headdim)``,
``dt: (batch, T, heads)``, ``A: (heads,)``, ``B, C: (batch, T, groups, d_state)``) and compute
the same function; ``tests/kernels/test_ssd.py`` holds them to each other.
"""

from mixbench_kernels.ssd.chunked import DEFAULT_CHUNK_SIZE, ssd_chunked, ssd_flops
from mixbench_kernels.ssd.cuda import ssd_triton
from mixbench_kernels.ssd.reference import ssd_reference


def ssd_chunked_triton(*args, **kwargs):
    """``mixbench_kernels.ssd.triton_chunked.ssd_chunked_triton``; triton is imported on first call."""
    from mixbench_kernels.ssd.triton_chunked import ssd_chunked_triton as scan

    return scan(*args, **kwargs)


__all__ = ["DEFAULT_CHUNK_SIZE", "ssd_chunked", "ssd_chunked_triton", "ssd_flops", "ssd_reference", "ssd_triton"]
