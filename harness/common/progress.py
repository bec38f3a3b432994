"""Progress bars for long work: description, bar, live figures, elapsed time and ETA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress, task: Any) -> None:
        self._progress, self._task = progress, task

    def update(self, advance: int = 1, **figures: float) -> None:
        """Advance the bar and show the latest figures (e.g. ``loss=2.31, tokens_per_s=1.2e4``)."""
        shown = "  ".join(f"{k.replace('_per_', '/')} {v:.4g}" for k, v in figures.items())
        self._progress.update(self._task, advance=advance, figures=shown)


@contextmanager
def progress_bar(
    description: str, total: int | None, unit: str = "", completed: int = 0, enabled: bool = True
) -> Iterator[_Bar]:
    """A bar from ``completed`` (work done before, e.g. by a resumed run) to ``total`` (None: unknown).

    ``enabled=False`` draws nothing (e.g. on every rank but rank 0)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False, disable=not enabled) as progress:
        yield _Bar(progress, progress.add_task(description, total=total, completed=completed, figures=""))
