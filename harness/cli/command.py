"""One command of the command line: its name, help, arguments and the function that runs it.

Each group module (``run``, ``results``, ``db``, ``stored_runs``) lists its commands as a tuple
of ``Command``; ``harness.cli`` builds the parser and dispatches from those tables alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console

Handler = Callable[[argparse.Namespace, Console], int]  # returns the exit status


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler


def add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        help="SQLite path or SQLAlchemy URL, e.g. postgresql://user@host/db "
        "(default $MIXBENCH_DB, else results/mixbench.db)",
    )


def error_console() -> Console:
    """Where a command prints what went wrong (stderr), apart from its results (stdout)."""
    return Console(stderr=True)
