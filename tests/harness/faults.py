"""A test mixer that injects a fault at an exact training step, named by a dotted path in a suite.

Attention, unchanged, except that the ``N``-th training forward of its first layer does what
``MIXBENCH_TEST_FAULT="ACTION:N[:RANK]"`` says, on rank ``RANK`` only (every rank if omitted):

- ``sigterm``: send SIGTERM to this process (a preemption);
- ``sigkill_group``: SIGKILL this process's whole process group (a node lost);
- ``raise``: raise ``RuntimeError("injected fault")``.

The fault lives in the environment, not in the suite, so the rerun without it is the same cell.
"""

from __future__ import annotations

import os
import signal

from models.attention import Attention

FAULT_ENV = "MIXBENCH_TEST_FAULT"


class FaultyAttention(Attention):
    def __init__(
        self, d_model: int, layer_idx: int = 0, n_heads: int = 4, rope_base: float = 10000.0, backend: str = "auto"
    ) -> None:
        super().__init__(d_model, layer_idx, n_heads, rope_base, backend)
        self.watch, self.calls = layer_idx == 0, 0

    def forward(self, x, state=None):
        if self.training and self.watch and (spec := os.environ.get(FAULT_ENV)):
            self.calls += 1
            action, call, *rank = spec.split(":")
            if self.calls == int(call) and (not rank or int(rank[0]) == int(os.environ.get("RANK", "0"))):
                if action == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                elif action == "sigkill_group":
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                elif action == "raise":
                    raise RuntimeError("injected fault")
        return super().forward(x, state)
