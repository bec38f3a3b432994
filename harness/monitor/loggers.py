"""Mirrors of a running cell's curve into the trackers people already use (``train.loggers``).

The store stays the source of truth; a mirror receives exactly the rows the store does, as
they are written (``harness.monitor.live``). Each tracker is an optional extra (``mixbench[trackers]``):

- ``tensorboard``: event files under ``<log_dir>/tensorboard/<suite>/<run_key>`` (torch's ``SummaryWriter``);
- ``wandb``: a W&B run named after the cell, id = run key, in offline mode unless ``$WANDB_MODE``
  says otherwise (``wandb sync <log_dir>/wandb/...`` uploads it later; nothing reaches the network here).
"""

from __future__ import annotations

import importlib.util
import os
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from models.errors import MixbenchError

DEFAULT_LOG_DIR = Path("results") / "logs"
LOGGER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> the package it needs


class LoggerError(MixbenchError):
    """A logger that cannot run here, said in one line."""


class Mirror(Protocol):
    def log(self, rows: list[tuple[int, str, float]]) -> None: ...

    def close(self) -> None: ...


def check_loggers(names: Iterable[str]) -> None:
    """Refuse, before any training, a logger whose package is not installed."""
    for name in names:
        module = LOGGER_MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise LoggerError(
                f"train.loggers names {name}, but {module} is not installed (pip install 'mixbench[trackers]')"
            )


class TensorBoardMirror:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, rows: list[tuple[int, str, float]]) -> None:
        for step, name, value in rows:
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a reader on another machine sees each log as the store does

    def close(self) -> None:
        self.writer.close()


class WandbMirror:
    def __init__(self, folder: Path, suite: str, run_key: str, label: str, config: dict[str, Any]) -> None:
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=suite,
            name=label,
            id=run_key,
            config=config,
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
            resume="allow",
        )

    def log(self, rows: list[tuple[int, str, float]]) -> None:
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for step, name, value in rows:
            by_step[step][name] = value
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)

    def close(self) -> None:
        self.run.finish()


def open_mirrors(
    names: Iterable[str], log_dir: Path, suite: str, run_key: str, label: str, config: dict[str, Any]
) -> list[Mirror]:
    check_loggers(names := list(names))
    mirrors: list[Mirror] = []
    for name in names:
        if name == "tensorboard":
            mirrors.append(TensorBoardMirror(log_dir / "tensorboard" / suite / run_key))
        else:
            mirrors.append(WandbMirror(log_dir / "wandb", suite, run_key, label, config))
    return mirrors
