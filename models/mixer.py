"""The sequence-mixer contract and the backend mechanism every built-in mixer shares.

A mixer maps ``x: (batch, seq, d_model) -> (batch, seq, d_model)`` causally. The contract
(``../DESIGN.md`` §2, restated here because this is where a plugin author looks):

* ``forward(x, state=None) -> (y, state)``: the whole sequence at once (training, prefill).
  With ``state=None`` no decode state is built and ``None`` comes back. With a fresh state
  from ``init_state`` the mixer returns the state after the last token, ready for ``step``.
* ``init_state(batch_size, device, dtype)``: an empty decode state (any object; usually a dict).
* ``step(x_t, state) -> (y_t, state)`` with ``x_t: (batch, d_model)``: one token of decode.
  ``forward`` on a prefix followed by ``step`` per token reproduces ``forward`` on the whole.
* ``flops(seq_len) -> int``: analytic forward FLOPs for one sequence (a multiply-add = 2).
* ``state_size(seq_len) -> int``: numbers held between tokens for one sequence.

Backends: a mixer lists its ``backends`` fastest first; each has a probe saying why it cannot
run (missing package, wrong device) or ``None`` when it can. Every backend computes the same
function; the choice is made per device and recorded with every result.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

# A probe gets the device the computation will run on (None = "this machine in general")
# and returns None when the backend can run there, or a short reason when it cannot.
Probe = Callable[[torch.device | None], str | None]


@dataclass(frozen=True)
class Backend:
    """One implementation of a mixer's function, e.g. ``flash-attn`` or ``sdpa``."""

    name: str
    probe: Probe

    def unavailable_reason(self, device: torch.device | None) -> str | None:
        return self.probe(device)


def always(device: torch.device | None) -> str | None:
    """Probe of a pure-PyTorch backend: runs everywhere."""
    return None


def needs_cuda_module(module: str) -> Probe:
    """Probe for a backend that needs an importable CUDA package and a CUDA device."""

    def probe(device: torch.device | None) -> str | None:
        if importlib.util.find_spec(module) is None:
            return f"package {module!r} is not installed"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU"
        if device is not None and device.type != "cuda":
            return f"needs a CUDA device, got {device.type}"
        return None

    return probe


def backends_of(cls: type) -> tuple[Backend, ...]:
    """Declared backends of a mixer class; an undeclared third-party mixer is plain torch."""
    return tuple(getattr(cls, "backends", ())) or (Backend("torch", always),)


class SequenceMixer(nn.Module):
    """Base class of the built-in mixers: backend selection and the decode contract.

    Subclasses set ``backends`` and implement the contract methods. Third-party mixers may
    subclass it or not; the harness only relies on the methods listed in the module doc.
    """

    backends: ClassVar[tuple[Backend, ...]] = (Backend("torch", always),)

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        names = [b.name for b in self.backends]
        if backend != "auto" and backend not in names:
            raise ValueError(f"{type(self).__name__}: unknown backend {backend!r}; choose from {names} or 'auto'")
        self.backend = backend

    def select_backend(self, device: torch.device) -> str:
        """The first available backend on ``device``, or the requested one if it can run."""
        if self.backend != "auto":
            chosen = next(b for b in self.backends if b.name == self.backend)
            reason = chosen.unavailable_reason(device)
            if reason is not None:
                raise RuntimeError(f"{type(self).__name__}: backend {self.backend!r} cannot run: {reason}")
            return chosen.name
        for b in self.backends:
            if b.unavailable_reason(device) is None:
                return b.name
        raise RuntimeError(f"{type(self).__name__}: no backend can run on {device}")

    # The contract; subclasses implement all of these.
    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def flops(self, seq_len: int) -> int:
        raise NotImplementedError

    def state_size(self, seq_len: int) -> int:
        raise NotImplementedError
