"""Test-time training (TTT) inner loop: the dual form and its primal reference side by side.

``ttt_dual`` (fast, mini-batch at a time), ``ttt_primal`` (token at a time, materialising the
weights after every token) and ``ttt_triton`` (the dual form fused into Triton kernels, forward
and backward; triton is imported on first use) take the same arguments and compute the same
function. ``mixbench_kernels.ttt.inner`` holds the inner model ``f`` and its analytic gradient, shared by
the PyTorch forms. ``ttt(backend, ...)`` runs one of them, through the ``mixbench::ttt`` custom op
while ``torch.compile`` traces (``mixbench_kernels.ttt.op``).
"""

from mixbench_kernels.ttt.dual import ttt_dual
from mixbench_kernels.ttt.inner import TTTState, fresh_state
from mixbench_kernels.ttt.reference import GradientDescentLearner, scan_tokens, ttt_primal
from mixbench_kernels.ttt.triton_backend import triton_unavailable_reason, ttt_triton

FORMS = {"triton": ttt_triton, "dual": ttt_dual, "primal": ttt_primal}

from mixbench_kernels.ttt.op import ttt  # noqa: E402 - the one entry point of the layer: a custom op under torch.compile

__all__ = [
    "FORMS",
    "GradientDescentLearner",
    "TTTState",
    "fresh_state",
    "scan_tokens",
    "triton_unavailable_reason",
    "ttt",
    "ttt_dual",
    "ttt_primal",
    "ttt_triton",
]
