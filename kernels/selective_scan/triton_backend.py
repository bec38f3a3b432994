"""The ``triton`` selective scan's entry point: where it runs, what it accepts, then the kernels.

Kept apart from ``triton_scan`` so that ``import mixbench_kernels.selective_scan`` never imports triton:
the kernel module is imported on the first call. Whether the kernels can run here is the same
question as for the TTT kernels (a CUDA device, or CPU under ``TRITON_INTERPRET=1``), answered
by the same probe.
"""

from __future__ import annotations

import torch

from mixbench_kernels.ttt.triton_backend import triton_unavailable_reason

INPUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
) -> None:
    """Raise one line naming the first argument whose shape, dtype or device the kernels do not take."""
    reason = triton_unavailable_reason(u.device)
    if reason is not None:
        raise RuntimeError(f"selective_scan_triton: cannot run on these tensors: {reason}")
    if u.dim() != 3:
        raise ValueError(f"selective_scan_triton: u must be (batch, d, T), got shape {tuple(u.shape)}")
    batch, d, T = u.shape
    n = A.shape[-1] if A.dim() == 2 else -1
    expected = {
        "delta": (delta, (batch, d, T)),
        "A": (A, (d, n)),
        "B": (B, (batch, n, T)),
        "C": (C, (batch, n, T)),
        "D": (D, (d,)),
        "z": (z, (batch, d, T)),
        "delta_bias": (delta_bias, (d,)),
        "initial_state": (initial_state, (batch, d, n)),
    }
    for name, (x, shape) in expected.items():
        if x is None:
            continue
        if tuple(x.shape) != shape:
            want = "x".join(str(s) for s in shape) if n > 0 else f"(d={d}, d_state)"
            raise ValueError(
                f"selective_scan_triton: {name} must have shape {want} (u is batch x d x T = {batch}x{d}x{T}), "
                f"got {tuple(x.shape)}"
            )
        if x.device != u.device:
            raise ValueError(f"selective_scan_triton: {name} is on {x.device}, u on {u.device}")
    for name, x in (("u", u), ("delta", delta), ("B", B), ("C", C), ("z", z)):
        if x is not None and x.dtype not in INPUT_DTYPES:
            raise ValueError(
                f"selective_scan_triton: {name} is {str(x.dtype).removeprefix('torch.')}; the kernels take "
                "bfloat16, float16 or float32 (float64: use selective_scan_chunked)"
            )
    for name, x in (("A", A), ("D", D), ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if x is not None and not x.is_floating_point():
            raise ValueError(f"selective_scan_triton: {name} must be floating point, got {x.dtype}")


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """The selective scan in fused Triton kernels; same arguments and results as the reference.

    Unlike mamba-ssm's CUDA kernel it starts from ``initial_state`` and back-propagates through
    the returned last state (float32, ``(batch, d, n)``). The output has ``u``'s dtype and is laid
    out time-major (a transposed ``(batch, T, d)`` tensor), as the Mamba mixer's tensors are.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    out, last = _launch(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus)
    return (out, last) if return_last_state else out


@torch.compiler.disable
def _launch(*args):
    """The kernels, opaque to ``torch.compile``: a graph break rather than Dynamo tracing the launch
    (which depends on Triton and torch versions agreeing; it fails outright under the interpreter)."""
    from mixbench_kernels.selective_scan.triton_scan import SelectiveScanTriton

    return SelectiveScanTriton.apply(*args)
