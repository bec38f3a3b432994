"""A running cell's live figures in the store: its curve, health flags and progress, every log.

Rank 0 alone writes (the training loop's ``on_log`` hook, :data:`harness.engine.train.LogHook`), so
any machine that reads the store (``mixbench watch``, ``results``, the dashboard) follows a cell
while it trains, and a cell that fails keeps its curve up to its last log. Each log is one
transaction for the curve and one for progress (which also beats the heartbeat).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from harness.engine.train import CURVE_NAMES
from harness.monitor.health import HEALTH_NAMES, HealthMonitor, Thresholds
from harness.monitor.loggers import Mirror
from harness.store.database import Store


class LiveCurve:
    """The hook: stores each log's rows and flags, and mirrors them to the trackers (closed on exit)."""

    def __init__(
        self,
        store: Store,
        run_key: str,
        steps: int,
        mfu_of: Callable[[float], float | None] = lambda _rate: None,
        mirrors: list[Mirror] | None = None,
        thresholds: Thresholds = Thresholds(),
    ) -> None:
        """``mfu_of(tokens_per_s)``: the utilisation that rate means (None where the device's peak is unknown)."""
        self.store, self.run_key, self.steps, self.mfu_of = store, run_key, steps, mfu_of
        self.mirrors, self.thresholds = mirrors or [], thresholds
        self.monitor = HealthMonitor(thresholds)

    def __call__(self, after: int, rows: list[tuple[int, str, float]], step: int, tokens: int) -> None:
        if after == 0:  # a fresh curve, or a resumed one replayed whole: its flags come out the same
            self.monitor = HealthMonitor(self.thresholds)
        rows = rows + self.monitor.observe(rows)
        self.store.record_curve(self.run_key, after, rows, CURVE_NAMES + HEALTH_NAMES)
        progress = {"progress/step": float(step), "progress/tokens": float(tokens), "progress/steps": float(self.steps)}
        if recent := [v for _, name, v in rows if name == "tokens/s/recent"]:
            progress["progress/tokens_per_s"] = recent[-1]
            if (utilisation := self.mfu_of(recent[-1])) is not None:
                progress["progress/mfu"] = utilisation
        self.store.record_progress(self.run_key, step, progress)
        for mirror in self.mirrors:
            mirror.log(rows)

    def __enter__(self) -> LiveCurve:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for mirror in self.mirrors:
            mirror.close()
