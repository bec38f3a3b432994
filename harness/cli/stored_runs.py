"""One stored run in or out: ``import`` a Hugging Face checkpoint, ``export`` a run, ``eval`` it
on another suite's data, ``lm-eval`` it on lm-eval tasks.

The modules behind them are imported when the command runs: ``transformers`` and lm-eval are
slow to import, and lm-eval is an optional extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from harness.cli.command import Command, add_db
from harness.config.suite import load_suite
from harness.report.dashboard import DEFAULT_REPORT_DIR, write_reports
from harness.runner import DEFAULT_CACHE_DIR
from harness.store.checkpoints import DEFAULT_CHECKPOINT_DIR
from harness.store.database import Store


def import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a Hub id (e.g. state-spaces/mamba-130m-hf) or a local folder in its format")
    p.add_argument("--as", dest="name", required=True, help="the run's size label, e.g. mamba-130m")
    p.add_argument("--revision", help="a Hub branch, tag or commit (default: main)")
    add_db(p)
    p.add_argument("--checkpoint-dir", type=Path, default=DEFAULT_CHECKPOINT_DIR, help="where the mapped weights go")


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_key")
    p.add_argument("out", type=Path, help="a new folder")
    add_db(p)


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_key")
    p.add_argument("suite", type=Path)
    add_db(p)
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="packed-token cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR, help="where the dashboard is written")


def lm_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_key")
    p.add_argument("--tasks", required=True, help="comma-separated: shipped (kjv_cloze, kjv_ppl) or lm-eval's own")
    add_db(p)
    p.add_argument("--limit", type=int, help="documents per task (default: all)")
    p.add_argument("--device", help="default: CUDA if present, else CPU")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, help="tokens the model sees (default: the run's training seq_len)")


def cmd_import(args: argparse.Namespace, console: Console) -> int:
    from harness.interop.hf_io import import_checkpoint

    record = import_checkpoint(args.source, args.name, Store(args.db), args.checkpoint_dir, revision=args.revision)
    source = record.config["imported"]
    console.print(
        f"imported {args.source} ({source['revision']}) as {record.mixer}@{record.backbone} "
        f"{record.size}: run {record.run_key}"
    )
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


def cmd_lm_eval(args: argparse.Namespace, console: Console) -> int:
    from harness.evaluate.lm_eval_adapter import lm_eval_command

    return lm_eval_command(args, console)


COMMANDS = (
    Command(
        "import", "a Hugging Face checkpoint (Llama, Mamba, Mamba-2) as an imported run", import_arguments, cmd_import
    ),
    Command("export", "a finished run as a Hugging Face folder (AutoModelForCausalLM)", export_arguments, cmd_export),
    Command(
        "eval", "score a stored run on a suite's data (perplexity, by position, lm-eval)", eval_arguments, cmd_eval
    ),
    Command(
        "lm-eval", "lm-eval tasks on a done run's checkpoint (needs the [eval] extra)", lm_eval_arguments, cmd_lm_eval
    ),
)
