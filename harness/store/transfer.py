"""``mixbench db copy SRC DST``: move finished results between stores (a laptop's SQLite into the lab's PostgreSQL).

A run is copied with its metrics and position losses when it is finished in SRC (done, imported,
evaluated, or failed) and DST lacks it or holds it unfinished-or-failed while SRC has it finished; runs still
queued or running in SRC stay behind. Latency rows are copied unless DST has an identical
one. Everything lands in one DST transaction, so an error leaves DST as it was, and copying
twice copies nothing the second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, insert, select

from harness.common.names import ENDED, FINISHED, RunStatus
from harness.store.database import Latency, Metric, PositionLoss, Run, Store


@dataclass(frozen=True)
class CopySummary:
    runs: int
    runs_skipped: int
    latency: int


def _columns(table: Any) -> list[Any]:
    return [c for c in table.__table__.columns if c.name not in ("id", "run_id")]


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite returns naive datetimes; the store writes UTC, so say so before a server stores them."""
    return {
        k: v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v for k, v in row.items()
    }


def _latency_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a latency row the same measurement (its environment JSON aside)."""
    return tuple(v for k, v in sorted(_utc(row).items()) if k != "environment")


def copy_store(src: Store, dst: Store) -> CopySummary:
    with src.engine.connect() as conn:
        runs = [_utc(dict(r)) for r in conn.execute(select(*_columns(Run)).where(Run.status.in_(ENDED))).mappings()]
        children = {
            table: [
                dict(r)
                for r in conn.execute(
                    select(Run.run_key, *_columns(table)).join(table, table.run_id == Run.id)
                ).mappings()
            ]
            for table in (Metric, PositionLoss)
        }
        latency = [_utc(dict(r)) for r in conn.execute(select(*_columns(Latency))).mappings()]
    copied = skipped = 0
    with dst.session() as s:
        held = {key: (run_id, status) for key, run_id, status in s.execute(select(Run.run_key, Run.id, Run.status))}
        ids: dict[str, int] = {}
        for run in runs:
            run_id, status = held.get(run["run_key"], (None, None))
            if status is not None and not (
                status in (RunStatus.FAILED, RunStatus.QUEUED) and run["status"] in FINISHED
            ):
                skipped += 1
                continue
            if run_id is not None:
                s.execute(delete(Run).where(Run.id == run_id))  # its rows go with it (ON DELETE CASCADE)
            ids[run["run_key"]] = s.execute(insert(Run).values(**run).returning(Run.id)).scalar_one()
            copied += 1
        for table, rows in children.items():
            rows = [
                {**{k: v for k, v in r.items() if k != "run_key"}, "run_id": ids[r["run_key"]]}
                for r in rows
                if r["run_key"] in ids
            ]
            if rows:
                s.execute(insert(table), rows)
        have = {_latency_key(dict(r)) for r in s.execute(select(*_columns(Latency))).mappings()}
        new = [r for r in latency if _latency_key(r) not in have]
        if new:
            s.execute(insert(Latency), new)
    return CopySummary(runs=copied, runs_skipped=skipped, latency=len(new))
