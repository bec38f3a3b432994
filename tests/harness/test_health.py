"""Health flags on crafted curves: spikes over the recent median, slowdowns below half, a stale
heartbeat, divergence."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from harness.monitor.health import SLOW, SPIKE, HealthMonitor, Thresholds, flags_by_run, run_flags
from harness.store.database import Run


def curve(losses: list[float], rates: list[float] | None = None) -> list[tuple[int, str, float]]:
    rows = [(10 * (i + 1), "train/loss", v) for i, v in enumerate(losses)]
    rows += [(10 * (i + 1), "tokens/s/recent", v) for i, v in enumerate(rates or [])]
    return sorted(rows)


def test_a_loss_above_k_times_the_recent_median_is_flagged_with_its_ratio():
    losses = [4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 8.0, 3.4, 3.3]  # median of the 6 before the spike: 3.75
    flags = HealthMonitor(Thresholds(spike_factor=2.0, window=20, min_points=5)).observe(curve(losses))
    assert flags == [(70, SPIKE, 8.0 / 3.75)], "exactly 2 × the median (7.5) would not be"


def test_just_below_the_factor_and_before_min_points_nothing_is_flagged():
    monitor = HealthMonitor(Thresholds(spike_factor=2.0, min_points=5))
    assert monitor.observe(curve([1.0, 9.0, 1.0, 1.0, 1.0, 1.99])) == [], "9.0 comes before 5 points; 1.99 < 2 × 1.0"


def test_the_median_looks_back_over_the_window_only():
    # a loss that fell from 10 to 1: 3.0 is a spike against the last 5 (median 1), not against all of them
    losses = [10.0] * 5 + [1.0] * 5 + [3.0]
    assert HealthMonitor(Thresholds(window=5, min_points=5)).observe(curve(losses)) == [(110, SPIKE, 3.0)]
    assert HealthMonitor(Thresholds(window=20, min_points=5)).observe(curve(losses)) == []


def test_tokens_per_second_below_half_the_median_is_flagged_slow():
    rates = [1000.0, 1010.0, 990.0, 1000.0, 1005.0, 400.0, 600.0]
    flags = HealthMonitor().observe(curve([3.0] * 7, rates))
    assert flags == [(60, SLOW, 400.0 / 1000.0)], "600 is not below half of the median (1000)"


def test_replaying_a_curve_gives_the_same_flags_as_logging_it_piece_by_piece():
    losses = [5.0, 4.8, 4.6, 4.5, 4.4, 9.9, 4.3, 4.2, 12.0, 4.1]
    rows = curve(losses, [100.0] * 6 + [30.0] + [100.0] * 3)
    whole = HealthMonitor().observe(rows)
    monitor = HealthMonitor()
    pieces = [flag for i in range(0, len(rows), 2) for flag in monitor.observe(rows[i : i + 2])]
    assert whole == pieces and {name for _, name, _ in whole} == {SPIKE, SLOW}


def run(status: str = "running", error: str | None = None, heartbeat: datetime | None = None) -> Run:
    return Run(run_key="k", status=status, error=error, heartbeat_at=heartbeat)


NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def test_flags_read_from_the_run_and_its_rows():
    rows = [(70, SPIKE, 2.4), (130, SPIKE, 3.1), (90, SLOW, 0.41)]
    assert run_flags(run(heartbeat=NOW - timedelta(minutes=3)), rows, NOW) == [
        "2 × loss spike, last ×3.1 at step 130",
        "slow, last ×0.41 at step 90",
    ]
    stale = run(heartbeat=(NOW - timedelta(minutes=14)).replace(tzinfo=None))  # SQLite gives naive UTC
    assert run_flags(stale, [], NOW) == ["no heartbeat for 14 min"]
    assert run_flags(stale, [], NOW, Thresholds(stale_minutes=20)) == []
    assert run_flags(run("done", heartbeat=NOW - timedelta(days=2)), [], NOW) == [], "only a running cell can be stale"
    diverged = run("failed", "TrainingDiverged: loss became nan at step 5 of 10")
    assert run_flags(diverged, [], NOW) == ["diverged: loss became nan at step 5 of 10"]
    assert run_flags(run("failed", "RuntimeError: injected fault"), [], NOW) == []


def test_flags_by_run_takes_only_health_rows():
    rows = [("k", 70, SPIKE, 2.5), ("k", 70, "train/loss", 9.0), ("other", 10, SLOW, 0.2)]
    assert flags_by_run([run(heartbeat=NOW)], rows, NOW) == {"k": ["loss spike, last ×2.5 at step 70"]}
