"""The single-process side of the engine: mode choice, batching per rank, precision, MFU, progress rows."""

from __future__ import annotations

import pytest
import torch

from harness.cli import main
from harness.cli.results import results_table
from harness.config.suite import TrainSection, load_suite
from harness.engine.distributed import Group
from harness.engine.parallel import FSDP_FROM_PARAMS, choose_mode, prepare
from harness.engine.train import micro_batching, plan_training
from harness.measure.mfu import mfu, peak_tflops
from harness.store.database import RunRecord, Store
from models import ModelSpec, build


def test_mode_is_none_on_one_process_and_auto_shards_large_models():
    two = Group(rank=0, world_size=2)
    assert choose_mode("fsdp", 10, Group()) == "none"
    assert (choose_mode("auto", FSDP_FROM_PARAMS - 1, two), choose_mode("auto", FSDP_FROM_PARAMS, two)) == (
        "ddp",
        "fsdp",
    )
    assert choose_mode("ddp", FSDP_FROM_PARAMS * 10, two) == "ddp"
    with pytest.raises(ValueError, match="train.parallel must be one of auto, ddp, fsdp, got 'zero3'"):
        choose_mode("zero3", 10, two)


def test_the_global_batch_is_the_same_at_every_world_size():
    plan = plan_training(TrainSection(tokens=64 * 32, batch_tokens=16 * 32, micro_batch_size=4), 1, 32)
    assert [micro_batching(plan, w) for w in (1, 2, 4, 8)] == [(4, 4), (4, 2), (4, 1), (2, 1)]
    with pytest.raises(
        ValueError, match="batch of 16 sequences does not split into micro-batches of 4 on each of 3 ranks"
    ):
        micro_batching(plan, 3)


def test_engine_settings_do_not_change_the_run_key(write_suite):
    plain = load_suite(write_suite()).cells()[0]
    engine = load_suite(
        write_suite(
            train={
                "tokens": 2048,
                "batch_tokens": 256,
                "lr": 3e-3,
                "log_every": 2,
                "device": "cpu",
                "checkpoint_every": 5,
                "compile": True,
                "parallel": "fsdp",
            }
        )
    ).cells()[0]
    assert engine.run_key == plain.run_key
    assert engine.config["train"]["checkpoint_every"] == 5, "recorded with the run, only not hashed"


def test_mfu_uses_the_peak_table_or_the_override():
    assert peak_tflops(torch.device("cpu")) is None and peak_tflops(torch.device("cpu"), 50.0) == 50.0
    assert mfu(1e15, 2.0, 250.0, devices=2) == pytest.approx(1.0)
    assert mfu(1e15, 2.0, None) is None


def test_compile_and_activation_checkpointing_keep_parameter_names(monkeypatch):
    model = build(ModelSpec.parse("attention@transformer", "micro", 64))
    names = [n for n, _ in model.named_parameters()]
    prepared = prepare(model, "none", torch.device("cpu"), activation_checkpointing=True)
    assert [n for n, _ in prepared.named_parameters()] == names
    x = torch.randint(0, 64, (2, 8))
    prepared(x).sum().backward()  # recomputes each block in the backward pass
    assert all(p.grad is not None for p in prepared.parameters())

    compiled: list[
        torch.nn.Module
    ] = []  # torch.compile itself is for the GPU benchmark: here, that it is asked per block
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    again = prepare(
        build(ModelSpec.parse("attention@transformer", "micro", 64)), "none", torch.device("cpu"), compile=True
    )
    assert compiled == list(again.blocks) and [n for n, _ in again.named_parameters()] == names


def test_results_show_step_and_tokens_of_a_running_cell(write_suite, tmp_path, capsys):
    store = Store(tmp_path / "live.db")
    cell = load_suite(write_suite()).cells()[0]
    store.claim(
        RunRecord(
            run_key=cell.run_key,
            suite="unit",
            mixer="attention",
            backbone="transformer",
            size="micro",
            seq_len=32,
            dataset="x",
            config=cell.config,
        )
    )
    store.record_progress(cell.run_key, 4, {"progress/step": 4, "progress/tokens": 1024})
    store.record_progress(cell.run_key, 6, {"progress/step": 6, "progress/tokens": 1536})
    progress = [(s, n, v) for _, s, n, v in store.metric_values() if n.startswith("progress/")]
    assert sorted(progress) == [(6, "progress/step", 6.0), (6, "progress/tokens", 1536.0)], (
        "the latest replaces the last"
    )
    assert main(["results", "--db", str(tmp_path / "live.db")]) == 0
    assert "running (step 6, 1,536 tokens)" in capsys.readouterr().out.replace("\n", "")
    assert results_table(store, "unit").row_count == 1


def test_bad_engine_settings_are_one_clear_line(write_suite, monkeypatch):
    from harness.config.suite import SuiteError
    from harness.engine.distributed import timeout_from_env

    monkeypatch.setenv("MIXBENCH_DIST_TIMEOUT_S", "ten minutes")
    with pytest.raises(ValueError, match="MIXBENCH_DIST_TIMEOUT_S='ten minutes' is not a number of seconds"):
        timeout_from_env()
    bad = write_suite(train={"tokens": 2048, "batch_tokens": 256, "parallel": "zero3"})
    with pytest.raises(SuiteError, match="parallel"):
        load_suite(bad)
