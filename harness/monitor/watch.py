"""``mixbench watch SUITE``: a live terminal table of a suite's cells, read from the store alone.

Any machine that can read the store (a laptop against the shared PostgreSQL server) sees, per
cell: status, step / total, the latest training loss, the recent tokens/s and MFU, the time
left at that rate, the job and host that run it, and its health flags (``harness.monitor.health``).
The table is rebuilt every few seconds from what the running cells write every ``log_every`` steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from rich.console import Console
from rich.live import Live
from rich.table import Table

from harness.common.names import ENDED, MetricName, RunStatus
from harness.measure.cost import duration
from harness.monitor.health import Thresholds, flags_by_run
from harness.store.database import Run, Store


def eta_seconds(step: float, steps: float, tokens: float, tokens_per_s: float) -> float | None:
    """Steps left × tokens a step / the recent rate; None before the first log."""
    if step <= 0 or tokens_per_s <= 0:
        return None
    return (steps - step) * (tokens / step) / tokens_per_s


def watch_table(store: Store, suite: str, now: datetime, thresholds: Thresholds = Thresholds()) -> Table:
    """One frame: every cell of ``suite`` in the store, with its live figures and flags."""
    runs = store.runs(suite)
    latest: dict[tuple[str, str], tuple[int, float]] = {}
    rows = store.metric_values(suite)
    for key, step, name, value in rows:
        if (key, name) not in latest or step >= latest[key, name][0]:
            latest[key, name] = (step, value)
    flags = flags_by_run(runs, rows, now, thresholds)
    done = sum(r.status == RunStatus.DONE for r in runs)
    table = Table(title=f"suite {suite} at {now:%Y-%m-%d %H:%M:%S} UTC ({done}/{len(runs)} done)")
    for col in ("cell", "status", "step", "loss", "tokens/s", "MFU", "ETA", "job", "host", "flags"):
        table.add_column(col, justify="right" if col in {"step", "loss", "tokens/s", "MFU", "ETA"} else "left")
    for run in runs:
        table.add_row(
            *_cells(run, lambda name, k=run.run_key: latest.get((k, name), (0, None))[1]),
            "; ".join(flags[run.run_key]) or "-",
        )
    return table


def _cells(run: Run, value: Callable[[str], float | None]) -> list[str]:
    step, steps, tokens = value("progress/step"), value("progress/steps"), value("progress/tokens")
    loss, rate, utilisation = value("train/loss"), value("progress/tokens_per_s"), value("progress/mfu")
    if run.status == "done":  # the final figures, over the whole run
        rate, utilisation = value(MetricName.TOKENS_PER_S) or rate, value("train/mfu") or utilisation
    eta = None
    if run.status == RunStatus.RUNNING and None not in (step, steps, tokens, rate):
        eta = eta_seconds(step, steps, tokens, rate)
    return [
        f"{run.arch_label}/{run.size}/T{run.seq_len}",
        run.status,
        "-" if step is None else f"{step:.0f}/{steps:.0f}" if steps else f"{step:.0f}",
        "-" if loss is None else f"{loss:.4f}",
        "-" if rate is None else f"{rate:,.0f}",
        "-" if utilisation is None else f"{utilisation:.1%}",
        "-" if eta is None else duration(eta),
        run.job_id or "-",
        (run.claimed_by or "-").rpartition(":")[0] or "-",
    ]


def frames(
    store: Store,
    suite: str,
    every: float = 5.0,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    sleep: Callable[[float], None] = time.sleep,
    thresholds: Thresholds = Thresholds(),
) -> Iterator[Table]:
    """A frame every ``every`` seconds, until the suite has cells and all of them are done or failed."""
    while True:
        yield watch_table(store, suite, now(), thresholds)
        statuses = {r.status for r in store.runs(suite)}
        if statuses and statuses <= set(ENDED):
            return
        sleep(every)


def watch(
    store: Store, suite: str, every: float, console: Console, once: bool = False, thresholds: Thresholds = Thresholds()
) -> None:
    """Draw the frames in place (one frame and return with ``once``)."""
    if once:
        console.print(watch_table(store, suite, datetime.now(timezone.utc), thresholds))
        return
    with Live(console=console, auto_refresh=False) as live:
        for frame in frames(store, suite, every, thresholds=thresholds):
            live.update(frame, refresh=True)
