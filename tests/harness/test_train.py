"""The training loop: schedule, budget, divergence, and that it actually learns."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config.suite import EvalSection, TrainSection
from harness.data import DataConfig, load_packed
from harness.engine.train import TrainingDiverged, learning_rate, plan_training, train
from harness.evaluate.perplexity import bucket_bounds, evaluate
from models import ModelSpec, build


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    plan = plan_training(TrainSection(tokens=100 * 64, batch_tokens=64, lr=1.0, warmup_fraction=0.1), 10, 16)
    assert (plan.steps, plan.warmup_steps, plan.batch_size) == (100, 10, 4)
    lrs = [learning_rate(s, plan, min_lr_ratio=0.1) for s in range(plan.steps)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:])), "strictly decreasing after warm-up"
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)
    middle = 10 + 45
    assert lrs[middle] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))


def test_chinchilla_budget_and_accumulation():
    cfg = TrainSection(tokens="chinchilla", batch_tokens=1024, micro_batch_size=8, lr=1e-3)
    plan = plan_training(cfg, n_params=1000, seq_len=64)
    assert plan.batch_size == 16 and plan.micro_batch_size == 8
    assert plan.steps == math.ceil(20 * 1000 / 1024) and plan.tokens >= 20_000
    with pytest.raises(ValueError, match="micro_batch_size 5 must divide the batch of 16"):
        plan_training(cfg.model_copy(update={"micro_batch_size": 5}), 1000, 64)


@pytest.fixture
def packed(small_corpus, tmp_path):
    return load_packed(DataConfig(source=str(small_corpus), tokenizer="bytes", seq_len=32), tmp_path / "cache")


def test_training_lowers_the_validation_loss(packed):
    torch.manual_seed(0)
    model = build(ModelSpec.parse("attention@transformer", "micro", packed.vocab_size))
    eval_cfg = EvalSection(position_buckets=4, max_val_sequences=16)
    before = evaluate(model, packed, eval_cfg, torch.device("cpu"))
    cfg = TrainSection(tokens=40 * 512, batch_tokens=512, lr=1e-2, log_every=5)
    plan = plan_training(cfg, model.num_params(), 32)
    result = train(model, packed, cfg, plan, torch.device("cpu"))
    after = evaluate(model, packed, eval_cfg, torch.device("cpu"))
    assert after.loss < before.loss - 1.0, (before.loss, after.loss)
    assert result.tokens == plan.tokens
    logged = [name for _, name, _ in result.metrics]
    assert {"train/loss", "train/lr", "train/grad_norm", "tokens/s"} <= set(logged)
    assert [b[:3] for b in after.position_loss] == [(0, 0, 8), (1, 8, 16), (2, 16, 24), (3, 24, 32)]


def test_nan_loss_stops_the_run_and_names_the_step(packed):
    model = build(ModelSpec.parse("attention@transformer", "micro", packed.vocab_size))
    cfg = TrainSection(tokens=10 * 256, batch_tokens=256, lr=1e-3)
    plan = plan_training(cfg, model.num_params(), 32)
    with torch.no_grad():
        model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1 of 10"):
        train(model, packed, cfg, plan, torch.device("cpu"))


def test_position_buckets_cover_every_position_once():
    for seq_len, buckets in [(32, 4), (100, 7), (5, 16)]:
        bounds = bucket_bounds(seq_len, buckets)
        assert bounds[0][0] == 0 and bounds[-1][1] == seq_len
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert len(bounds) == min(seq_len, buckets)
