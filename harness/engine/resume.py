"""Mid-cell checkpoints and preemption: a killed or preempted cell goes on where it stopped.

``<checkpoint_dir>/<run_key>/steps/step-NNNNNN/`` holds one ``torch.distributed.checkpoint``
(DCP) of the model, the optimizer, and the loop's own state (step, sampler position, RNG
states, the metrics logged so far). DCP writes each rank's shards in parallel and stores
tensors by their unwrapped names (``torch.distributed.checkpoint.state_dict``), so a
checkpoint saved with N ranks, DDP or FSDP, loads with M ranks in either mode.

A checkpoint is written under ``step-NNNNNN.partial`` and renamed by rank 0 once every rank
has written, so a kill mid-save never leaves a folder that looks complete. The last
``keep`` complete ones are kept. SIGTERM and SIGUSR1 (how Slurm preempts) only set a flag;
the loop checks it between optimiser steps, all ranks agree, save, and stop with
:class:`Preempted`, whose message is the one line that says how to resume.
"""

from __future__ import annotations

import re
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.engine.distributed import Group

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (a rerun resumes)
_STEP_DIR = re.compile(r"^step-(\d+)$")


class Preempted(BaseException):
    """Training stopped on a signal after saving a checkpoint; not a failure of the cell.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the
    way up records it as a failed run.
    """

    def __init__(self, step: int, steps: int, path: Path, signal_name: str) -> None:
        self.step, self.steps, self.path, self.signal_name = step, steps, path, signal_name
        super().__init__(f"{signal_name} at step {step} of {steps}; checkpoint saved in {path}")


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1 while installed; the training loop polls it between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator["PreemptionFlag"]:
        """Handle the signals for the duration (main thread only; elsewhere a no-op)."""
        try:
            previous = {s: signal.signal(s, self._handle) for s in PREEMPT_SIGNALS}
        except ValueError:  # not the main thread: signals cannot be handled here
            yield self
            return
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}  # numpy's global RNG is not used by the loop
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _unwrapped(call: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """``dcp.save``/``dcp.load``, with the exception a rank raised given back as itself.

    DCP wraps every rank's failure in a ``CheckpointException``, which derives from
    ``BaseException``: a Ctrl-C during a save then slipped past the runner's handlers and left the
    cell ``running`` with no error. A KeyboardInterrupt inside is raised as one (the cell is
    recorded interrupted); any other failure as a one-line ``RuntimeError`` (recorded failed).
    """
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        return call(*args, **kwargs)
    except CheckpointException as exc:
        failures = [failure[0] if isinstance(failure, tuple) else failure for failure in exc.failures.values()]
        if any(isinstance(f, KeyboardInterrupt) for f in failures):
            raise KeyboardInterrupt from None
        first = failures[0] if failures else exc
        raise RuntimeError(f"checkpoint {what} failed: {type(first).__name__}: {first}") from None


class StepCheckpoints:
    """The mid-cell checkpoints of one cell, in ``folder`` (shared by every rank)."""

    def __init__(self, folder: Path, group: Group, keep: int = 2) -> None:
        self.folder, self.group, self.keep = Path(folder), group, max(1, keep)

    def complete(self) -> list[tuple[int, Path]]:
        """(step, path) of every complete checkpoint, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
        return sorted(found)

    def latest(self) -> Path | None:
        """The latest complete checkpoint as rank 0 sees it (every rank gets the same answer)."""
        done = self.complete() if self.group.is_main else None
        done = self.group.broadcast(done)
        return done[-1][1] if done else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict[str, Any]) -> Path:
        """Every rank writes its shards; rank 0 publishes the folder and prunes old ones."""
        import torch.distributed.checkpoint as dcp  # here: a 3 s import that a run without checkpoints skips
        from torch.distributed.checkpoint.state_dict import get_state_dict

        final = self.folder / f"step-{step:06d}"
        partial = final.with_name(final.name + ".partial")
        if self.group.is_main:
            shutil.rmtree(partial, ignore_errors=True)  # a save killed earlier at this step
        self.group.barrier()
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state, "train": {**train_state, "rng": _rng_state()}}
        with warnings.catch_warnings():  # world size 1 runs DCP without a process group, on purpose
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            _unwrapped(dcp.save, "save", state, checkpoint_id=str(partial))
        self.group.barrier()
        if self.group.is_main:
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for _, old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def load(
        self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, train_state: dict[str, Any]
    ) -> dict[str, Any]:
        """Restore model, optimizer and RNG in place; returns the loop's saved state.

        ``train_state`` is a template with the keys the loop saved (values are replaced).
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optim": optim_state, "train": {**train_state, "rng": _rng_state()}}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            _unwrapped(dcp.load, "load", state, checkpoint_id=str(path))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        _set_rng_state(state["train"].pop("rng"))
        return state["train"]

    def remove(self) -> None:
        """Rank 0: the cell is done and its final weights are saved; the step checkpoints go."""
        if self.group.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)
