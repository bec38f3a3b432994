"""Health flags of a training run: loss spikes, slowdowns, a silent runner, a diverged loss.

A multi-day cell that goes wrong should say so on day one. Two flags are found on the curve
as it is logged and stored as metric rows at the step they happened (so ``mixbench query``
sees them, and a resumed cell replays its curve into the same flags):

- ``health/loss_spike``: the loss above ``spike_factor`` × the median of the last ``window``
  logged losses; the value is that ratio.
- ``health/slow``: ``tokens/s/recent`` (the rate since the previous log) below
  ``slow_fraction`` × the median of its last ``window`` values; the value is that ratio.

Two more are read from the run itself: a NaN/inf loss fails the cell with ``TrainingDiverged``
(its error names the step), and a ``running`` cell whose heartbeat (``runs.heartbeat_at``,
written with every log) is older than ``stale_minutes`` has a runner that is gone or hung.
Medians need ``min_points`` earlier logs, so the first logs of a run are never flagged.
"""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from harness.common.names import RunStatus
from harness.store.database import Run

SPIKE = "health/loss_spike"
SLOW = "health/slow"
HEALTH_NAMES = (SPIKE, SLOW)
DIVERGED_ERROR = "TrainingDiverged"  # the exception type that starts a diverged run's error (harness/engine/train.py)


@dataclass(frozen=True)
class Thresholds:
    spike_factor: float = 2.0
    slow_fraction: float = 0.5
    window: int = 20  # logged points behind each median
    min_points: int = 5
    stale_minutes: float = 10.0


class HealthMonitor:
    """Watches a curve log by log; :meth:`observe` returns the flag rows the new rows raise."""

    def __init__(self, thresholds: Thresholds = Thresholds()) -> None:
        self.t = thresholds
        self._recent: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.t.window))

    def observe(self, rows: Iterable[tuple[int, str, float]]) -> list[tuple[int, str, float]]:
        flags = []
        for step, name, value in rows:
            if name == "train/loss":
                ratio = self._ratio(name, value)
                if ratio is not None and ratio > self.t.spike_factor:
                    flags.append((step, SPIKE, ratio))
            elif name == "tokens/s/recent":
                ratio = self._ratio(name, value)
                if ratio is not None and ratio < self.t.slow_fraction:
                    flags.append((step, SLOW, ratio))
        return flags

    def _ratio(self, name: str, value: float) -> float | None:
        """``value`` over the median of the earlier values of ``name`` (None before ``min_points``), then remembered."""
        recent = self._recent[name]
        median = statistics.median(recent) if len(recent) >= self.t.min_points else None
        recent.append(value)
        return value / median if median else None


def _age_minutes(then: datetime, now: datetime) -> float:
    if then.tzinfo is None:  # SQLite hands back naive datetimes; the store writes UTC
        then = then.replace(tzinfo=timezone.utc)
    return (now - then).total_seconds() / 60


def run_flags(
    run: Run, health_rows: Iterable[tuple[int, str, float]], now: datetime, thresholds: Thresholds = Thresholds()
) -> list[str]:
    """The flags of one run, each a short phrase (``loss spike ×2.4 at step 120``); none for a healthy run."""
    flags = []
    by_name: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step, name, value in health_rows:
        by_name[name].append((step, value))
    for name, what in ((SPIKE, "loss spike"), (SLOW, "slow")):
        if points := sorted(by_name.get(name, [])):
            step, ratio = points[-1]
            times = f"{len(points)} × " if len(points) > 1 else ""
            flags.append(f"{times}{what}, last ×{ratio:.2g} at step {step}")
    if run.status == RunStatus.FAILED and (run.error or "").startswith(DIVERGED_ERROR):
        flags.append("diverged: " + run.error.removeprefix(DIVERGED_ERROR + ": "))
    if run.status == RunStatus.RUNNING and run.heartbeat_at is not None:
        age = _age_minutes(run.heartbeat_at, now)
        if age > thresholds.stale_minutes:
            flags.append(f"no heartbeat for {age:.0f} min")
    return flags


def flags_by_run(
    runs: Iterable[Run],
    metric_rows: Iterable[tuple[str, int, str, float]],
    now: datetime | None = None,
    thresholds: Thresholds = Thresholds(),
) -> dict[str, list[str]]:
    """``run_key -> flags`` from the store's runs and ``(run_key, step, name, value)`` metric rows."""
    now = now or datetime.now(timezone.utc)
    health: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for key, step, name, value in metric_rows:
        if name in HEALTH_NAMES:
            health[key].append((step, name, value))
    return {r.run_key: run_flags(r, health.get(r.run_key, []), now, thresholds) for r in runs}
