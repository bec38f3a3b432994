"""The results store: SQLite by default, any SQLAlchemy URL, a public interface queried with SQL.

Tables (one row per ...): ``runs`` (suite cell), ``metrics`` (run, step, name),
``position_loss`` (run, position bucket), ``latency`` (measurement), ``throughput`` (a measured
training speed), ``schema_info``
(the schema version, beside Alembic's ``alembic_version``). Every write that finishes a run
is one transaction, so a crash loses at most the run in flight; a run is claimed before it
starts, so a rerun resumes and any number of runners on one database never train the same
cell twice. The schema's history is in ``harness/store/migrations`` (Alembic, SQLite and PostgreSQL).
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from harness.common.names import FINISHED, NOT_TRAINED_HERE, RunStatus
from harness.store import migrations
from models.errors import MixbenchError

SCHEMA_VERSION = 4  # schema_info.version written by the Alembic head (harness/store/migrations/versions)
DEFAULT_DB = Path("results") / "mixbench.db"
DB_ENV = "MIXBENCH_DB"  # the store when no --db is given
JOB_ENV = (
    "SLURM_JOB_ID",
    "SUBMITIT_LOCAL_JOB_ID",
)  # where a launched job finds its id (Slurm, submitit's local executor)
# Counts that outgrow 32 bits (GPU memory in bytes) are BIGINT on PostgreSQL; SQLite's INTEGER is 64-bit.
BigInt = Integer().with_variant(BigInteger(), "postgresql")


# Statuses of a run with a final model and results: trained here (done), brought in by
# ``mixbench import`` (imported), or a stored model scored on another suite's data (evaluated).


class StoreError(MixbenchError):
    """A database that cannot be used as it is: the message says what and where."""


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


class SchemaInfo(Base):
    __tablename__ = "schema_info"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    suite: Mapped[str] = mapped_column(String(200), index=True)
    mixer: Mapped[str] = mapped_column(String(200))
    backbone: Mapped[str] = mapped_column(String(64))
    size: Mapped[str] = mapped_column(String(32))
    seq_len: Mapped[int] = mapped_column(Integer)
    dataset: Mapped[str] = mapped_column(String(500))
    n_params: Mapped[int | None] = mapped_column(BigInt)
    n_params_non_embedding: Mapped[int | None] = mapped_column(BigInt)
    backend: Mapped[str | None] = mapped_column(String(200))
    # queued | running | done | failed | imported (a published checkpoint, and its evaluations) |
    # evaluated (a trained run scored on another suite's data): see FINISHED
    status: Mapped[str] = mapped_column(String(16), index=True)
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    checkpoint_path: Mapped[str | None] = mapped_column(String(1000))
    job_id: Mapped[str | None] = mapped_column(String(200))  # the launcher's job that last queued or ran it
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # a running cell's last live write

    @property
    def arch_label(self) -> str:
        """``mixer@backbone``: what a line of a panel or a row of a table stands for.

        A model not trained on the suite (a published checkpoint, a run from another suite) is
        marked ``[imported]`` or ``[evaluated]``, so it is never read as one of the suite's cells.
        """
        mark = f" [{self.status}]" if self.status in NOT_TRAINED_HERE else ""
        return f"{self.mixer}@{self.backbone}{mark}"


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("run_id", "step", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float] = mapped_column(Float)


class PositionLoss(Base):
    __tablename__ = "position_loss"
    __table_args__ = (UniqueConstraint("run_id", "bucket"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    bucket: Mapped[int] = mapped_column(Integer)
    start: Mapped[int] = mapped_column(Integer)  # first token position in the bucket (0-based)
    end: Mapped[int] = mapped_column(Integer)  # one past the last
    loss: Mapped[float] = mapped_column(Float)


class Latency(Base):
    __tablename__ = "latency"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    suite: Mapped[str] = mapped_column(String(200), index=True)
    mixer: Mapped[str] = mapped_column(String(200))
    backbone: Mapped[str] = mapped_column(String(64))
    size: Mapped[str] = mapped_column(String(32))
    mode: Mapped[str] = mapped_column(String(16))  # prefill | decode
    context: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(200))
    backend: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # ok | oom | failed
    median_ms: Mapped[float | None] = mapped_column(Float)
    p20_ms: Mapped[float | None] = mapped_column(Float)
    p80_ms: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInt)
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


# What one latency row measures; a new measurement of the same point replaces the old.
LATENCY_POINT = ("suite", "mixer", "backbone", "size", "mode", "context", "batch", "dtype", "device")


class Throughput(Base):
    """Training tokens/s measured for one (architecture, size, context, backend, GPU kind): what cost estimates use."""

    __tablename__ = "throughput"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    mixer: Mapped[str] = mapped_column(String(200), index=True)
    backbone: Mapped[str] = mapped_column(String(64))
    size: Mapped[str] = mapped_column(String(32))
    seq_len: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str] = mapped_column(String(200))
    gpu: Mapped[str] = mapped_column(String(64))  # a kind of harness/measure/mfu.py's table, e.g. H100
    gpus: Mapped[int] = mapped_column(Integer)  # devices the measurement ran on
    tokens_per_s: Mapped[float] = mapped_column(Float)  # all devices together
    source: Mapped[str] = mapped_column(String(200))  # e.g. benchmarks/train_loop.py, or a run key
    environment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


@dataclass(frozen=True)
class RunRecord:
    """Identity and descriptive columns of a run, fixed when it is claimed."""

    run_key: str
    suite: str
    mixer: str
    backbone: str
    size: str
    seq_len: int
    dataset: str
    config: dict[str, Any]


def _write_results(
    s: Session,
    run: Run,
    status: str,
    metrics: Iterable[tuple[int, str, float]],
    position_loss: Iterable[tuple[int, int, int, float]],
    n_params: int,
    n_params_non_embedding: int,
    backend: str,
    environment: dict[str, Any],
    checkpoint_path: str | None,
) -> None:
    """A run's results and final columns, inside the caller's transaction.

    Rows of the names written replace any stored under them (the live curve written so far).
    """
    metrics = list(metrics)
    s.execute(delete(Metric).where(Metric.run_id == run.id, Metric.name.in_({n for _, n, _ in metrics})))
    s.add_all(Metric(run_id=run.id, step=st, name=n, value=float(v)) for st, n, v in metrics)
    s.add_all(PositionLoss(run_id=run.id, bucket=b, start=lo, end=hi, loss=float(v)) for b, lo, hi, v in position_loss)
    run.n_params, run.n_params_non_embedding = n_params, n_params_non_embedding
    run.backend, run.environment, run.checkpoint_path = backend, environment, checkpoint_path
    run.status, run.error, run.finished_at = status, None, _now()


def resolve_url(db: str | Path | None) -> str:
    """A path (or nothing: ``$MIXBENCH_DB``, else ``results/mixbench.db``) becomes a SQLite URL.

    URLs pass through, except that ``postgresql://`` gets the one driver mixbench ships in its
    ``[postgres]`` extra (psycopg 3) instead of SQLAlchemy's default psycopg2.
    """
    if db is None:
        db = os.environ.get(DB_ENV) or DEFAULT_DB
    db = str(db)
    if "://" in db:
        return "postgresql+psycopg://" + db.removeprefix("postgresql://") if db.startswith("postgresql://") else db
    path = Path(db).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def masked(url: str) -> str:
    """The URL as it may be printed: no password."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_setup(engine: Engine) -> None:
    """Foreign keys, waiting on locks, and real transactions around DDL and claims.

    pysqlite runs DDL outside any transaction and opens write transactions lazily; both would
    let two runners creating or claiming on one new database see each other half-way. So the
    driver's own transaction handling is switched off and every transaction starts with
    ``BEGIN IMMEDIATE``: writers queue (``busy_timeout``), readers are never blocked (WAL, set
    once per database by ``_enable_wal``: the mode is stored in the file).
    """

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _enable_wal(engine: Engine, patience_s: float = 60.0) -> None:
    """Put a SQLite database in WAL mode, retrying while another process holds it.

    Switching a new database to WAL rewrites its header. Two processes switching at once
    deadlock, and SQLite breaks the deadlock by failing one of them with ``database is locked``
    at once, without waiting out ``busy_timeout`` (the busy handler is skipped on purpose). That
    was the race of runners starting together on a fresh database; the fix is what SQLite asks
    of the loser: retry the statement. The mode is persistent, so later opens skip this.
    """
    deadline = time.monotonic() + patience_s
    delay = 0.005
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        while True:
            try:
                mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
                if mode in ("wal", "memory"):
                    return
                raw.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def this_job() -> str | None:
    """The launcher's job this process runs in (Slurm's id survives a requeue), if any."""
    return next((os.environ[name] for name in JOB_ENV if os.environ.get(name)), None)


def _claim_is_stale(claimed_by: str | None, job_id: str | None = None) -> bool:
    """A ``running`` row whose process is gone was interrupted: it may be retaken.

    Gone means: a process on this host that no longer exists, or an earlier attempt of the very
    job this process runs (a preempted Slurm job requeued, perhaps on another node).
    """
    if not claimed_by:
        return True
    if job_id is not None and job_id == this_job():
        return True
    host, _, pid = claimed_by.rpartition(":")
    if host != socket.gethostname():
        return False  # another machine's claim: we cannot tell, so we leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _one_line(exc: BaseException) -> str:
    """A driver's message, first line only (psycopg's run to several)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


def _create_engine(url: str, where: str) -> Engine:
    try:
        return create_engine(url)
    except ModuleNotFoundError as exc:
        extra = " (pip install 'mixbench[postgres]')" if "psycopg" in str(exc.name) else ""
        raise StoreError(f"cannot open {where}: its driver {exc.name} is not installed{extra}") from None
    except ArgumentError as exc:
        raise StoreError(f"--db {where} is not a database URL or path: {exc}") from None


class Store:
    """All reads and writes of results go through here.

    Opening a store creates a new database or checks an existing one. A SQLite file is
    upgraded in place when it is older than this mixbench; a shared server database is only
    upgraded by ``mixbench db upgrade`` (``upgrade=True``), because every user of it must then
    run a mixbench that knows the new schema.
    """

    def __init__(self, db: str | Path | None = None, *, upgrade: bool | None = None) -> None:
        self.url = resolve_url(db)
        self.where = masked(self.url)
        self.engine = _create_engine(self.url, self.where)
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite:
            _sqlite_setup(self.engine)
        self.upgraded_from: str | None = None  # the revision before this open upgraded it, if it did
        try:
            if sqlite:
                _enable_wal(self.engine)
            with self.engine.begin() as conn:  # one transaction: a second runner sees all or nothing
                self._prepare_schema(conn, upgrade=sqlite if upgrade is None else upgrade)
        except (DBAPIError, sqlite3.DatabaseError) as exc:  # the WAL switch runs on the raw sqlite3 connection
            raise StoreError(self._cannot_open(exc)) from None

    def _cannot_open(self, exc: Exception) -> str:
        message = _one_line(exc)
        if self.engine.dialect.name == "sqlite":
            if "not a database" in message:
                return (
                    f"{self.where} is not a SQLite database ({message}); "
                    "point --db at a mixbench database or a new file"
                )
            return f"cannot open database {self.where}: {message}"
        return (
            f"cannot open database {self.where}: {message} (check host, port, user and password in --db or ${DB_ENV})"
        )

    def _prepare_schema(self, conn: Connection, upgrade: bool) -> None:
        """Create a new database, or check (and if asked, upgrade) an existing one, with Alembic."""
        if conn.dialect.name == "postgresql":  # runners meeting one new database create it once
            conn.execute(text("SELECT pg_advisory_xact_lock(7234019)"))
        tables = set(inspect(conn).get_table_names())
        cfg = migrations.config(conn)
        if not tables:
            command.upgrade(cfg, "head")
            return
        if "schema_info" not in tables:
            raise StoreError(f"{self.where} is not a mixbench database (no schema_info table); use another --db")
        version = conn.scalar(select(SchemaInfo.version))
        revision = conn.scalar(text("SELECT version_num FROM alembic_version")) if "alembic_version" in tables else None
        future = f"revision {revision}" if revision is not None and not migrations.known(revision) else None
        if future or version is None or version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.where} has schema {future or f'version {version}'}, newer than this mixbench understands "
                f"({SCHEMA_VERSION}, {migrations.head()}); upgrade mixbench to use it"
            )
        if revision is None:  # made before Alembic: its schema_info version names its revision
            if version not in migrations.LEGACY:
                raise StoreError(f"{self.where} has schema version {version}, which this mixbench cannot migrate")
            revision = migrations.LEGACY[version]
            command.stamp(cfg, revision)
        if revision == migrations.head():
            return
        if not upgrade:
            raise StoreError(
                f"{self.where} has schema version {version}, older than this mixbench ({SCHEMA_VERSION}); "
                f"run `mixbench db upgrade --db URL` once (every user of it then needs this mixbench or newer)"
            )
        command.upgrade(cfg, "head")
        self.upgraded_from = revision

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
            yield s

    # --- the run life cycle -------------------------------------------------------------
    def status(self, run_key: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Run.status).where(Run.run_key == run_key))

    def claim(self, record: RunRecord) -> bool:
        """Mark a cell ``running`` for this process; False if it is done or live elsewhere.

        A queued, failed or interrupted run is retaken and its partial rows are cleared in the
        same transaction, so a rerun never duplicates rows. The row is read with
        ``FOR UPDATE SKIP LOCKED`` (PostgreSQL: a row another runner is claiming right now is
        passed over; SQLite needs no row lock, ``BEGIN IMMEDIATE`` already serialises writers),
        a new row is inserted under a savepoint (losing an insert race is an answer, not an
        error), and the update is a compare-and-set on the previous claim.
        """
        me, job = this_process(), this_job()
        with self.session() as s:
            row = s.scalar(select(Run).where(Run.run_key == record.run_key).with_for_update(skip_locked=True))
            if row is None:
                try:
                    with s.begin_nested():
                        s.add(
                            Run(
                                **record.__dict__,
                                status=RunStatus.RUNNING,
                                claimed_by=me,
                                job_id=job,
                                started_at=_now(),
                                heartbeat_at=_now(),
                            )
                        )
                except IntegrityError:
                    return False  # another runner inserted it first, or holds its row locked
                return True
            if row.status == RunStatus.DONE or (
                row.status == RunStatus.RUNNING and not _claim_is_stale(row.claimed_by, row.job_id)
            ):
                return False
            taken = s.execute(
                update(Run)
                .where(Run.id == row.id, Run.status == row.status, Run.claimed_by.is_not_distinct_from(row.claimed_by))
                .values(
                    status=RunStatus.RUNNING,
                    claimed_by=me,
                    job_id=job or row.job_id,
                    error=None,
                    started_at=_now(),
                    heartbeat_at=_now(),
                    finished_at=None,
                    config=record.config,
                )
            ).rowcount
            if taken != 1:
                return False
            s.execute(delete(Metric).where(Metric.run_id == row.id))
            s.execute(delete(PositionLoss).where(PositionLoss.run_id == row.id))
            return True

    def enqueue(self, record: RunRecord) -> bool:
        """Mark a cell ``queued`` before a launcher submits its job; False (and no change) if done or running."""
        with self.session() as s:
            row = s.scalar(select(Run).where(Run.run_key == record.run_key).with_for_update())
            if row is None:
                s.add(Run(**record.__dict__, status=RunStatus.QUEUED))
                return True
            if row.status in (RunStatus.DONE, RunStatus.RUNNING):
                return False
            row.status, row.job_id, row.error, row.claimed_by = RunStatus.QUEUED, None, None, None
            return True

    def note_job(self, run_key: str, job_id: str) -> None:
        """The job id of a cell just submitted, unless its job already started and claimed it (then
        it wrote its own)."""
        with self.session() as s:
            s.execute(update(Run).where(Run.run_key == run_key, Run.job_id.is_(None)).values(job_id=job_id))

    def finish(
        self,
        run_key: str,
        *,
        metrics: Iterable[tuple[int, str, float]],
        position_loss: Iterable[tuple[int, int, int, float]],
        n_params: int,
        n_params_non_embedding: int,
        backend: str,
        environment: dict[str, Any],
        checkpoint_path: str | None = None,
    ) -> None:
        """Write every result of a run and mark it ``done``, all in one transaction."""
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.run_key == run_key))
            if run is None:
                raise StoreError(f"run {run_key} was never claimed")
            _write_results(
                s,
                run,
                RunStatus.DONE,
                metrics,
                position_loss,
                n_params,
                n_params_non_embedding,
                backend,
                environment,
                checkpoint_path,
            )

    def put_finished(
        self,
        record: RunRecord,
        status: str,
        *,
        metrics: Iterable[tuple[int, str, float]] = (),
        position_loss: Iterable[tuple[int, int, int, float]] = (),
        n_params: int,
        n_params_non_embedding: int,
        backend: str,
        environment: dict[str, Any],
        checkpoint_path: str | None = None,
    ) -> None:
        """A run made outside a suite's training (``imported`` or ``evaluated``), written whole in one transaction.

        Doing it again (a re-import, a re-evaluation) replaces the row's results; a trained
        cell's row is never overwritten this way.
        """
        if status not in FINISHED or status == "done":
            raise StoreError(f"put_finished writes imported or evaluated runs, not {status!r}")
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.run_key == record.run_key))
            if run is None:
                run = Run(**record.__dict__, status=status, started_at=_now())
                s.add(run)
                s.flush()
            elif run.status not in FINISHED or run.status == "done":
                raise StoreError(f"run {record.run_key} is a {run.status} suite cell; it is not replaced")
            else:
                s.execute(delete(Metric).where(Metric.run_id == run.id))
                s.execute(delete(PositionLoss).where(PositionLoss.run_id == run.id))
                run.config = record.config
            _write_results(
                s,
                run,
                status,
                metrics,
                position_loss,
                n_params,
                n_params_non_embedding,
                backend,
                environment,
                checkpoint_path,
            )

    def fail(self, run_key: str, error: str, environment: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            s.execute(
                update(Run)
                .where(Run.run_key == run_key)
                .values(status=RunStatus.FAILED, error=error, finished_at=_now(), environment=environment)
            )

    def add_metrics(self, run_key: str, metrics: Iterable[tuple[str, float]]) -> int:
        """Add metrics to a done run at its final step, replacing ones of the same name.

        For numbers measured after training (e.g. ``mixbench lm-eval``); returns the step used.
        """
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.run_key == run_key))
            if run is None or run.status not in FINISHED:
                raise StoreError(f"run {run_key!r} is not a finished run ({', '.join(FINISHED)}) in {self.url}")
            step = s.scalar(select(func.max(Metric.step)).where(Metric.run_id == run.id)) or 0
            metrics = list(metrics)
            names = [name for name, _ in metrics]
            s.execute(delete(Metric).where(Metric.run_id == run.id, Metric.step == step, Metric.name.in_(names)))
            s.add_all(Metric(run_id=run.id, step=step, name=name, value=float(v)) for name, v in metrics)
            return step

    def record_progress(self, run_key: str, step: int, values: dict[str, float]) -> None:
        """A running cell's live figures (e.g. ``progress/step``): the latest value of each name replaces the last.

        Tidy metric rows, so another process (``mixbench results``) sees a cell's progress
        while it trains; a rerun's ``claim`` clears them with the run's other rows.
        """
        with self.session() as s:
            run_id = s.scalar(select(Run.id).where(Run.run_key == run_key))
            if run_id is None:
                raise StoreError(f"run {run_key} was never claimed")
            s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.name.in_(list(values))))
            s.add_all(Metric(run_id=run_id, step=step, name=name, value=float(v)) for name, v in values.items())
            s.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=_now()))

    def record_curve(
        self, run_key: str, after: int, rows: Iterable[tuple[int, str, float]], names: Iterable[str]
    ) -> None:
        """A running cell's curve: its stored rows of ``names`` beyond step ``after`` become exactly ``rows``.

        One transaction, so a reader sees each log whole. Writing the rows since the last log
        appends; a cell resumed from the checkpoint of step S rewrites its curve from step 0 with
        the checkpoint's rows, which drops what was logged after S by the killed attempt: every
        step is stored exactly once.
        """
        with self.session() as s:
            run_id = s.scalar(select(Run.id).where(Run.run_key == run_key))
            if run_id is None:
                raise StoreError(f"run {run_key} was never claimed")
            s.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step > after, Metric.name.in_(list(names))))
            s.add_all(Metric(run_id=run_id, step=st, name=n, value=float(v)) for st, n, v in rows)

    def add_throughput(self, row: dict[str, Any]) -> None:
        with self.session() as s:
            s.add(Throughput(**row))

    def throughputs(self) -> list[Throughput]:
        with self.session() as s:
            return list(s.scalars(select(Throughput).order_by(Throughput.id)))

    def add_latency(self, rows: Iterable[dict[str, Any]]) -> None:
        with self.session() as s:
            s.add_all(Latency(**row) for row in rows)

    def replace_latency(self, rows: list[dict[str, Any]]) -> None:
        """Delete stored rows with the same point as any of ``rows`` and insert ``rows``, in one transaction."""
        with self.session() as s:
            for r in rows:
                s.execute(delete(Latency).where(*(getattr(Latency, k) == r[k] for k in LATENCY_POINT)))
            s.add_all(Latency(**r) for r in rows)

    def latency_rows(self, suite: str | None = None) -> list[Latency]:
        """Every latency row (of one suite if given), oldest first."""
        return self._rows(Latency, suite)

    # --- reading ------------------------------------------------------------------------
    def run(self, run_key: str) -> Run:
        with self.session() as s:
            run = s.scalar(select(Run).where(Run.run_key == run_key))
        if run is None:
            raise StoreError(f"no run with key {run_key!r} in {self.url}")
        return run

    def runs(self, suite: str | None = None) -> list[Run]:
        """Every run (of one suite if given), oldest first."""
        return self._rows(Run, suite)

    def _rows(self, table: type[Run] | type[Latency], suite: str | None) -> list[Any]:
        with self.session() as s:
            q = select(table).order_by(table.id)
            if suite is not None:
                q = q.where(table.suite == suite)
            return list(s.scalars(q))

    def query(self, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run one read-only SQL statement; anything that could write is refused."""
        statement = sql.strip().rstrip(";")
        first = re.match(r"\s*(\w+)", statement)
        if first is None or first.group(1).lower() not in {"select", "with", "explain", "values"}:
            raise StoreError("query is read-only: only SELECT / WITH / EXPLAIN statements are allowed")
        if ";" in statement:
            raise StoreError("query takes exactly one statement")
        engine = self._read_only_engine()
        with engine.connect() as conn:
            try:
                if engine.dialect.name == "postgresql":  # the server itself refuses writes, as mode=ro does
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                result = conn.execute(text(statement))
                columns = list(result.keys())
                rows = [tuple(r) for r in result]
            except DBAPIError as exc:
                raise StoreError(f"query failed: {exc.orig}") from exc
            finally:
                conn.rollback()  # whatever slipped past the keyword check is never committed
        return columns, rows

    def _read_only_engine(self) -> Engine:
        """SQLite opened read-only by the OS (``mode=ro``), which also stops ``WITH ... DELETE``."""
        if self.engine.dialect.name != "sqlite":
            return self.engine
        return create_engine(f"sqlite:///file:{make_url(self.url).database}?mode=ro&uri=true")

    def metric_values(self, suite: str | None = None) -> list[tuple[str, int, str, float]]:
        """``(run_key, step, name, value)`` for every metric (of one suite if given)."""
        with self.session() as s:
            q = select(Run.run_key, Metric.step, Metric.name, Metric.value).join(Metric, Metric.run_id == Run.id)
            if suite is not None:
                q = q.where(Run.suite == suite)
            return [tuple(r) for r in s.execute(q)]

    def position_losses(self, suite: str | None = None) -> list[tuple[str, int, int, int, float]]:
        with self.session() as s:
            q = (
                select(Run.run_key, PositionLoss.bucket, PositionLoss.start, PositionLoss.end, PositionLoss.loss)
                .join(PositionLoss, PositionLoss.run_id == Run.id)
                .order_by(Run.run_key, PositionLoss.bucket)
            )
            if suite is not None:
                q = q.where(Run.suite == suite)
            return [tuple(r) for r in s.execute(q)]
