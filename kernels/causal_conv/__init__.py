"""The short depthwise causal convolution of the Mamba blocks, without causal-conv1d.

``causal_conv1d_reference`` (``F.conv1d`` over a left-padded sequence) is the reference;
``causal_conv1d_shift`` computes the same in time-major layout as ``width`` shifted
multiply-adds (no transposes, autograd backward); ``causal_conv1d_update_triton`` is one
decode token in one launch, rolling the window in place (as causal-conv1d's ``causal_conv1d_update``).
"""

from mixbench_kernels.causal_conv.reference import causal_conv1d_reference, causal_conv1d_update_reference
from mixbench_kernels.causal_conv.shift import causal_conv1d_shift


def causal_conv1d_update_triton(*args, **kwargs):
    """The Triton one-token update (``mixbench_kernels.causal_conv.triton_update``); triton is
    imported on first call."""
    from mixbench_kernels.causal_conv.triton_update import causal_conv1d_update_triton as update

    return update(*args, **kwargs)


__all__ = [
    "causal_conv1d_reference",
    "causal_conv1d_shift",
    "causal_conv1d_update_reference",
    "causal_conv1d_update_triton",
]
