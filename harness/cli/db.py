"""``mixbench db``: the store itself, its schema upgraded or its results copied to another store."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from harness.cli.command import Command, add_db
from harness.store.database import SCHEMA_VERSION, Store, StoreError, resolve_url
from harness.store.transfer import copy_store


def db_arguments(p: argparse.ArgumentParser) -> None:
    db_sub = p.add_subparsers(dest="db_command", required=True)
    add_db(db_sub.add_parser("upgrade", help="migrate the store's schema to this mixbench's (Alembic)"))
    copy = db_sub.add_parser("copy", help="copy finished runs and latency rows from SRC into DST")
    copy.add_argument("src", help="SQLite path or SQLAlchemy URL")
    copy.add_argument("dst", help="SQLite path or SQLAlchemy URL (created if new)")


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


COMMANDS = (Command("db", "the store itself: upgrade its schema, copy results between stores", db_arguments, cmd_db),)
