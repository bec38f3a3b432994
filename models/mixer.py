"""The sequence-mixer contract and the backend mechanism every built-in mixer shares.

A mixer maps ``x: (batch, seq, d_model) -> (batch, seq, d_model)`` causally. The contract
(stated here because this is where a plugin author looks; ``docs/design.md`` records why):

* ``forward(x, state=None) -> (y, state)``: the whole sequence at once (training, prefill).
  With ``state=None`` no decode state is built and ``None`` comes back. With a fresh state
  from ``init_state`` the mixer returns the state after the last token, ready for ``step``.
* ``init_state(batch_size, device, dtype)``: an empty decode state (any object; usually a dict).
* ``step(x_t, state) -> (y_t, state)`` with ``x_t: (batch, d_model)``: one token of decode.
  ``forward`` on a prefix followed by ``step`` per token reproduces ``forward`` on the whole.
* ``flops(seq_len) -> int``: analytic forward FLOPs for one sequence (a multiply-add = 2).
* ``state_size(seq_len) -> int``: numbers held between tokens for one sequence.

Backends: a mixer lists its ``backends`` fastest first; each has a probe saying why it cannot
run (missing package, a compiled extension that does not load, wrong device) or ``None`` when it
can, and optionally the dtypes it accepts (flash-attn: fp16/bf16 only). Every backend computes
the same function; the choice is made per device and dtype, at call time, and recorded with every
result. A mixer whose one-token ``step`` runs other kernels than its ``forward`` lists them in
``decode_backends`` (same names); the latency table records the backend of the mode it timed.

``step`` may update the state's tensors in place (the fused decode kernels and the attention KV
cache do): always continue from the state ``step`` returned, not from an older one.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from functools import lru_cache
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
    dtypes: tuple[torch.dtype, ...] | None = None  # the dtypes it computes in; None: any

    def unavailable_reason(self, device: torch.device | None, dtype: torch.dtype | None = None) -> str | None:
        """Why this backend cannot run on ``device`` with inputs of ``dtype`` (None: not asked)."""
        reason = self.probe(device)
        if reason is None and dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            names = "/".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"needs {names} inputs, got {str(dtype).removeprefix('torch.')}"
        return reason


def always(device: torch.device | None) -> str | None:
    """Probe of a pure-PyTorch backend: runs everywhere."""
    return None


@lru_cache(maxsize=None)
def import_error(module: str) -> str | None:
    """Why ``module`` does not import (one line), or None; tried once per process.

    Finding a package is not enough: a wheel built against another torch or CUDA is found, then
    fails with an undefined symbol when its compiled extension loads, at the first forward.
    """
    try:
        importlib.import_module(module)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        return f"{module} does not import: {type(exc).__name__}: {lines[0] if lines else 'no message'}"
    return None


def needs_cuda_module(package: str, *imports: str) -> Probe:
    """Probe for a backend that needs ``package``, a CUDA device, and ``imports`` to load.

    ``imports`` names the compiled extensions (e.g. ``flash_attn_2_cuda``) or the modules whose
    import loads them; each is imported once, on the first probe on a CUDA machine.
    """

    def probe(device: torch.device | None) -> str | None:
        if importlib.util.find_spec(package) is None:
            return f"package {package!r} is not installed"
        if not torch.cuda.is_available():
            return "needs a CUDA GPU"
        if device is not None and device.type != "cuda":
            return f"needs a CUDA device, got {device.type}"
        return next((reason for module in imports if (reason := import_error(module)) is not None), None)

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
    decode_backends: ClassVar[tuple[Backend, ...] | None] = None  # None: ``step`` runs ``backends``

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        names = [b.name for b in self.backends]
        if backend != "auto" and backend not in names:
            raise ValueError(f"{type(self).__name__}: unknown backend {backend!r}; choose from {names} or 'auto'")
        self.backend = backend

    def select_backend(self, device: torch.device, dtype: torch.dtype | None = None, decode: bool = False) -> str:
        """The first backend that can run on ``device`` with ``dtype`` inputs, or the requested one.

        ``decode`` asks about ``step`` (``decode_backends`` where the mixer declares them).
        """
        backends = (self.decode_backends or self.backends) if decode else self.backends
        where = f"{device}" + ("" if dtype is None else f" in {str(dtype).removeprefix('torch.')}")
        if self.backend != "auto":
            chosen = next((b for b in backends if b.name == self.backend), None)
            if chosen is None:
                raise RuntimeError(f"{type(self).__name__}: backend {self.backend!r} has no decode kernel")
            reason = chosen.unavailable_reason(device, dtype)
            if reason is not None:
                raise RuntimeError(f"{type(self).__name__}: backend {self.backend!r} cannot run: {reason} (on {where})")
            return chosen.name
        for b in backends:
            if b.unavailable_reason(device, dtype) is None:
                return b.name
        raise RuntimeError(f"{type(self).__name__}: no backend can run on {where}")

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
