"""Where the TTT Triton kernels can run, and which inner models they compute.

Its own module, importing neither triton nor a kernel, so that both the backend entry point
(``triton_backend``) and the kernels' shared glue (``triton_common``) can import it: before,
``triton_common`` imported this from ``triton_backend``, which imports the kernels, which import
``triton_common`` (issue 21).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from mixbench_kernels.ttt.inner import TTTState


def triton_unavailable_reason(device: torch.device | None) -> str | None:
    """``None`` where the Triton kernels can run: a CUDA device, or CPU under ``TRITON_INTERPRET=1``.

    The interpreter is for tests (it is slow); it must be set before triton is first imported.
    """
    if importlib.util.find_spec("triton") is None:
        return "package 'triton' is not installed"
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return f"needs a CUDA device, got {device.type} (TRITON_INTERPRET=1 runs the kernels on CPU, slowly)"


def check_supported(
    q: torch.Tensor, state: TTTState, ln_weight: torch.Tensor | None, residual: bool, n_layers: int
) -> None:
    """The kernels compute the inner models ``models/ttt.py`` builds, where they can run; else one line."""
    reason = triton_unavailable_reason(q.device)
    if reason is not None:
        raise RuntimeError(f"ttt_triton: cannot run on these tensors: {reason}")
    if len(state.params) != n_layers or any(b is None for _, b in state.params) or ln_weight is None or not residual:
        raise ValueError(
            f"ttt_triton: the kernel for {n_layers} inner layer(s) needs biases, the inner LayerNorm and the "
            "residual (as models/ttt.py builds them); use ttt_dual for other inner models"
        )
