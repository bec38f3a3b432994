"""``python -m harness`` / ``mixbench``: run suites, list mixers, query results, write dashboards.

Every expected failure (a bad suite, an unknown mixer, a database from the future, a write
attempted through ``query``) ends with one clear line on stderr and exit status 2.

The commands are tables, one module per group: ``run`` (run, latency), ``results`` (results,
watch, query, report, mixers), ``db`` (db upgrade, db copy), ``stored_runs`` (import, export,
eval, lm-eval: one stored run in or out). A new command is one ``Command`` in its group's table.
"""

from __future__ import annotations

import argparse
import signal

from rich.console import Console
from rich.markup import escape

from harness.cli import db, results, run, stored_runs
from harness.cli.command import Command, error_console
from models.errors import MixbenchError

COMMANDS: dict[str, Command] = {c.name: c for group in (run, results, db, stored_runs) for c in group.COMMANDS}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mixbench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.arguments(sub.add_parser(command.name, help=command.help))
    return ap


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
    try:
        return COMMANDS[args.command].run(args, console)
    except MixbenchError as exc:
        error_console().print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        error_console().print("interrupted; finished cells are stored, rerun to resume")
        return 130
