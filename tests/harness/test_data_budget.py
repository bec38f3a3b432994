"""The suite's data budget: computed from its cells, prepared once, read by prefix, shown by --dry-run."""

from __future__ import annotations

import errno

import pytest
import torch

from harness import data
from harness.cli import main
from harness.config.cells import data_config
from harness.config.suite import load_suite
from harness.data import cache as cache_module
from harness.engine.train import plan_training
from harness.runner import SuiteRunner
from harness.store.database import Store
from models import ModelSpec, build


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/ (db, cache) land in the test's folder


def runner_for(path) -> SuiteRunner:
    return SuiteRunner(load_suite(path), Store("sqlite://"))


def expected_tokens(cell, vocab_size: int = 257) -> int:
    """The budget the long way: a real model's parameter count through the training plan."""
    model = build(ModelSpec.parse(cell.arch, cell.size, vocab_size))
    return plan_training(cell.train, model.num_params(), cell.seq_len).tokens


def test_budget_from_a_chinchilla_suite_is_its_largest_cell(write_suite):
    runner = runner_for(write_suite(sizes=["micro", "tiny"], train={"tokens": "chinchilla", "batch_tokens": 256}))
    micro, tiny = runner.suite.cells()
    [(cfg, need)] = runner.suite_data_needs().items()
    assert cfg == data_config(micro) == data_config(tiny)
    budgets = [expected_tokens(micro), expected_tokens(tiny)]
    assert budgets[0] < budgets[1] and need.train_tokens == budgets[1] and need.val_sequences == 8


def test_budget_from_an_explicit_suite_and_one_cache_per_seq_len(write_suite):
    runner = runner_for(
        write_suite(seq_lens=[16, 32], train={"tokens": 3000, "batch_tokens": 256}, eval={"max_val_sequences": 5})
    )
    needs = runner.suite_data_needs()
    assert sorted((cfg.seq_len, n.train_tokens, n.val_sequences) for cfg, n in needs.items()) == [
        (16, 3072, 5),
        (32, 3072, 5),
    ]  # 12 steps of 256 tokens


def test_two_cells_with_different_budgets_tokenize_once_and_the_smaller_reads_a_prefix(write_suite, monkeypatch):
    seen = []
    real = data.ByteTokenizer.encode_batch
    monkeypatch.setattr(
        data.ByteTokenizer, "encode_batch", lambda self, texts: seen.append(len(texts)) or real(self, texts)
    )
    runner = runner_for(
        write_suite(
            sizes=["micro", "tiny"], train={"tokens": "chinchilla", "tokens_per_param": 0.02, "batch_tokens": 64}
        )
    )
    micro, tiny = runner.suite.cells()
    small = runner.data(micro)
    tokenized = sum(seen)
    large = runner.data(tiny)
    assert tokenized > 0 and sum(seen) == tokenized  # the suite's cache was prepared once, for both
    assert len(small.train) < len(large.train)
    assert torch.equal(
        torch.from_numpy(small.train[:].astype("int64")),
        torch.from_numpy(large.train[: len(small.train)].astype("int64")),
    )
    assert len(small.train) * 32 == runner.data_need(micro).train_tokens


def test_dry_run_prints_the_token_budget_and_disk(write_suite, capsys, tmp_path):
    code = main(["run", str(write_suite(train={"tokens": 4096, "batch_tokens": 256})), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and "data to prepare" in out and "4,096" in out and "GB" in out
    assert not (tmp_path / "results" / "cache").exists()  # nothing read or prepared


def test_disk_full_during_preparation_fails_the_cell_in_one_line_and_keeps_stored_results(
    write_suite, capsys, monkeypatch, tmp_path
):
    assert main(["run", str(write_suite(name="first"))]) == 0
    [done] = Store().runs("first")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.TokenCache, "append", full)
    other = tmp_path / "other.txt"
    other.write_text("some other words for a second corpus\n" * 400)
    assert (
        main(["run", str(write_suite(name="second", data={"source": str(other), "tokenizer": "bytes", "seq_len": 32}))])
        == 1
    )
    [failed] = Store().runs("second")
    assert failed.status == "failed" and "disk full" in failed.error and "\n" not in failed.error
    assert [(r.run_key, r.status, r.finished_at) for r in Store().runs("first")] == [
        (done.run_key, "done", done.finished_at)
    ]
    caches = [p for p in (tmp_path / "results" / "cache").iterdir() if not p.name.startswith(".")]
    assert len(caches) == 1  # the first suite's; the failed one left nothing behind
