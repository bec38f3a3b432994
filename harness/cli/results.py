"""Reading what is stored: ``results``, ``watch``, ``query``, ``report``, and ``mixers`` (what can run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.cli.command import Command, add_db, error_console
from harness.common.names import MetricName, RunStatus
from harness.config.suite import load_suite
from harness.monitor.health import Thresholds, flags_by_run
from harness.monitor.watch import watch
from harness.report.dashboard import DEFAULT_REPORT_DIR, IMAGE_FORMATS, spread_rows, write_reports
from harness.store.database import Store
from models.registry import list_mixers


def add_stale_minutes(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stale-minutes",
        type=float,
        default=Thresholds.stale_minutes,
        help="flag a running cell with no heartbeat for this long",
    )


def results_arguments(p: argparse.ArgumentParser) -> None:
    add_db(p)
    p.add_argument("--suite")
    add_stale_minutes(p)


def watch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="a suite file or a suite name in the store")
    add_db(p)
    p.add_argument("--every", type=float, default=5.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    add_stale_minutes(p)


def query_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sql")
    add_db(p)


def report_arguments(p: argparse.ArgumentParser) -> None:
    add_db(p)
    p.add_argument("--suite")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_REPORT_DIR)
    p.add_argument("--format", choices=IMAGE_FORMATS, help="also write each panel as a static image (needs kaleido)")


def cmd_results(args: argparse.Namespace, console: Console) -> int:
    print_results(console, Store(args.db), args.suite, Thresholds(stale_minutes=args.stale_minutes))
    return 0


def cmd_watch(args: argparse.Namespace, console: Console) -> int:
    name = load_suite(Path(args.suite)).name if Path(args.suite).is_file() else args.suite
    watch(
        Store(args.db),
        name,
        args.every,
        console,
        once=args.once,
        thresholds=Thresholds(stale_minutes=args.stale_minutes),
    )
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    paths = write_reports(Store(args.db), args.output, suite=args.suite, image_format=args.format)
    for path in paths:
        console.print(f"{'dashboard' if path.suffix == '.html' else 'figure'}: {path}")
    if not paths:
        error_console().print("no finished runs to report yet; run a suite first")
        return 1
    return 0


def cmd_mixers(args: argparse.Namespace, console: Console) -> int:
    table = Table(title="registered mixers")
    for col in ("mixer", "origin", "backends (this machine)", "available"):
        table.add_column(col)
    for entry in list_mixers():
        backends = ", ".join(
            f"{b.name} [green]yes[/]" if (r := b.unavailable_reason(None)) is None else f"{b.name} [red]no[/] ({r})"
            for b in entry.backends
        )
        status = "[green]yes[/]" if entry.available else f"[red]no[/]: {entry.unavailable_reason()}"
        table.add_row(entry.name, entry.origin, backends or "-", status)
    console.print(table)
    return 0


def results_table(store: Store, suite: str | None, thresholds: Thresholds = Thresholds()) -> Table:
    rows = store.metric_values(suite)
    values = {(key, name): v for key, _step, name, v in rows}
    runs = store.runs(suite)
    flags = flags_by_run(runs, rows, thresholds=thresholds)
    table = Table(title=f"results{f' of suite {suite}' if suite else ''}")
    for col in (
        "run key",
        "suite",
        "model",
        "size",
        "seq",
        "params",
        "status",
        "job",
        "val ppl",
        "train FLOPs",
        "backend",
        "error",
        "flags",
    ):
        table.add_column(col)
    for r in runs:
        ppl = values.get((r.run_key, MetricName.VAL_PPL))
        flops = values.get((r.run_key, MetricName.TRAIN_FLOPS))
        status = r.status
        if r.status == RunStatus.RUNNING and (step := values.get((r.run_key, "progress/step"))) is not None:
            status += f" (step {step:.0f}, {values.get((r.run_key, 'progress/tokens'), 0):,.0f} tokens)"
        table.add_row(
            r.run_key,
            r.suite,
            f"{r.mixer}@{r.backbone}",
            r.size,
            str(r.seq_len),
            f"{r.n_params:,}" if r.n_params else "-",
            status,
            r.job_id or "-",
            f"{ppl:.2f}" if ppl else "-",
            f"{flops:.3g}" if flops else "-",
            r.backend or "-",
            r.error or "",
            "; ".join(flags[r.run_key]),
        )
    return table


def seeds_table(store: Store, suite: str | None) -> Table | None:
    """The points over seeds (``harness/report/seeds.py``): median and range, chosen lr, ties,
    split; None without any."""
    values = {(key, name): v for key, _step, name, v in store.metric_values(suite)}
    rows = spread_rows(store.runs(suite), values)
    if not rows:
        return None
    table = Table(
        title=escape("over seeds: median [min-max]; chosen: the lr with the best median; ties: ranges overlap")
    )
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*row.values())
    return table


def print_results(console: Console, store: Store, suite: str | None, thresholds: Thresholds = Thresholds()) -> None:
    console.print(results_table(store, suite, thresholds))
    if (table := seeds_table(store, suite)) is not None:
        console.print(table)


def cmd_query(args: argparse.Namespace, console: Console) -> int:
    columns, rows = Store(args.db).query(args.sql)
    table = Table()
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    console.print(table)
    return 0


COMMANDS = (
    Command("mixers", "list registered mixers, their backends and availability", lambda p: None, cmd_mixers),
    Command("results", "a table of runs and their headline numbers", results_arguments, cmd_results),
    Command(
        "watch",
        "a live table of a suite's cells: progress, loss, speed, ETA, job, host, flags",
        watch_arguments,
        cmd_watch,
    ),
    Command("query", "run one read-only SQL statement against the store", query_arguments, cmd_query),
    Command("report", "write one self-contained HTML dashboard per suite", report_arguments, cmd_report),
)
