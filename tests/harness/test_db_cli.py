"""``mixbench db upgrade`` / ``db copy``, ``MIXBENCH_DB``, and every bad --db as one line that loses nothing."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.store import migrations
from harness.store.database import SCHEMA_VERSION, RunRecord, Store

LEGACY = Path(__file__).parent / "data"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(capsys, *argv: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    return err


def record(key: str, suite: str = "s") -> RunRecord:
    return RunRecord(
        run_key=key,
        suite=suite,
        mixer="attention",
        backbone="transformer",
        size="micro",
        seq_len=32,
        dataset="builtin:kjv",
        config={"k": key},
    )


def test_db_pointing_at_a_file_that_is_not_sqlite(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    err = one_line_error(capsys, "results", "--db", f"sqlite:///{notes}")
    assert "is not a SQLite database" in err and "point --db at" in err
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_postgresql_url_without_the_driver(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # what an install without the [postgres] extra sees
    err = one_line_error(capsys, "results", "--db", "postgresql://me@db.example/lab")
    assert "driver psycopg is not installed" in err and "mixbench[postgres]" in err


def test_unreachable_server_and_wrong_password(capsys, postgres_server):
    wrong = postgres_server.replace(":mixbench-test@", ":not-the-password@")
    err = one_line_error(capsys, "results", "--db", wrong)
    assert "password authentication failed" in err and "not-the-password" not in err and "***" in err
    port = int(postgres_server.rsplit(":", 1)[1].split("/")[0])
    err = one_line_error(capsys, "results", "--db", postgres_server.replace(f":{port}/", f":{port + 1}/"))
    assert "cannot open database" in err and "check host, port, user and password" in err


def test_mixbench_db_names_the_store_when_no_db_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXBENCH_DB", str(tmp_path / "from_env.db"))
    assert Store().url == f"sqlite:///{tmp_path / 'from_env.db'}"
    assert (tmp_path / "from_env.db").exists()


def test_db_upgrade_migrates_a_legacy_store_once(capsys, tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript((LEGACY / "store_v2.sql").read_text())
    con.close()
    code, out, _ = run_cli(capsys, "db", "upgrade", "--db", str(path))
    assert code == 0 and f"upgraded from {migrations.LEGACY[2]} to schema version {SCHEMA_VERSION}" in out
    code, out, _ = run_cli(capsys, "db", "upgrade", "--db", str(path))
    assert code == 0 and f"already at schema version {SCHEMA_VERSION}" in out


def test_db_copy_moves_finished_runs_from_sqlite_into_postgresql_once(capsys, tmp_path, postgres_db):
    src = Store(tmp_path / "laptop.db")
    for key in ("done1", "failed1", "running1"):
        assert src.claim(record(key))
    src.finish(
        "done1",
        metrics=[(1, "train/loss", 3.0), (2, "val/ppl", 20.0)],
        position_loss=[(0, 0, 32, 2.5)],
        n_params=10,
        n_params_non_embedding=8,
        backend="sdpa",
        environment={"device": "cpu"},
    )
    src.fail("failed1", "RuntimeError: boom")
    src.add_latency(
        [
            dict(
                suite="s",
                mixer="attention",
                backbone="transformer",
                size="micro",
                mode="decode",
                context=64,
                batch=1,
                dtype="float32",
                device="cpu",
                backend="sdpa",
                status="ok",
                median_ms=1.5,
                peak_memory_bytes=80 * 2**30,
            )
        ]
    )
    dst = Store(postgres_db)
    assert dst.claim(record("theirs"))  # a run already in the lab's store stays as it is
    code, out, _ = run_cli(capsys, "db", "copy", str(tmp_path / "laptop.db"), postgres_db)
    assert code == 0 and "copied 2 runs and 1 latency rows" in out, out
    assert {(r.run_key, r.status) for r in dst.runs()} == {
        ("done1", "done"),
        ("failed1", "failed"),
        ("theirs", "running"),
    }
    assert sorted(dst.metric_values()) == sorted(src.metric_values()) and dst.position_losses() == src.position_losses()
    assert dst.query("SELECT peak_memory_bytes FROM latency")[1] == [(80 * 2**30,)]  # BIGINT on the server
    code, out, _ = run_cli(capsys, "db", "copy", str(tmp_path / "laptop.db"), postgres_db)
    assert code == 0 and "copied 0 runs and 0 latency rows" in out and "(2 runs already there)" in out
    assert len(dst.metric_values()) == 2
    assert {r.run_key: r.finished_at for r in dst.runs()}["done1"] is not None


def test_db_copy_from_nowhere_creates_nothing(capsys, tmp_path):
    err = one_line_error(capsys, "db", "copy", str(tmp_path / "typo.db"), str(tmp_path / "dst.db"))
    assert "no database at" in err and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["foo://x", "mysql://me@host/db"])
def test_db_urls_nobody_can_open(capsys, bad):
    err = one_line_error(capsys, "results", "--db", bad)
    assert bad.split("://")[0] in err or "MySQLdb" in err
