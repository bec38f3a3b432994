"""Test-time training (TTT) inner loop: the dual form and its primal reference side by side.

``ttt_dual`` (fast, mini-batch at a time) and ``ttt_primal`` (token at a time, materialising the
weights after every token) take the same arguments and compute the same function; a Triton
kernel, when written, goes beside them with that signature. ``kernels.ttt.inner`` holds the
inner model ``f`` and its analytic gradient, shared by both.
"""

from kernels.ttt.dual import ttt_dual
from kernels.ttt.inner import TTTState, fresh_state
from kernels.ttt.reference import GradientDescentLearner, scan_tokens, ttt_primal

FORMS = {"dual": ttt_dual, "primal": ttt_primal}

__all__ = ["FORMS", "GradientDescentLearner", "TTTState", "fresh_state", "scan_tokens", "ttt_dual", "ttt_primal"]
