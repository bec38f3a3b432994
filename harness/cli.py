"""``python -m harness`` / ``mixbench``: run suites, list mixers, query results, write dashboards.

Every expected failure (a bad suite, an unknown mixer, a database from the future, a write
attempted through ``query``) ends with one clear line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.store.checkpoints import DEFAULT_CHECKPOINT_DIR, CheckpointError
from harness.measure.cost import CostError, gpu_kind
from harness.data import DataError
from harness.engine.distributed import Group, init_from_env
from harness.monitor.health import Thresholds, flags_by_run
from harness.interop.hf_io import HFError
from harness.launch.local import LocalLauncher
from harness.launch.submit import LaunchError, print_slurm_plan, submit_suite
from harness.common.lifeline import follow_from_environment
from harness.measure.latency import LatencyRunner, latency_table, plan_table, stored_target
from harness.monitor.loggers import LoggerError, check_loggers
from harness.report.dashboard import DEFAULT_REPORT_DIR, IMAGE_FORMATS, ReportError, spread_rows, write_reports
from harness.engine.resume import PREEMPTED_EXIT_CODE, Preempted
from harness.runner import DEFAULT_CACHE_DIR, SuiteRunner
from harness.store.database import SCHEMA_VERSION, Store, StoreError, resolve_url
from harness.store.transfer import copy_store
from harness.config.suite import Suite, SuiteError, load_suite
from harness.monitor.watch import watch
from models.registry import UnknownMixerError, list_mixers

EXPECTED_ERRORS = (
    SuiteError, StoreError, DataError, UnknownMixerError, CheckpointError, ReportError, LaunchError, CostError,
    LoggerError, HFError,
)


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="SQLite path or SQLAlchemy URL, e.g. postgresql://user@host/db "
                   "(default $MIXBENCH_DB, else results/mixbench.db)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mixbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every cell of a suite that is not done yet")
    run.add_argument("suite", type=Path)
    _add_db(run)
    run.add_argument("--only", help="glob over 'mixer@backbone/size/Tseq_len' or 'mixer@backbone'")
    run.add_argument("--dry-run", action="store_true", help="print cells, sizes, budgets and FLOPs; train nothing")
    run.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="packed-token cache")
    run.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR, help="final weights per run")
    run.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")
    run.add_argument("--gpu", help="with --dry-run: the GPU kind to cost the suite on (H200, H100, H100 PCIe, A100)")
    run.add_argument("--gpus", type=int, default=1, help="with --gpu: GPUs per cell (default 1)")
    run.add_argument("--launcher", choices=["local", "slurm", "inline"], default="local",
                     help="local: run here (default; cells in parallel jobs when the suite's launcher: section sets "
                     "parallel or gpus_per_cell); slurm: one job per pending cell; inline: this process runs the cells, "
                     "whatever launcher: says (what a launcher's job runs)")
    run.add_argument("--train-only", action="store_true",
                     help="train the cells; no latency, results table or dashboard (a launcher's job)")

    sub.add_parser("mixers", help="list registered mixers, their backends and availability")

    res = sub.add_parser("results", help="a table of runs and their headline numbers")
    _add_db(res)
    res.add_argument("--suite")
    res.add_argument("--stale-minutes", type=float, default=Thresholds.stale_minutes,
                     help="flag a running cell with no heartbeat for this long")

    wat = sub.add_parser("watch", help="a live table of a suite's cells: progress, loss, speed, ETA, job, host, flags")
    wat.add_argument("suite", help="a suite file or a suite name in the store")
    _add_db(wat)
    wat.add_argument("--every", type=float, default=5.0, help="seconds between refreshes")
    wat.add_argument("--once", action="store_true", help="print one table and exit")
    wat.add_argument("--stale-minutes", type=float, default=Thresholds.stale_minutes,
                     help="flag a running cell with no heartbeat for this long")

    q = sub.add_parser("query", help="run one read-only SQL statement against the store")
    q.add_argument("sql")
    _add_db(q)

    rep = sub.add_parser("report", help="write one self-contained HTML dashboard per suite")
    _add_db(rep)
    rep.add_argument("--suite")
    rep.add_argument("-o", "--output", type=Path, default=DEFAULT_REPORT_DIR)
    rep.add_argument("--format", choices=IMAGE_FORMATS, help="also write each panel as a static image (needs kaleido)")

    lat = sub.add_parser("latency", help="the latency protocol alone: measure (again) and replace stored rows")
    lat.add_argument("suite", type=Path)
    _add_db(lat)
    lat.add_argument("--only", help="glob over 'mixer@backbone/size' or 'mixer@backbone'")
    lat.add_argument("--run", help="measure this stored run's architecture (e.g. an imported one) instead of the suite's models")
    lat.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")

    lme = sub.add_parser("lm-eval", help="lm-eval tasks on a done run's checkpoint (needs the [eval] extra)")
    lme.add_argument("run_key")
    lme.add_argument("--tasks", required=True, help="comma-separated: shipped (kjv_cloze, kjv_ppl) or lm-eval's own")
    _add_db(lme)
    lme.add_argument("--limit", type=int, help="documents per task (default: all)")
    lme.add_argument("--device", help="default: CUDA if present, else CPU")
    lme.add_argument("--batch-size", type=int, default=8)
    lme.add_argument("--max-length", type=int, help="tokens the model sees (default: the run's training seq_len)")
    imp = sub.add_parser("import", help="a Hugging Face checkpoint (Llama, Mamba, Mamba-2) as an imported run")
    imp.add_argument("source", help="a Hub id (e.g. state-spaces/mamba-130m-hf) or a local folder in its format")
    imp.add_argument("--as", dest="name", required=True, help="the run's size label, e.g. mamba-130m")
    imp.add_argument("--revision", help="a Hub branch, tag or commit (default: main)")
    _add_db(imp)
    imp.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR, help="where the mapped weights go")

    exp = sub.add_parser("export", help="a finished run as a Hugging Face folder (AutoModelForCausalLM)")
    exp.add_argument("run_key")
    exp.add_argument("out", type=Path, help="a new folder")
    _add_db(exp)

    ev = sub.add_parser("eval", help="score a stored run on a suite's data (perplexity, by position, lm-eval)")
    ev.add_argument("run_key")
    ev.add_argument("suite", type=Path)
    _add_db(ev)
    ev.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="packed-token cache")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")

    db = sub.add_parser("db", help="the store itself: upgrade its schema, copy results between stores")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    _add_db(db_sub.add_parser("upgrade", help="migrate the store's schema to this mixbench's (Alembic)"))
    copy = db_sub.add_parser("copy", help="copy finished runs and latency rows from SRC into DST")
    copy.add_argument("src", help="SQLite path or SQLAlchemy URL")
    copy.add_argument("dst", help="SQLite path or SQLAlchemy URL (created if new)")
    return ap


def cmd_import(args: argparse.Namespace, console: Console) -> int:
    from harness.interop.hf_io import import_checkpoint

    record = import_checkpoint(args.source, args.name, Store(args.db), args.checkpoint_dir, revision=args.revision)
    source = record.config["imported"]
    console.print(f"imported {args.source} ({source['revision']}) as {record.mixer}@{record.backbone} "
                  f"{record.size}: run {record.run_key}")  # fmt: skip
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from harness.interop.hf_io import export_run

    how = export_run(Store(args.db), args.run_key, args.out)
    loads = "AutoModelForCausalLM" + (", trust_remote_code=True" if how == "trust_remote_code" else f" ({how})")
    console.print(f"exported run {args.run_key} to {args.out}: loads with {loads}")
    return 0


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from harness.evaluate.stored import evaluate_stored

    suite, store = load_suite(args.suite), Store(args.db)
    for record, ppl in evaluate_stored(store, args.run_key, suite, args.cache_dir, args.device):
        console.print(f"run {args.run_key} on {suite.name} T{record.seq_len}: val ppl {ppl:.3f} (row {record.run_key})")
    for path in write_reports(store, args.report_dir, suite=suite.name):
        console.print(f"dashboard: {path}")
    return 0


def cmd_db(args: argparse.Namespace, console: Console) -> int:
    if args.db_command == "upgrade":
        store = Store(args.db, upgrade=True)
        done = f"upgraded from {store.upgraded_from} to" if store.upgraded_from else "already at"
        console.print(f"{store.where}: {done} schema version {SCHEMA_VERSION}")
        return 0
    source = resolve_url(args.src)
    if source.startswith("sqlite:///") and not Path(source.removeprefix("sqlite:///")).exists():
        raise StoreError(f"db copy: there is no database at {args.src} to copy from")
    src, dst = Store(source), Store(args.dst)
    summary = copy_store(src, dst)
    console.print(
        f"copied {summary.runs} runs and {summary.latency} latency rows from {src.where} to {dst.where}"
        f" ({summary.runs_skipped} runs already there)"
    )
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    suite = load_suite(args.suite)
    follow_from_environment()  # started by a launcher: end (as if preempted) when it is killed
    group = init_from_env()  # world size 1 unless started by torchrun
    try:
        if not group.is_main:  # a follower rank trains; rank 0 alone opens the store, reports and measures
            runner = SuiteRunner(suite, None, cache_dir=args.cache_dir, checkpoint_dir=args.checkpoint_dir,
                                 console=console, group=group, open_store=lambda: Store(args.db))  # fmt: skip
            if suite.spec.trains and not args.dry_run and runner.run(args.only).failed:
                return 1  # at once: the failure is recorded, and torchrun stops the other ranks
            return 0
        return _run_main(args, suite, group, console)
    except Preempted:
        return PREEMPTED_EXIT_CODE  # rank 0 printed the one line that says how to resume
    finally:
        group.close()


def _run_main(args: argparse.Namespace, suite: Suite, group: Group, console: Console) -> int:
    if args.gpu is not None and not args.dry_run:
        raise CostError("--gpu costs a suite before launching it: add --dry-run")
    gpu = None if args.gpu is None else gpu_kind(args.gpu)
    if suite.spec.trains:  # a tracker that is not installed stops the launch, not every cell
        check_loggers({name for cell in suite.cells() for name in cell.train.loggers})
    store = Store(args.db)
    job_args = ("--cache-dir", str(args.cache_dir.resolve()), "--checkpoint-dir", str(args.checkpoint_dir.resolve()))
    if args.launcher == "slurm" and not args.dry_run:
        submit_suite(suite, args.suite, store, args.only, console, extra_args=job_args)
        return 0
    resume_command = "python -m harness " + shlex.join(sys.argv[1:])
    runner = SuiteRunner(suite, store, cache_dir=args.cache_dir, checkpoint_dir=args.checkpoint_dir, console=console,
                         group=group, resume_command=resume_command)  # fmt: skip
    if args.dry_run:
        if suite.spec.trains:
            console.print(runner.dry_run(args.only, gpu, args.gpus))
            if suite.spec.task is None:  # the token budget and disk each cache will take
                console.print(runner.data_table())
            if args.launcher == "slurm":
                print_slurm_plan(suite, args.suite, args.only, console, job_args)
        if suite.spec.latency is not None:
            console.print(plan_table(suite, args.only))
        return 0
    failed = False
    if suite.spec.trains:  # a latency-only suite (latency section, no train section) trains nothing
        if args.launcher == "local" and suite.spec.launcher.local_jobs and not group.distributed:
            launcher = LocalLauncher(suite, args.suite, store, console, extra_args=job_args)
            summary = launcher.run(args.only)
            if launcher.stopped_by is not None:
                console.print(f"stopped by {launcher.stopped_by}: {len(summary.stopped)} cells saved a checkpoint; "
                              f"resume with: {resume_command}", soft_wrap=True, markup=False, highlight=False)  # fmt: skip
                return PREEMPTED_EXIT_CODE
        else:
            summary = runner.run(args.only)
        if summary.failed and group.distributed:  # the launch ends now: no table, latency or dashboard
            return 1
        if args.train_only:
            return 1 if summary.failed else 0
        if not summary.done and not summary.failed:
            console.print(f"[green]all {len(summary.skipped)} cells of suite {suite.name} are already done; nothing to train[/]")
        else:
            console.print(
                f"suite {suite.name}: {len(summary.done)} trained, {len(summary.skipped)} skipped, {len(summary.failed)} failed"
            )
        print_results(console, store, suite.name)
        failed = bool(summary.failed)
    if args.train_only:
        return 0
    if suite.spec.latency is not None:  # only the models not yet measured with these settings
        failed |= run_latency(suite, store, args.only, resume=True, console=console)
    for path in write_reports(store, args.report_dir, suite=suite.name):
        console.print(f"dashboard: {path}")
    console.print(f"database: {store.url}")
    return 1 if failed else 0


def run_latency(
    suite: Suite, store: Store, only: str | None, resume: bool, console: Console, run_key: str | None = None
) -> bool:
    """The suite's latency section (on a stored run's architecture if ``run_key``); prints the stored
    measurements; True if any point failed (OOM is no failure)."""
    chosen = None if run_key is None else [stored_target(store, run_key)]
    summary = LatencyRunner(suite, store, console=console).run(only, resume=resume, chosen=chosen)
    if resume and not summary.measured:
        console.print(f"[green]latency: all {len(summary.skipped)} models of suite {suite.name} are already measured[/]")
    console.print(latency_table(store.latency_rows(suite.name), f"latency of suite {suite.name}"))
    return bool(summary.failed)


def cmd_latency(args: argparse.Namespace, console: Console) -> int:
    suite = load_suite(args.suite)
    store = Store(args.db)
    failed = run_latency(suite, store, args.only, resume=False, console=console, run_key=args.run)
    for path in write_reports(store, args.report_dir, suite=suite.name):
        console.print(f"dashboard: {path}")
    console.print(f"database: {store.url}")
    return 1 if failed else 0


def cmd_mixers(console: Console) -> int:
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
    for col in ("run key", "suite", "model", "size", "seq", "params", "status", "job", "val ppl", "train FLOPs", "backend",
                "error", "flags"):  # fmt: skip
        table.add_column(col)
    for r in runs:
        ppl = values.get((r.run_key, "val/ppl"))
        flops = values.get((r.run_key, "flops/train"))
        status = r.status
        if r.status == "running" and (step := values.get((r.run_key, "progress/step"))) is not None:
            status += f" (step {step:.0f}, {values.get((r.run_key, 'progress/tokens'), 0):,.0f} tokens)"
        table.add_row(
            r.run_key, r.suite, f"{r.mixer}@{r.backbone}", r.size, str(r.seq_len),
            f"{r.n_params:,}" if r.n_params else "-", status, r.job_id or "-", f"{ppl:.2f}" if ppl else "-",
            f"{flops:.3g}" if flops else "-", r.backend or "-", r.error or "", "; ".join(flags[r.run_key]),
        )  # fmt: skip
    return table


def seeds_table(store: Store, suite: str | None) -> Table | None:
    """The points over seeds (``harness/report/seeds.py``): median and range, chosen lr, ties, split; None without any."""
    values = {(key, name): v for key, _step, name, v in store.metric_values(suite)}
    rows = spread_rows(store.runs(suite), values)
    if not rows:
        return None
    table = Table(title=escape("over seeds: median [min-max]; chosen: the lr with the best median; ties: ranges overlap"))
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


def main(argv: list[str] | None = None) -> int:
    if argv is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started with SIGINT ignored (a background job of a non-interactive shell), Python installs
        # no Ctrl-C handler, and the process and every job it launches would ignore an interrupt that
        # should mark the cells in flight interrupted. A command line always takes Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or captured: never cut table cells to 80 columns
        console = Console(width=240)
    errors = Console(stderr=True)
    try:
        if args.command == "run":
            return cmd_run(args, console)
        if args.command == "mixers":
            return cmd_mixers(console)
        if args.command == "results":
            print_results(console, Store(args.db), args.suite, Thresholds(stale_minutes=args.stale_minutes))
            return 0
        if args.command == "watch":
            name = load_suite(Path(args.suite)).name if Path(args.suite).is_file() else args.suite
            watch(Store(args.db), name, args.every, console, once=args.once,
                  thresholds=Thresholds(stale_minutes=args.stale_minutes))
            return 0
        if args.command == "query":
            return cmd_query(args, console)
        if args.command == "db":
            return cmd_db(args, console)
        if args.command == "latency":
            return cmd_latency(args, console)
        if args.command == "import":
            return cmd_import(args, console)
        if args.command == "export":
            return cmd_export(args, console)
        if args.command == "eval":
            return cmd_eval(args, console)
        if args.command == "lm-eval":  # imported here: lm-eval is an optional extra
            from harness.evaluate.lm_eval_adapter import cmd_lm_eval

            return cmd_lm_eval(args, console, errors)
        paths = write_reports(Store(args.db), args.output, suite=args.suite, image_format=args.format)
        for path in paths:
            console.print(f"{'dashboard' if path.suffix == '.html' else 'figure'}: {path}")
        if not paths:
            errors.print("no finished runs to report yet; run a suite first")
            return 1
        return 0
    except EXPECTED_ERRORS as exc:
        errors.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        errors.print("interrupted; finished cells are stored, rerun to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
