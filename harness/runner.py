"""Run a suite: for every cell not yet done, build, train, evaluate and store, resumably.

A cell is claimed in the store before any work, and its results are written in one
transaction when it ends, so killing the process loses at most the cell in flight and the
next ``run`` picks up exactly where this one stopped. A cell that fails (an exception, a NaN
loss, out of memory, a missing dataset) is recorded ``failed`` with a one-line error and the
suite goes on; Ctrl-C marks the cell in flight as interrupted and stops.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from harness.common.errors import one_line
from harness.common.names import MetricName, RunStatus
from harness.config.budget import cell_need, largest_needs
from harness.config.cells import (
    Summary,
    cell_label,
    data_config,
    model_spec,
    run_record,
    select_cells,
)
from harness.config.suite import Cell, Suite
from harness.data import (
    DataConfig,
    DataError,
    DataNeed,
    PackedData,
    disk_bytes,
    load_packed,
    load_tokenizer,
)
from harness.data.source import changed_file, content_record
from harness.engine.device_memory import free_memory
from harness.engine.distributed import Group
from harness.engine.parallel import backend_label, choose_mode, full_model, prepare
from harness.engine.resume import Preempted, StepCheckpoints
from harness.engine.train import TrainPlan, plan_training, seed_everything, train
from harness.evaluate.perplexity import evaluate
from harness.measure.cost import duration, estimate, measurements
from harness.measure.environment import environment, pick_device
from harness.measure.flops import training_flops
from harness.measure.mfu import mfu, peak_tflops
from harness.monitor.live import LiveCurve
from harness.monitor.loggers import DEFAULT_LOG_DIR, open_mirrors
from harness.store.checkpoints import DEFAULT_CHECKPOINT_DIR, save_checkpoint
from harness.store.database import Store
from harness.tasks import TaskData, evaluate_task, get_task, load_task_data
from models import build
from models.errors import MixbenchError

DEFAULT_CACHE_DIR = Path("results") / "cache"


@dataclass(frozen=True)
class Workload:
    """What a cell trains on and how it is scored: a text corpus or a synthetic task."""

    data: PackedData | TaskData  # both give ``train``, ``val``, ``batch()`` and ``vocab_size``
    tokenizer: str  # recorded with the checkpoint
    # (model, device) -> (evaluation with loss / perplexity / position_loss, extra metrics)
    score: Callable[[nn.Module, torch.device], tuple[Any, dict[str, float]]]


def source_records(cell: Cell) -> dict[str, Any] | None:
    """What a text cell records of its local corpora's content (``content_record``), by setting."""
    if cell.task is not None:
        return None
    cfg = data_config(cell)
    return {s: content_record(v) for s in ("source", "val_source") if (v := getattr(cfg, s)) is not None}


class EpochBudgetError(MixbenchError, ValueError):
    """A budget that would pass over the training split more often than the suite allows."""


def training_epochs(cell: Cell, train_sequences: int, plan: TrainPlan) -> float:
    """Passes over the training split the budget makes, refused above ``train.max_epochs``.

    A small corpus (or task set) is cycled in epochs; the count is recorded with every run so
    that a number reached by re-reading the same text says so.
    """
    available = train_sequences * cell.seq_len
    epochs = plan.tokens / available
    limit = cell.train.max_epochs
    if limit is not None and epochs > limit:
        source = f"task {cell.task['name']}" if cell.task is not None else cell.data.source
        raise EpochBudgetError(
            f"{plan.tokens:,} training tokens are {epochs:.2f} epochs of the {available:,} training tokens of "
            f"{source}, more than train.max_epochs {limit:g}: raise it, lower the budget or add text"
        )
    return epochs


class SuiteRunner:
    def __init__(
        self,
        suite: Suite,
        store: Store,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        checkpoint_dir: Path = DEFAULT_CHECKPOINT_DIR,
        console: Console | None = None,
        group: Group | None = None,
        resume_command: str = "rerun the same command",
        log_dir: Path = DEFAULT_LOG_DIR,
        open_store: Callable[[], Store] | None = None,
    ):
        """``store`` is rank 0's alone: under torchrun the other ranks pass None and follow rank 0.

        ``open_store`` opens the store on another rank for its one write: the failure it was first to post.
        """
        self.group = group or Group()
        self.open_store = open_store
        self.resume_command = resume_command
        self.suite, self.store = suite, store
        self.cache_dir, self.checkpoint_dir, self.log_dir = Path(cache_dir), Path(checkpoint_dir), Path(log_dir)
        self.console = console or Console()
        self._data: dict[tuple[DataConfig, DataNeed], PackedData] = {}
        self._needs: dict[str, DataNeed] = {}  # by run_key
        self._task_data: dict[str, TaskData] = {}

    def data(self, cell: Cell) -> PackedData:
        """The cell's prefix of its cache, which is first prepared for the whole suite (once)."""
        cfg, need = data_config(cell), self.data_need(cell)
        if (cfg, need) not in self._data:
            prepare = self.suite_data_needs().get(cfg, need).union(need)
            self._data[cfg, need] = load_packed(cfg, self.cache_dir, need=need, prepare=prepare)
        return self._data[cfg, need]

    def data_need(self, cell: Cell) -> DataNeed:
        if cell.run_key not in self._needs:
            self._needs[cell.run_key] = cell_need(cell, self.vocab_size(cell))
        return self._needs[cell.run_key]

    def suite_data_needs(self) -> dict[DataConfig, DataNeed]:
        """Per cache, the largest need among all the suite's text cells (a cell whose plan is invalid fails alone)."""
        pairs = []
        for cell in self.suite.cells():
            if cell.task is None:
                try:
                    pairs.append((data_config(cell), self.data_need(cell)))
                except ValueError:
                    continue
        return largest_needs(pairs)

    def task_data(self, cell: Cell) -> TaskData:
        """A task cell's sequences, generated once per runner and shared by its learning-rate grid."""
        t = cell.task
        key = repr(sorted(t.items()))
        if key not in self._task_data:
            task = get_task(t["name"])(**t["params"])
            self._task_data[key] = load_task_data(task, t["seq_len"], t["n_train"], t["n_val"], t["seed"])
        return self._task_data[key]

    def run(self, only: str | None = None) -> Summary:
        """Every selected cell not yet done. Under torchrun, rank 0 claims and the others follow;
        a failure on any rank ends every rank and is recorded once, and the launch stops there."""
        summary = Summary()
        cells = select_cells(self.suite, only)
        main = self.group.is_main
        if main:
            self.check_sources_unchanged(cells)
        for i, cell in enumerate(cells, 1):
            label = cell_label(cell)
            if not self.group.broadcast(self.store.claim(run_record(cell)) if main else None):
                summary.skipped.append(label)
                if main:
                    self.console.print(
                        f"[dim][{i}/{len(cells)}] {label}: already {self.store.status(cell.run_key)}, skipped[/]"
                    )
                continue
            if main:
                self.console.print(f"[bold][{i}/{len(cells)}] {label}[/] run {cell.run_key}")
            try:
                self.run_cell(cell)
            except Preempted as stop:
                if main:
                    self.store.fail(cell.run_key, f"stopped by {stop} (rerun resumes from it)")
                    self.console.print(
                        f"{label}: {stop.signal_name} at step {stop.step} of {stop.steps}, checkpoint saved in "
                        f"{stop.path}; resume with: {self.resume_command}",
                        soft_wrap=True,
                        markup=False,
                        highlight=False,
                    )
                raise
            except KeyboardInterrupt:
                if main:
                    self.store.fail(cell.run_key, "interrupted by the user (Ctrl-C); rerun the suite to redo it")
                    self.console.print(f"[yellow]{label}: interrupted; results stored so far are kept[/]")
                raise
            except Exception as exc:
                error = one_line(exc)
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    error = f"out of memory: {error}"
                error, mine = self.group.post_failure(error)  # the first failing rank records, whichever it is
                if mine:
                    (self.store or self.open_store()).fail(cell.run_key, error)
                    self.console.print(f"[red]{label}: failed: {error}[/]")
                summary.failed.append((label, error))
                if self.group.distributed:
                    break  # every rank exits now: the launch ends at once; a rerun goes on
            else:
                summary.done.append(label)
                continue
            # Out of the handler the failed cell's tensors are unreachable: give their memory back
            # so that one out-of-memory cell does not make the next ones fail.
            free_memory(collect=True)
        return summary

    def check_sources_unchanged(self, cells: list[Cell]) -> None:
        """Refuse, before anything trains, to skip a done cell whose local corpus was edited since.

        Its run key names the corpus by path, so the rerun would skip it and report numbers of
        text that is no longer there, beside new cells trained on the new text."""
        done = {r.run_key: r for r in self.store.runs(self.suite.name) if r.status == RunStatus.DONE}
        for cell in cells:
            if cell.run_key not in done:
                continue
            recorded = (done[cell.run_key].environment or {}).get("data_sources") or {}
            for setting, record in recorded.items():
                source = getattr(data_config(cell), setting)
                if record is not None and source is not None and (changed := changed_file(record, source)):
                    raise DataError(
                        f"{cell_label(cell)} is done, trained on data.{setting} {source} as it was; {changed} "
                        "has changed since. Restore it, or point the suite at the new text under a new path "
                        "or suite name (a new run key)"
                    )

    def workload(self, cell: Cell) -> Workload:
        """The one place where a text-corpus cell and a synthetic-task cell differ."""
        if cell.task is None:
            data = self.data(cell)  # checks data.vocab_size against the tokenizer before reading

            def score_text(model: nn.Module, device: torch.device) -> tuple[Any, dict[str, float]]:
                return evaluate(model, data, cell.eval, device), {}

            return Workload(data, data_config(cell).tokenizer, score_text)
        data = self.task_data(cell)

        def score_task(model: nn.Module, device: torch.device) -> tuple[Any, dict[str, float]]:
            # accuracy at the scored positions of held-out sequences
            result = evaluate_task(model, data, cell.eval.batch_size, device)
            return result, {
                MetricName.TASK_ACCURACY: result.accuracy,
                "task/sequence_accuracy": result.sequence_accuracy,
                "model/state_size": float(model.state_size(cell.seq_len)),
            }

        return Workload(data, f"task:{cell.task['name']}", score_task)

    def run_cell(self, cell: Cell) -> None:
        group, main = self.group, self.group.is_main
        device = group.device(pick_device(cell.train.device))
        if cell.eval.lm_eval and main:  # before training: lm-eval missing or an unknown task fails now
            from harness.evaluate import lm_eval_adapter

            lm_eval_adapter.check_tasks(cell.eval.lm_eval)
        work = self.workload(cell) if main else None
        group.broadcast(None)  # rank 0 prepares the data first; the others then only open the cache
        work = work or self.workload(cell)
        seed_everything(cell.train.seed)
        model = build(model_spec(cell, work.data.vocab_size)).to(device)
        n_params, n_params_non_embedding = model.num_params(), model.num_params(non_embedding=True)
        plan = plan_training(cell.train, n_params, cell.seq_len)
        epochs = training_epochs(cell, len(work.data.train), plan)
        mode = choose_mode(cell.train.parallel, n_params, group)
        live = self.live_curve(cell, model, plan, device) if main else None
        wrapped = prepare(
            model,
            mode,
            device,
            compile=cell.train.compile,
            activation_checkpointing=cell.train.activation_checkpointing,
        )
        steps = StepCheckpoints(self.checkpoint_dir / cell.run_key / "steps", group, cell.train.keep_checkpoints)

        with live or nullcontext():
            result = train(
                wrapped,
                work.data,
                cell.train,
                plan,
                device,
                label=cell_label(cell),
                group=group,
                checkpoints=steps,
                on_log=live,
            )
        if result.resumed_from and main:
            self.console.print(f"  resumed from the checkpoint of step {result.resumed_from} of {plan.steps}")
        model = full_model(wrapped, group, device)  # rank 0 evaluates and writes; the others are done
        if not main:
            return
        # Saved before anything else can fail: an error in evaluation never loses a trained model.
        checkpoint = save_checkpoint(model, self.checkpoint_dir / cell.run_key, work.tokenizer, cell.config)
        evaluation, scores = work.score(model, device)
        final = plan.steps
        metrics = list(result.metrics)
        metrics += [
            (final, MetricName.VAL_LOSS, evaluation.loss),
            (final, MetricName.VAL_PPL, evaluation.perplexity),
            (final, "train/tokens", float(result.tokens)),
            (final, "train/seconds", result.seconds),
            (final, MetricName.TOKENS_PER_S, result.tokens_per_second),
            (final, "train/world_size", float(group.world_size)),
            (final, "data/epochs", epochs),
        ]
        flops = training_flops(model, cell.seq_len, result.tokens)
        metrics += [(final, name, value) for name, value in flops.items()]
        utilisation = mfu(
            flops["flops/train"], result.seconds, peak_tflops(device, cell.train.peak_tflops), group.world_size
        )
        if utilisation is not None:
            metrics.append((final, "train/mfu", utilisation))
        if cell.eval.lm_eval:
            from harness.evaluate import lm_eval_adapter

            scores |= lm_eval_adapter.lm_eval_metrics(
                model,
                work.data.tokenizer,
                cell.eval.lm_eval,
                max_length=cell.seq_len,
                limit=cell.eval.lm_eval_limit,
                batch_size=cell.eval.batch_size,
            )
        metrics += [(final, name, value) for name, value in scores.items()]
        self.store.finish(
            cell.run_key,
            metrics=metrics,
            position_loss=evaluation.position_loss,
            n_params=n_params,
            n_params_non_embedding=n_params_non_embedding,
            backend=backend_label(model, device),
            environment=environment(device)
            | {"world_size": group.world_size, "parallel": mode, "data_sources": source_records(cell)},
            checkpoint_path=str(checkpoint.resolve()),
        )
        steps.remove()  # the final weights are stored; the mid-cell checkpoints have served
        accuracy = f"accuracy {scores[MetricName.TASK_ACCURACY]:.4f}  " if MetricName.TASK_ACCURACY in scores else ""
        self.console.print(
            f"  {accuracy}val loss {evaluation.loss:.4f}  ppl {evaluation.perplexity:.2f}  "
            f"{result.tokens:,} tokens in {result.seconds:.1f}s"
        )

    def live_curve(self, cell: Cell, model: nn.Module, plan: TrainPlan, device: torch.device) -> LiveCurve:
        """Rank 0's writer of the cell's live curve, progress and MFU, mirrored to the suite's trackers."""
        flops_per_token = training_flops(model, cell.seq_len, plan.tokens)["flops/train"] / plan.tokens
        peak, devices = peak_tflops(device, cell.train.peak_tflops), self.group.world_size
        mirrors = open_mirrors(
            cell.train.loggers, self.log_dir, cell.suite, cell.run_key, cell_label(cell), cell.config
        )
        return LiveCurve(
            self.store, cell.run_key, plan.steps, lambda rate: mfu(rate * flops_per_token, 1.0, peak, devices), mirrors
        )

    def dry_run(self, only: str | None = None, gpu: str | None = None, gpus: int = 1) -> Table:
        """The cells with parameter counts, token budgets and FLOPs, computed without any data;
        with ``gpu`` (a kind of ``harness.measure.mfu``'s table) also the GPU-hours each would take
        (``harness.measure.cost``)."""
        table = Table(title=f"suite {self.suite.name}: dry run")
        costed = ("GPU-hours", f"wall on {gpus}× {gpu}", "speed from") if gpu else ()
        for col in (
            "run key",
            "model",
            "size",
            "seq",
            "params",
            "non-emb params",
            "tokens",
            "train FLOPs",
            "status",
            *costed,
        ):
            table.add_column(
                col,
                justify="right"
                if col in {"params", "non-emb params", "tokens", "train FLOPs", *costed[:2]}
                else "left",
            )
        known, total = (measurements(self.store) if gpu else []), 0.0
        for cell in select_cells(self.suite, only):
            vocab = self.vocab_size(cell)
            with torch.device("meta"):  # no memory: a 1.3b model costs nothing to count
                model = build(model_spec(cell, vocab))
            plan = plan_training(cell.train, model.num_params(), cell.seq_len)
            flops = training_flops(model, cell.seq_len, plan.tokens)["flops/train"]
            cost = []
            if gpu:
                e = estimate(cell.mixer, cell.backbone, cell.size, cell.seq_len, plan.tokens, flops, gpu, gpus, known)
                total += e.gpu_hours
                cost = [f"{e.gpu_hours:.3g}", duration(e.wall_hours * 3600), e.basis]
            table.add_row(
                cell.run_key,
                cell.arch if cell.task is None else cell_label(cell),
                cell.size,
                str(cell.seq_len),
                f"{model.num_params():,}",
                f"{model.num_params(non_embedding=True):,}",
                f"{plan.tokens:,}",
                f"{flops:.3g}",
                self.store.status(cell.run_key) or "new",
                *cost,
            )
        if gpu:
            table.caption = f"total {total:.4g} GPU-hours on {gpu}: {duration(total / gpus * 3600)} on {gpus} GPUs"
        return table

    def data_table(self) -> Table:
        """Per cache: the largest training budget, the validation sequences, and the disk they take."""
        table = Table(
            title=f"suite {self.suite.name}: data to prepare (2 bytes a token up to a 65,536 vocabulary, else 4)"
        )
        for col in ("source", "split", "val", "seq", "train tokens", "val seqs", "tokens to prepare", "disk"):
            table.add_column(col, justify="left" if col in {"source", "split", "val"} else "right")
        vocab = {data_config(c): self.vocab_size(c) for c in self.suite.cells() if c.task is None}
        for cfg, need in self.suite_data_needs().items():
            tokens, size = disk_bytes(cfg, need, vocab[cfg])
            val = "hashed blocks" if cfg.separate_val is None else "{} ({})".format(*cfg.separate_val)
            table.add_row(
                cfg.source,
                cfg.split,
                val,
                str(cfg.seq_len),
                f"{need.train_tokens:,}",
                f"{need.val_sequences:,}",
                f"{tokens:,}",
                f"{size / 1e9:.3g} GB",
            )
        return table

    def vocab_size(self, cell: Cell) -> int:
        """From the task or the suite if it says (no download), else from the tokenizer."""
        if cell.task is not None:
            return cell.task["params"]["vocab_size"]
        if cell.data.vocab_size is not None:
            return cell.data.vocab_size
        try:
            return load_tokenizer(data_config(cell).tokenizer).vocab_size
        except DataError as exc:
            raise DataError(f"{exc} (the dry run needs the tokenizer for the vocabulary size)") from None
