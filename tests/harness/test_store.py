"""The store: round trip, resumable claims, read-only queries, schema version checks.

Every test taking ``db`` runs on SQLite and on a real PostgreSQL server (tests/harness/conftest.py).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from harness.store import migrations
from harness.store.database import SCHEMA_VERSION, Base, RunRecord, Store, StoreError


def record(key: str = "k1", **kw) -> RunRecord:
    base = dict(
        run_key=key,
        suite="s",
        mixer="attention",
        backbone="transformer",
        size="micro",
        seq_len=32,
        dataset="builtin:kjv",
        config={"a": 1},
    )
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


def test_round_trip(db):
    store = Store(db)
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


def test_done_runs_are_never_claimed_again(db):
    store = Store(db)
    assert store.claim(record())
    finish(store)
    assert not store.claim(record())


def test_a_live_claim_blocks_and_a_dead_one_is_retaken_without_duplicates(db):
    store = Store(db)
    assert store.claim(record())
    assert not store.claim(record()), "this process is alive: its claim must hold"
    # A runner that died mid-run: its claim names a process that no longer exists.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with store.session() as s:
        from harness.store.database import Metric, Run

        run = s.query(Run).one()
        run.claimed_by = f"{run.claimed_by.rpartition(':')[0]}:{dead.stdout.strip()}"
        s.add(Metric(run_id=run.id, step=1, name="train/loss", value=9.0))  # a partial row
    assert store.claim(record())
    assert store.metric_values() == [], "the partial rows of the interrupted run are cleared"
    finish(store)
    assert len(store.metric_values()) == 2 and len(store.runs()) == 1


def test_failed_runs_are_retaken_and_keep_their_error_until_then(db):
    store = Store(db)
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
def test_query_refuses_anything_that_writes(db, sql):
    store = Store(db)
    store.claim(record())
    with pytest.raises(StoreError):
        store.query(sql)
    assert len(store.runs()) == 1


def test_query_reads(db):
    store = Store(db)
    store.claim(record())
    finish(store)
    columns, rows = store.query("SELECT mixer, status FROM runs")
    assert columns == ["mixer", "status"] and rows == [("attention", "done")]
    with pytest.raises(StoreError, match="no such table|does not exist"):
        store.query("SELECT * FROM missing_table")
    assert store.claim(record("k2"))  # the store still writes after a read-only query
    assert [r.run_key for r in store.runs()] == ["k1", "k2"]


def test_newer_schema_is_refused_with_a_message(db):
    store = Store(db)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE schema_info SET version = :v"), {"v": SCHEMA_VERSION + 1})
    store.engine.dispose()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than this mixbench"):
        Store(db)
    with store.engine.begin() as conn:  # a future mixbench's Alembic revision, unknown here
        conn.execute(text("UPDATE schema_info SET version = :v"), {"v": SCHEMA_VERSION})
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    store.engine.dispose()
    with pytest.raises(StoreError, match="schema revision 9999_future, newer than this mixbench"):
        Store(db)


def test_foreign_database_is_refused(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="is not a mixbench database"):
        Store(path)


STRESS_REPEATS = int(os.environ.get("MIXBENCH_STRESS_REPEATS", "2"))  # the fix was proven with 20 and more
STRESS_RUNNER = Path(__file__).parent / "store_runner.py"
REPO = Path(__file__).resolve().parents[2]


def test_eight_runners_starting_together_on_a_fresh_database_run_every_cell_once(new_db, tmp_path):
    """The race of runners creating one new database (SQLite's WAL switch failed one with ``database is locked``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for repeat in range(STRESS_REPEATS):
        url, go, n_cells = new_db(), tmp_path / f"go{repeat}", 12
        procs = [
            subprocess.Popen(
                [sys.executable, STRESS_RUNNER, url, str(n_cells), go],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(8)
        ]
        while len(list(tmp_path.glob(f"go{repeat}.ready.*"))) < len(procs) and all(p.poll() is None for p in procs):
            time.sleep(0.01)
        go.touch()  # every runner has imported everything: they open the store together
        outputs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0] * 8, f"repeat {repeat}: " + "".join(err for _, err in outputs)
        ran = [key for out, _ in outputs for key in out.split()]
        assert sorted(ran) == [f"cell{i:03d}" for i in range(n_cells)], f"repeat {repeat}: cells run {sorted(ran)}"
        store = Store(url)
        assert [r.status for r in store.runs()] == ["done"] * n_cells and len(store.metric_values()) == 2 * n_cells
        store.engine.dispose()


LEGACY = Path(__file__).parent / "data"  # stores written by earlier mixbench releases (make_legacy_store.py)


def table_rows(path: Path) -> dict[str, set[tuple]]:
    """Every table's rows, each as sorted (column, value) pairs, so added columns can be set aside."""
    con = sqlite3.connect(path)
    rows = {}
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        cur = con.execute(f"SELECT * FROM {table}")
        columns = [d[0] for d in cur.description]
        rows[table] = {tuple(sorted(zip(columns, row))) for row in cur}
    con.close()
    return rows


@pytest.mark.parametrize("made_by", ["store_v1", "store_v1_with_checkpoint_column", "store_v2"])
def test_a_legacy_sqlite_database_upgrades_in_place_keeping_every_row(tmp_path, made_by):
    path = tmp_path / "legacy.db"
    con = sqlite3.connect(path)
    con.executescript((LEGACY / f"{made_by}.sql").read_text())
    con.close()
    before = table_rows(path)
    assert {len(before[t]) for t in ("runs", "metrics", "position_loss", "latency")} >= {2}, "the fixture has rows"
    store = Store(path)
    assert store.upgraded_from == migrations.LEGACY[next(iter(before["schema_info"]))[0][1]]
    after = table_rows(path)
    for table, rows in before.items():
        if table == "schema_info":
            assert after[table] == {(("version", SCHEMA_VERSION),)}
            continue
        old_columns = {name for row in rows for name, _ in row}
        assert {tuple(c for c in row if c[0] in old_columns) for row in after[table]} == rows, f"{table} rows changed"
    assert all(dict(r)["job_id"] is None for r in after["runs"]) and "checkpoint_path" in dict(
        next(iter(after["runs"]))
    )
    assert store.query("SELECT version_num FROM alembic_version")[1] == [(migrations.head(),)]
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.claim(record("new")), "the upgraded store takes new runs"
    finish(store, "new")
    assert {r.status for r in Store(path).runs()} == {"done", "failed"}


def test_the_migrations_build_exactly_the_models_schema(db):
    store = Store(db)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_server_database_upgrades_only_when_asked(postgres_db):
    url = postgres_db
    engine = create_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(conn), "0002_checkpoint_path")
    engine.dispose()
    with pytest.raises(StoreError, match="older than this mixbench .* run `mixbench db upgrade"):
        Store(url)
    store = Store(url, upgrade=True)
    assert store.upgraded_from == "0002_checkpoint_path" and store.claim(record())
    assert Store(url).upgraded_from is None


def test_add_metrics_to_a_done_run_replaces_same_names(db):
    store = Store(db)
    store.claim(record())
    with pytest.raises(StoreError, match="is not a finished run"):
        store.add_metrics("k1", [("lm_eval/x/acc", 0.5)])
    finish(store)
    assert store.add_metrics("k1", [("lm_eval/x/acc", 0.5)]) == 2  # the run's final step
    store.add_metrics("k1", [("lm_eval/x/acc", 0.75)])
    assert [v for _, _, n, v in store.metric_values() if n == "lm_eval/x/acc"] == [0.75]
