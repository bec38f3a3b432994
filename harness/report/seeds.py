"""Runs that differ only in their seed form one *point*, reported by its median and its range.

A single seed on a single machine can show a coin flip as a result: near a task's phase
transition the last bits of rounding decide whether a model learns it. So every report
(``results``, the dashboard, the README's tables) reads the runs through this module:

* a **point** is every done run of one setting (the canonical config) but ``train.seed``;
* its **spread** is the median over seeds and the min-max range;
* of a learning-rate grid, the **chosen** point is the one with the best *median* (task
  accuracy highest, ties to the lower median validation loss; text: the lowest median
  validation loss), then the smaller learning rate, never the one lucky run;
* two chosen points of one comparison (same size, sequence length, task and data; the model
  differs) **tie** when their ranges overlap: neither is ranked above the other;
* a task point is **split** when some seeds solve the task (accuracy at least ``SOLVED``) and
  some do not: its median hides that, so reports flag it.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import dataclass

from harness.common.names import FINISHED, MetricName
from harness.store.database import Run

Values = dict[tuple[str, str], float]
SOLVED = 0.9  # task accuracy at which a seed counts as having solved the task


def is_task_run(run: Run) -> bool:
    return isinstance(run.config, dict) and "task" in run.config


def measure(run: Run) -> tuple[str, str]:
    """The metric a run's learning rate is chosen by, and whether higher or lower is better."""
    return (MetricName.TASK_ACCURACY, "max") if is_task_run(run) else (MetricName.VAL_LOSS, "min")


def _setting(run: Run, *, drop: tuple[str, ...] = ()) -> str:
    """The run's canonical config without its seed (and without the ``train`` fields in ``drop``)."""
    config = {k: v for k, v in run.config.items() if k != "selection"}
    config["train"] = {k: v for k, v in config.get("train", {}).items() if k != "seed" and k not in drop}
    return json.dumps(config, sort_keys=True, default=str)


def comparison_key(run: Run) -> str:
    """What two models must share to be compared: everything but the model, its lr and seed (the size stays)."""
    config = json.loads(_setting(run, drop=("lr",)))
    config["model"] = {"size": run.size}
    return json.dumps(config, sort_keys=True)


@dataclass(frozen=True)
class Spread:
    """One metric of a point over its seeds."""

    values: tuple[float, ...]  # one per seed, in seed order

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def overlaps(self, other: Spread) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def solved(self, threshold: float = SOLVED) -> int:
        """How many seeds reached ``threshold``."""
        return sum(v >= threshold for v in self.values)

    def split(self, threshold: float = SOLVED) -> bool:
        """Some seeds reached ``threshold`` and some did not."""
        return 0 < self.solved(threshold) < len(self.values)

    def text(self, spec: str) -> str:
        """``median [min-max]``; one seed is just its value."""
        if len(self.values) == 1:
            return format(self.values[0], spec)
        return f"{self.median:{spec}} [{self.lo:{spec}}-{self.hi:{spec}}]"


@dataclass(frozen=True)
class Point:
    """The done runs of one setting, one per seed, in seed order."""

    runs: tuple[Run, ...]

    @property
    def run(self) -> Run:
        """A run standing for the point: everything but the seed is the same in all of them."""
        return self.runs[0]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(int(r.config.get("train", {}).get("seed", 0)) for r in self.runs)

    @property
    def lr(self) -> float:
        return float(self.run.config.get("train", {}).get("lr", 0.0))  # an imported run has none

    def spread(self, values: Values, metric: str) -> Spread | None:
        """The metric over every seed; None when any seed lacks it."""
        got = [values.get((r.run_key, metric)) for r in self.runs]
        return None if any(v is None for v in got) else Spread(tuple(got))


def points(runs: list[Run], values: Values) -> list[Point]:
    """The done runs that have their measure (:func:`measure`), grouped over seeds, in first-seen order."""
    groups: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        if run.status in FINISHED and (run.run_key, measure(run)[0]) in values:
            groups[_setting(run)].append(run)
    return [
        Point(tuple(sorted(g, key=lambda r: int(r.config.get("train", {}).get("seed", 0))))) for g in groups.values()
    ]


@dataclass(frozen=True)
class Choice:
    """The points of one learning-rate grid, best median first; ``best`` is the one a report shows."""

    candidates: tuple[Point, ...]

    @property
    def best(self) -> Point:
        return self.candidates[0]


def choose(runs: list[Run], values: Values) -> list[Choice]:
    """Every grid (points that differ only in learning rate) with its points ranked by their medians."""
    grids: dict[str, list[Point]] = defaultdict(list)
    for point in points(runs, values):
        grids[_setting(point.run, drop=("lr",))].append(point)

    def rank(point: Point) -> tuple[float, float, float]:
        metric, goal = measure(point.run)
        median = point.spread(values, metric).median
        loss = point.spread(values, MetricName.VAL_LOSS)
        return (-median if goal == "max" else median, loss.median if loss else float("inf"), point.lr)

    return [Choice(tuple(sorted(grid, key=rank))) for grid in grids.values()]


def ties(chosen: list[Point], values: Values, metric: str) -> dict[str, list[Point]]:
    """``{run_key of a point's run: the points it ties with}``: chosen points of one comparison
    (:func:`comparison_key`) whose ``metric`` ranges overlap."""
    spreads = [p.spread(values, metric) for p in chosen]
    out: dict[str, list[Point]] = {}
    for i, point in enumerate(chosen):
        out[point.run.run_key] = [
            other
            for j, other in enumerate(chosen)
            if j != i
            and comparison_key(other.run) == comparison_key(point.run)
            and spreads[i] is not None
            and spreads[j] is not None
            and spreads[i].overlaps(spreads[j])
        ]
    return out
