"""The synthetic-task plugin mechanism: one base class, one registry, one sequence maker.

A task is a pydantic model whose fields are its parameters (``num_kv_pairs``, ``vocab_size``,
...), with defaults, types and ranges declared on the fields. It implements two methods:

* ``check(seq_len)``: raise ``TaskParamError(field, why)`` when these parameters cannot make
  a sequence of ``seq_len`` tokens (too many pairs, too small a vocabulary);
* ``generate(seq_len, n, rng) -> (inputs, targets)``: ``n`` sequences as int64 numpy arrays
  of shape ``(n, seq_len)``, vectorised over the batch. ``targets`` holds ``IGNORE_INDEX``
  (-100, ``F.cross_entropy``'s default) at every position that is not scored, and the token
  the model must predict at the positions that are.

``make_sequences`` turns a task into data: it draws the sequences in fixed-size chunks, each
from a generator seeded by ``(seed, split, chunk)``, so the data is a function of the seed and
the parameters alone, the first ``k`` sequences do not depend on how many were asked for,
and train and validation never share a random stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from models.errors import MixbenchError

IGNORE_INDEX = -100  # targets at unscored positions: F.cross_entropy skips them by default
CHUNK = 256  # sequences drawn per generator; fixed, so the data does not depend on n
SPLITS = {"train": 0, "val": 1}


class TaskError(MixbenchError, LookupError):
    """An unknown task name; the message lists the known ones."""


class TaskParamError(MixbenchError, ValueError):
    """Parameters that cannot make a sequence; ``field`` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Task(BaseModel):
    """Base of every synthetic task: subclass, declare the parameters as fields, register."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ClassVar[str] = ""
    # The parameter that sets how much the model must remember (the x axis of the
    # "accuracy vs difficulty" panel): ``num_kv_pairs`` for recall, ``num_tokens`` for copying.
    difficulty: ClassVar[str] = ""

    vocab_size: int

    def check(self, seq_len: int) -> None:
        """Raise ``TaskParamError`` if no sequence of ``seq_len`` tokens fits these parameters."""

    def generate(self, seq_len: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Every parameter, defaults filled in: what the run key hashes."""
        return self.model_dump()


_TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    """Class decorator: make a ``Task`` subclass usable as ``task: {name: ...}`` in a suite."""

    def decorate(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"task {name!r}: {cls!r} is not a harness.tasks.Task subclass")
        existing = _TASKS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"task name {name!r} is already registered by {existing.__module__}")
        if cls.difficulty and cls.difficulty not in cls.model_fields:
            raise TypeError(f"task {name!r}: difficulty {cls.difficulty!r} is not one of its parameters")
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorate


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``; an unknown name lists the known ones."""
    if name not in _TASKS:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS)) or 'none'}")
    return _TASKS[name]


def list_tasks() -> list[str]:
    return sorted(_TASKS)


@dataclass(frozen=True)
class Sequences:
    """A split of a task: inputs, targets (``IGNORE_INDEX`` where unscored) and the score mask."""

    inputs: torch.Tensor  # (n, seq_len) int64
    targets: torch.Tensor  # (n, seq_len) int64

    @property
    def mask(self) -> torch.Tensor:
        """True exactly at the positions that are scored."""
        return self.targets != IGNORE_INDEX

    def __len__(self) -> int:
        return self.inputs.shape[0]


def make_sequences(task: Task, seq_len: int, n: int, seed: int, split: str = "train") -> Sequences:
    """``n`` sequences of ``task``, a function of ``(task parameters, seq_len, seed, split)`` only."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    task.check(seq_len)
    inputs, targets = [], []
    for chunk, lo in enumerate(range(0, n, CHUNK)):
        rng = np.random.default_rng([seed, SPLITS[split], chunk])
        x, y = task.generate(seq_len, CHUNK, rng)
        take = min(CHUNK, n - lo)
        inputs.append(x[:take])
        targets.append(y[:take])
    if not inputs:
        empty = torch.empty(0, seq_len, dtype=torch.int64)
        return Sequences(empty, empty.clone())
    return Sequences(torch.from_numpy(np.concatenate(inputs)), torch.from_numpy(np.concatenate(targets)))


# --- helpers the built-in tasks share --------------------------------------------------------


def sample_distinct(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """``(n, k)`` integers from ``[low, high)``, distinct within each row, uniformly chosen."""
    # The k smallest of n rows of uniform noise over the range give k distinct uniform picks.
    noise = rng.random((n, high - low), dtype=np.float32)
    return np.argpartition(noise, k - 1, axis=1)[:, :k].astype(np.int64) + low if k else np.zeros((n, 0), np.int64)


def place_queries(
    inputs: np.ndarray,
    targets: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    start: np.ndarray | int,
    num_queries: int,
    rng: np.random.Generator,
) -> None:
    """Ask for ``num_queries`` of each row's keys after position ``start`` (in place).

    The region from ``start`` to the end is cut into two-token slots; each query takes a
    random slot and writes its key in the slot's first token. The model is scored at the key:
    its next token must be the value it was paired with in the context. The value itself is
    never written into the inputs after a query: if it were, the last queries of a sequence
    could be answered by elimination (the one context value not yet shown), a shortcut a
    2-layer attention model takes instead of recall (accuracy 1/P, 1/(P-1), ..., 1 by query
    order: a plateau near 0.5 at 4 pairs).
    """
    n, seq_len = inputs.shape
    start = np.broadcast_to(np.asarray(start, dtype=np.int64), (n,))
    num_slots = (seq_len - start) // 2
    rows = np.arange(n)[:, None]
    which = np.argsort(rng.random(keys.shape), axis=1)[:, :num_queries]  # which pairs are asked for
    # A slot index uniform over each row's own number of slots, distinct within the row.
    noise = rng.random((n, int(num_slots.max())))
    noise[np.arange(noise.shape[1])[None, :] >= num_slots[:, None]] = np.inf  # slots past the end
    slot = np.argpartition(noise, num_queries - 1, axis=1)[:, :num_queries]
    pos = start[:, None] + 2 * slot
    inputs[rows, pos] = keys[rows, which]
    targets[rows, pos] = values[rows, which]
