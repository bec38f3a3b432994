"""What the runner, the launchers and the evaluators all ask of a cell: its label, the cells a
glob selects, its store row, its data settings with paths resolved, its model spec, and the
summary of what became of a selection.

Here rather than in the runner, so a launcher or an evaluator needs the cell, not the runner.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from harness.config.suite import Cell, Suite, SuiteError
from harness.data import DataConfig
from harness.store.database import RunRecord
from harness.tasks import get_task
from models import ModelSpec


@dataclass
class Summary:
    """What became of the cells a run or a launcher was asked for, by cell label."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # jobs stopped on a signal after a checkpoint (a rerun resumes)


def cell_label(cell: Cell) -> str:
    """``arch/size/Tseq_len``; a task cell adds its task and non-default parameters, a grid cell its lr and seed."""
    label = f"{cell.arch}/{cell.size}/T{cell.seq_len}"
    if cell.task is not None:
        task = get_task(cell.task["name"])
        given = [(k, v) for k, v in cell.task["params"].items() if v != task.model_fields[k].default]
        params = ",".join(f"{k}={v}" for k, v in sorted(given, key=lambda kv: (kv[0] != task.difficulty, kv[0])))
        label += f"/{cell.task['name']}({params})"
    if cell.lr_grid is not None:
        label += f"/lr={cell.train.lr:g}"
    if cell.seeds is not None:
        label += f"/seed={cell.train.seed}"
    return label


def run_record(cell: Cell) -> RunRecord:
    """The store's row for a cell, as claimed (or queued by a launcher)."""
    return RunRecord(
        run_key=cell.run_key,
        suite=cell.suite,
        mixer=cell.mixer,
        backbone=cell.backbone,
        size=cell.size,
        seq_len=cell.seq_len,
        dataset=cell.data.source if cell.task is None else f"task:{cell.task['name']}",
        config=cell.config,
    )


def select_cells(suite: Suite, only: str | None) -> list[Cell]:
    """Cells whose label (``arch/size/Tseq_len``) matches the glob ``only`` (all if None).

    A glob that matches no cell is a mistake (a typo would otherwise read as "nothing left to
    train" and exit 0): ``SuiteError`` naming the cells there are.
    """
    cells = suite.cells()
    if only is None:
        return cells
    chosen = [c for c in cells if fnmatch.fnmatch(cell_label(c), only) or fnmatch.fnmatch(c.arch, only)]
    if not chosen:
        raise nothing_matches(only, suite.name, "cell", [cell_label(c) for c in cells])
    return chosen


def nothing_matches(only: str, suite: str, what: str, labels: list[str]) -> SuiteError:
    """The one line for an ``--only`` glob that selects nothing: the glob, and every label it could have matched."""
    return SuiteError(f"--only {only!r} matches no {what} of suite {suite}; its {what}s: {', '.join(labels)}")


def data_config(cell: Cell) -> DataConfig:
    """The cell's data settings with the suite file's relative paths resolved against its folder."""
    d = cell.data
    paths = {"source": d.source, "tokenizer": d.tokenizer, "val_source": d.val_source}
    return d.model_copy(update={k: cell.resolve_path(v) for k, v in paths.items() if v is not None})


def model_spec(cell: Cell, vocab_size: int) -> ModelSpec:
    """The model a cell builds, once the vocabulary is known (from its tokenizer or task)."""
    return ModelSpec.parse(cell.arch, cell.size, vocab_size, mixer_overrides=dict(cell.mixer_settings))
