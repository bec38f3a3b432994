"""``mixbench eval RUN_KEY SUITE.yaml``: a stored model scored on a suite's data, beside its trained cells.

The run's own checkpoint and tokenizer, the suite's source, split, context lengths and
evaluation settings: validation loss and perplexity, loss by token position, and the suite's
lm-eval tasks, exactly as a trained cell of the suite is scored (``harness.evaluate.perplexity``). Each
context length of the suite gives one row in the suite, keyed by the run and the data, with
status ``imported`` for a published checkpoint and ``evaluated`` for a model trained here on
other data, so the dashboards draw it beside the suite's cells and mark it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from harness.common.names import FINISHED, MetricName, RunStatus
from harness.config.cells import data_config
from harness.config.suite import PROTOCOL_VERSION, Suite
from harness.data import DataError, DataNeed, load_packed
from harness.engine.parallel import backend_label
from harness.evaluate.perplexity import evaluate
from harness.measure.environment import environment, pick_device
from harness.store.checkpoints import load_checkpoint
from harness.store.database import RunRecord, Store, StoreError


def evaluate_stored(
    store: Store, run_key: str, suite: Suite, cache_dir: Path, device: str = "auto"
) -> list[tuple[RunRecord, float]]:
    """Score the run on every context length of the suite's text cells; returns (row, val ppl) per length."""
    source = store.run(run_key)
    if source.status not in FINISHED or not source.checkpoint_path:
        raise StoreError(
            f"run {run_key} has no final checkpoint (status {source.status}); only a finished run is scored"
        )
    cells = [c for c in suite.cells() if c.task is None]
    if not cells:
        raise StoreError(f"suite {suite.name} is a task suite: there is no text to score a language model on")
    where = pick_device(device)
    model, meta = load_checkpoint(Path(source.checkpoint_path), where)
    status = RunStatus.IMPORTED if source.status == RunStatus.IMPORTED else RunStatus.EVALUATED
    scored: dict[str, tuple[RunRecord, float]] = {}
    for cell in cells:
        cfg = data_config(cell).model_copy(update={"tokenizer": meta["tokenizer"], "vocab_size": None})
        config = {
            "protocol": PROTOCOL_VERSION,
            "suite": suite.name,
            "evaluated": {"run_key": run_key, "arch": model.spec.arch, "size": source.size, "status": source.status},
            "data": {**cell.data.model_dump(exclude={"workers", "vocab_size"}), "tokenizer": meta["tokenizer"]},
            "eval": cell.eval.model_dump(),
        }
        key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if key in scored:  # cells differing only in model or training read the same data
            continue
        data = load_packed(
            cfg, cache_dir, need=DataNeed(train_tokens=cell.seq_len, val_sequences=cell.eval.max_val_sequences)
        )
        if data.vocab_size > model.spec.vocab_size:
            raise DataError(
                f"tokenizer {meta['tokenizer']} has {data.vocab_size} ids but run {run_key}'s model "
                f"{model.spec.vocab_size}"
            )
        result = evaluate(model, data, cell.eval, where)
        metrics = [(0, MetricName.VAL_LOSS, result.loss), (0, MetricName.VAL_PPL, result.perplexity)]
        if cell.eval.lm_eval:
            from harness.evaluate import lm_eval_adapter

            scores = lm_eval_adapter.lm_eval_metrics(
                model,
                data.tokenizer,
                cell.eval.lm_eval,
                max_length=cell.seq_len,
                limit=cell.eval.lm_eval_limit,
                batch_size=cell.eval.batch_size,
            )
            metrics += [(0, name, value) for name, value in scores.items()]
        record = RunRecord(
            run_key=key,
            suite=suite.name,
            mixer=source.mixer,
            backbone=source.backbone,
            size=source.size,
            seq_len=cell.seq_len,
            dataset=cell.data.source,
            config=config,
        )
        store.put_finished(
            record,
            status,
            metrics=metrics,
            position_loss=result.position_loss,
            n_params=model.num_params(),
            n_params_non_embedding=model.num_params(non_embedding=True),
            backend=backend_label(model, where),
            environment=environment(where) | {"evaluated_from": run_key},
            checkpoint_path=source.checkpoint_path,
        )
        scored[key] = (record, result.perplexity)
        if where.type == "cuda":
            torch.cuda.empty_cache()
    return list(scored.values())
