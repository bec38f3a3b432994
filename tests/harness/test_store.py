"""The store: round trip, resumable claims, read-only queries, schema version checks."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from harness.store import SCHEMA_VERSION, RunRecord, Store, StoreError


def record(key: str = "k1", **kw) -> RunRecord:
    base = dict(run_key=key, suite="s", mixer="attention", backbone="transformer", size="micro", seq_len=32,
                dataset="builtin:kjv", config={"a": 1})  # fmt: skip
    base.update(kw)
    return RunRecord(**base)


def finish(store: Store, key: str = "k1") -> None:
    store.finish(
        key,
        metrics=[(1, "train/loss", 3.0), (2, "val/ppl", 20.0)],
        position_loss=[(0, 0, 16, 3.1), (1, 16, 32, 2.9)],
        n_params=123,
        n_params_non_embedding=100,
        backend="sdpa",
        environment={"device": "cpu"},
    )


def test_round_trip(tmp_path):
    store = Store(tmp_path / "r.db")
    assert store.claim(record())
    finish(store)
    [run] = store.runs()
    assert (run.status, run.n_params, run.backend, run.config) == ("done", 123, "sdpa", {"a": 1})
    assert sorted(store.metric_values()) == [("k1", 1, "train/loss", 3.0), ("k1", 2, "val/ppl", 20.0)]
    assert store.position_losses("s") == [("k1", 0, 0, 16, 3.1), ("k1", 1, 16, 32, 2.9)]
    assert store.runs("other") == []


def test_sqlite_runs_in_wal_mode(tmp_path):
    Store(tmp_path / "w.db")
    assert sqlite3.connect(tmp_path / "w.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_done_runs_are_never_claimed_again(tmp_path):
    store = Store(tmp_path / "r.db")
    assert store.claim(record())
    finish(store)
    assert not store.claim(record())


def test_a_live_claim_blocks_and_a_dead_one_is_retaken_without_duplicates(tmp_path):
    store = Store(tmp_path / "r.db")
    assert store.claim(record())
    assert not store.claim(record()), "this process is alive: its claim must hold"
    # A runner that died mid-run: its claim names a process that no longer exists.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with store.session() as s:
        from harness.store import Metric, Run

        run = s.query(Run).one()
        run.claimed_by = f"{run.claimed_by.rpartition(':')[0]}:{dead.stdout.strip()}"
        s.add(Metric(run_id=run.id, step=1, name="train/loss", value=9.0))  # a partial row
    assert store.claim(record())
    assert store.metric_values() == [], "the partial rows of the interrupted run are cleared"
    finish(store)
    assert len(store.metric_values()) == 2 and len(store.runs()) == 1


def test_failed_runs_are_retaken_and_keep_their_error_until_then(tmp_path):
    store = Store(tmp_path / "r.db")
    assert store.claim(record())
    store.fail("k1", "TrainingDiverged: loss became nan at step 3 of 10")
    [run] = store.runs()
    assert run.status == "failed" and "step 3" in run.error
    assert store.claim(record())
    assert store.runs()[0].status == "running" and store.runs()[0].error is None


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM runs",
        "INSERT INTO runs (run_key) VALUES ('x')",
        "DROP TABLE metrics",
        "WITH x AS (SELECT 1) DELETE FROM runs",
        "SELECT 1; DELETE FROM runs",
        "PRAGMA query_only=OFF",
    ],
)
def test_query_refuses_anything_that_writes(tmp_path, sql):
    store = Store(tmp_path / "r.db")
    store.claim(record())
    with pytest.raises(StoreError):
        store.query(sql)
    assert len(store.runs()) == 1


def test_query_reads(tmp_path):
    store = Store(tmp_path / "r.db")
    store.claim(record())
    finish(store)
    columns, rows = store.query("SELECT mixer, status FROM runs")
    assert columns == ["mixer", "status"] and rows == [("attention", "done")]
    with pytest.raises(StoreError, match="no such table"):
        store.query("SELECT * FROM missing_table")
    assert store.claim(record("k2"))  # the store still writes after a read-only query
    assert [r.run_key for r in store.runs()] == ["k1", "k2"]


def test_newer_schema_is_refused_with_a_message(tmp_path):
    path = tmp_path / "future.db"
    Store(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION + 1,))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this mixbench"):
        Store(path)


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="is not a mixbench database"):
        Store(path)


def test_older_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    store = Store(path)
    store.claim(record())
    store.engine.dispose()
    con = sqlite3.connect(path)  # make it look like a version-1 database: no checkpoint_path column
    con.execute("ALTER TABLE runs DROP COLUMN checkpoint_path")
    con.execute("UPDATE schema_info SET version = 1")
    con.commit()
    con.close()
    migrated = Store(path)
    assert [r.run_key for r in migrated.runs()] == ["k1"], "rows survive the migration"
    assert migrated.query("SELECT version FROM schema_info")[1] == [(SCHEMA_VERSION,)]
    finish(migrated)
    assert migrated.runs()[0].checkpoint_path is None and migrated.runs()[0].status == "done"


def test_add_metrics_to_a_done_run_replaces_same_names(tmp_path):
    store = Store(tmp_path / "r.db")
    store.claim(record())
    with pytest.raises(StoreError, match="is not a done run"):
        store.add_metrics("k1", [("lm_eval/x/acc", 0.5)])
    finish(store)
    assert store.add_metrics("k1", [("lm_eval/x/acc", 0.5)]) == 2  # the run's final step
    store.add_metrics("k1", [("lm_eval/x/acc", 0.75)])
    assert [v for _, _, n, v in store.metric_values() if n == "lm_eval/x/acc"] == [0.75]
