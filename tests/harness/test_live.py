"""Live curves: a cell's curve reaches the store while it trains, survives kill -9, and its resume
stores every step exactly once (SQLite and a real PostgreSQL server)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.store.database import Store

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def curves(store: Store) -> dict[str, list[tuple[int, float]]]:
    """``name -> [(step, value)]`` of the one run in ``store``, in step order."""
    by_name: dict[str, list[tuple[int, float]]] = {}
    for _key, step, name, value in store.metric_values():
        by_name.setdefault(name, []).append((step, value))
    return {name: sorted(points) for name, points in by_name.items()}


def test_a_killed_cell_keeps_its_curve_and_the_resume_stores_every_step_once(
    db, write_suite, tmp_path, monkeypatch, capsys
):
    suite = write_suite(
        models=["faults:FaultyAttention@transformer"],
        train={"tokens": 12 * 256, "batch_tokens": 256, "lr": 3e-3, "log_every": 1, "checkpoint_every": 3},
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}",
        "OMP_NUM_THREADS": "1",
        "MIXBENCH_TEST_FAULT": "sigkill_group:8",
    }
    killed = subprocess.run(
        [sys.executable, "-m", "harness", "run", str(suite), "--db", db],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    store = Store(db)  # what another machine reads while the cell is down: the curve up to its last log
    (run,) = store.runs()
    assert run.status == "running" and run.heartbeat_at is not None
    before = curves(store)
    assert [s for s, _ in before["train/loss"]] == list(range(1, 8)), "steps 1-7 were logged before the kill in step 8"
    assert before["progress/step"] == [(7, 7.0)] and before["progress/steps"] == [(7, 12.0)]

    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["results", "--db", db, "--stale-minutes", "0"]) == 0  # its runner is gone: no heartbeat since
    assert re.search(r"no heartbeat for \d+ min", capsys.readouterr().out)
    assert main(["run", str(suite), "--db", db]) == 0  # resumes from the checkpoint of step 6
    after = curves(Store(db))
    for name in ("train/loss", "train/lr", "train/grad_norm", "tokens/s", "tokens/s/recent"):
        assert [s for s, _ in after[name]] == list(range(1, 13)), f"{name}: every step once"
    values = lambda points: [v for _, v in points]  # noqa: E731
    assert values(after["train/loss"][:7]) == pytest.approx(values(before["train/loss"]), rel=1e-6), (
        "the resumed curve continues the killed one: steps 1-6 from the checkpoint, step 7 redone alike"
    )
    assert after["train/lr"][:7] == before["train/lr"]
    assert Store(db).runs()[0].status == "done"
