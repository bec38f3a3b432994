"""Checkpoints: a done run's weights reload into a model that computes the same logits."""

from __future__ import annotations

import pytest
import torch

from harness.cli import main
from harness.config.cells import data_config
from harness.config.suite import load_suite
from harness.data import load_packed
from harness.evaluate.perplexity import evaluate
from harness.store.checkpoints import CheckpointError, load_checkpoint
from harness.store.database import Store


def test_done_run_saves_weights_that_reload_exactly(write_suite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_suite())]) == 0
    [run] = Store().runs()
    model, meta = load_checkpoint(run.checkpoint_path)
    assert meta["config"] == run.config and meta["tokenizer"] == "bytes"
    assert model.head.weight is model.embed.weight, "tied weights stay tied after loading"
    cell = load_suite(write_suite()).cells()[0]
    data = load_packed(data_config(cell), tmp_path / "results" / "cache")
    reloaded = evaluate(model, data, cell.eval, torch.device("cpu"))
    stored = {name: v for key, _, name, v in Store().metric_values() if key == run.run_key}
    assert reloaded.loss == pytest.approx(stored["val/loss"], rel=1e-6), "the reloaded model is the trained one"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path)
