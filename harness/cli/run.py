"""``mixbench run`` and ``mixbench latency``: train a suite's cells, measure its latency sweep."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.cli.command import Command, add_db
from harness.cli.results import print_results
from harness.common.lifeline import follow_from_environment
from harness.config.suite import Suite, load_suite
from harness.engine.distributed import Group, init_from_env
from harness.engine.resume import PREEMPTED_EXIT_CODE, Preempted
from harness.launch.local import LocalLauncher
from harness.launch.submit import print_slurm_plan, submit_suite
from harness.measure.cost import CostError, gpu_kind
from harness.measure.latency import LatencyRunner, latency_table, plan_table, stored_target
from harness.monitor.loggers import check_loggers
from harness.report.dashboard import DEFAULT_REPORT_DIR, write_reports
from harness.runner import DEFAULT_CACHE_DIR, SuiteRunner
from harness.store.checkpoints import DEFAULT_CHECKPOINT_DIR
from harness.store.database import Store


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", type=Path)
    add_db(p)
    p.add_argument("--only", help="glob over 'mixer@backbone/size/Tseq_len' or 'mixer@backbone'")
    p.add_argument("--dry-run", action="store_true", help="print cells, sizes, budgets and FLOPs; train nothing")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="packed-token cache")
    p.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR, help="final weights per run")
    p.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")
    p.add_argument("--gpu", help="with --dry-run: the GPU kind to cost the suite on (H200, H100, H100 PCIe, A100)")
    p.add_argument("--gpus", type=int, default=1, help="with --gpu: GPUs per cell (default 1)")
    p.add_argument(
        "--launcher",
        choices=["local", "slurm", "inline"],
        default="local",
        help="local: run here (default; cells in parallel jobs when the suite's launcher: section sets "
        "parallel or gpus_per_cell); slurm: one job per pending cell; inline: this process runs the cells, "
        "whatever launcher: says (what a launcher's job runs)",
    )
    p.add_argument(
        "--train-only",
        action="store_true",
        help="train the cells; no latency, results table or dashboard (a launcher's job)",
    )


def latency_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", type=Path)
    add_db(p)
    p.add_argument("--only", help="glob over 'mixer@backbone/size' or 'mixer@backbone'")
    p.add_argument(
        "--run", help="measure this stored run's architecture (e.g. an imported one) instead of the suite's models"
    )
    p.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")


def suite_runner(
    args: argparse.Namespace, suite: Suite, store: Store | None, group: Group, console: Console, **kwargs: Any
) -> SuiteRunner:
    """The runner with the command line's cache and checkpoint folders."""
    return SuiteRunner(
        suite,
        store,
        cache_dir=args.cache_dir,
        checkpoint_dir=args.checkpoint_dir,
        console=console,
        group=group,
        **kwargs,
    )


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    suite = load_suite(args.suite)
    follow_from_environment()  # started by a launcher: end (as if preempted) when it is killed
    group = init_from_env()  # world size 1 unless started by torchrun
    try:
        if not group.is_main:  # a follower rank trains; rank 0 alone opens the store, reports and measures
            runner = suite_runner(args, suite, None, group, console, open_store=lambda: Store(args.db))
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
    runner = suite_runner(args, suite, store, group, console, resume_command=resume_command)
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
                console.print(
                    f"stopped by {launcher.stopped_by}: {len(summary.stopped)} cells saved a checkpoint; "
                    f"resume with: {resume_command}",
                    soft_wrap=True,
                    markup=False,
                    highlight=False,
                )
                return PREEMPTED_EXIT_CODE
        else:
            summary = runner.run(args.only)
        if summary.failed and group.distributed:  # the launch ends now: no table, latency or dashboard
            return 1
        if args.train_only:
            return 1 if summary.failed else 0
        if not summary.done and not summary.failed:
            console.print(
                f"[green]all {len(summary.skipped)} cells of suite {suite.name} are already done; nothing to train[/]"
            )
        else:
            console.print(
                f"suite {suite.name}: {len(summary.done)} trained, {len(summary.skipped)} skipped, "
                f"{len(summary.failed)} failed"
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
    # `run --only` on a training suite may select cells and no latency model; elsewhere it must match.
    must_match = not (resume and suite.spec.trains)
    summary = LatencyRunner(suite, store, console=console).run(
        only, resume=resume, chosen=chosen, must_match=must_match
    )
    if resume and not summary.measured:
        console.print(
            f"[green]latency: all {len(summary.skipped)} models of suite {suite.name} are already measured[/]"
        )
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


COMMANDS = (
    Command("run", "run every cell of a suite that is not done yet", run_arguments, cmd_run),
    Command(
        "latency", "the latency protocol alone: measure (again) and replace stored rows", latency_arguments, cmd_latency
    ),
)
