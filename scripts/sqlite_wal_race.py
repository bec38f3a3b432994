"""Reproduce the cause of ``database is locked`` when runners start together on a new SQLite store.

    python scripts/sqlite_wal_race.py [REPETITIONS]

Eight processes switch one fresh file to WAL at the same moment, again and again: first with
a bare ``PRAGMA journal_mode=WAL`` (what the store ran on every connect), then through
``harness.store.database._enable_wal``. SQLite breaks the deadlock of two simultaneous switches by
failing one at once, without waiting out ``busy_timeout``; ``_enable_wal`` retries. It prints
how many repetitions had a process fail (on this 2-core machine: about 2 in 100 for the bare
PRAGMA, 0 for ``_enable_wal``).
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from sqlalchemy import create_engine

from harness.store.database import _enable_wal, _sqlite_setup


def bare_pragma(path: Path) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA busy_timeout=60000")
    con.execute("PRAGMA journal_mode=WAL")


def enable_wal(path: Path) -> None:
    engine = create_engine(f"sqlite:///{path}")
    _sqlite_setup(engine)
    _enable_wal(engine)


def worker(switch: Callable[[Path], None], path: Path, start: float, results: mp.Queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        switch(path)
        results.put("ok")
    except sqlite3.Error as exc:
        results.put(str(exc))


def failing_repetitions(switch: Callable[[Path], None], repetitions: int, folder: Path) -> int:
    failed = 0
    for i in range(repetitions):
        results: mp.Queue = mp.Queue()
        start = time.time() + 0.3
        procs = [
            mp.Process(target=worker, args=(switch, folder / f"{switch.__name__}{i}.db", start, results))
            for _ in range(8)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        failed += any(results.get() != "ok" for _ in procs)
    return failed


if __name__ == "__main__":
    mp.set_start_method("fork")
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    print(f"python scripts/sqlite_wal_race.py {repetitions}  (sqlite {sqlite3.sqlite_version}, 8 processes)")
    with tempfile.TemporaryDirectory() as folder:
        for switch in (bare_pragma, enable_wal):
            failed = failing_repetitions(switch, repetitions, Path(folder))
            print(f"{switch.__name__}: {failed}/{repetitions} repetitions had a process fail with 'database is locked'")
