"""``task/accuracy``, the number behind every MQAR table, against counts made by hand.

The scorer is given a model whose every prediction is known: right at a chosen set of the
scored positions, wrong at the others, and a confident guess at every unscored position. The
accuracy, the sequence accuracy and the loss it reports must be the counts and the sum made here
in plain Python. Then a real task run's stored numbers must equal the same count over its reloaded
checkpoint's predictions. A scorer that returned 1.0, counted unscored positions, read the
prediction one position off, or averaged batch means would fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

from harness.cli import main
from harness.config.suite import load_suite
from harness.store.checkpoints import load_checkpoint
from harness.store.database import Store
from harness.tasks import get_task, load_task_data
from harness.tasks.dataset import evaluate_task

PEAK = 5.0  # the logit of the predicted token; every other logit is 0


class Oracle(nn.Module):
    """Returns, for each input row it was built for, exactly the logits chosen for that row."""

    def __init__(self, logits_by_row: dict[bytes, torch.Tensor]) -> None:
        super().__init__()
        self.logits_by_row = logits_by_row

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.logits_by_row[row.numpy().tobytes()] for row in inputs])


def test_the_scorer_counts_exactly_the_scored_positions_it_got_right():
    vocab = 64
    data = load_task_data(get_task("mqar")(num_kv_pairs=4, vocab_size=vocab), 32, 4, 10, 3)
    table, right, scored, perfect, loss = {}, 0, 0, 0, 0.0
    wrong_loss = -math.log(1.0 / (math.exp(PEAK) + vocab - 1))  # the target's logit is 0
    right_loss = -math.log(math.exp(PEAK) / (math.exp(PEAK) + vocab - 1))
    for i, (inputs, targets) in enumerate(zip(data.val.inputs, data.val.targets)):
        logits = torch.zeros(len(inputs), vocab)
        all_right = True
        for pos, target in enumerate(targets.tolist()):
            if target < 0:  # unscored: predict the input token, confidently (a scorer must ignore it)
                logits[pos, int(inputs[pos])] = PEAK
                continue
            hit = i in (0, 4) or (i + pos) % 3 != 0  # sequences 0 and 4 entirely right
            logits[pos, target if hit else (target + 1) % vocab] = PEAK
            scored += 1
            right += hit
            all_right &= hit
            loss += right_loss if hit else wrong_loss
        perfect += all_right
        table[inputs.numpy().tobytes()] = logits
    assert 0 < right < scored and 2 <= perfect < 10, "the check needs hits, misses and whole sequences right"
    # batches of 3 over 10 sequences: the last one partial, so a mean of batch means would be off
    result = evaluate_task(Oracle(table), data, batch_size=3, device=torch.device("cpu"))
    assert result.scored == scored and result.sequences == 10
    assert result.accuracy == pytest.approx(right / scored, abs=1e-12)
    assert result.sequence_accuracy == pytest.approx(perfect / 10, abs=1e-12)
    assert result.loss == pytest.approx(loss / scored, rel=1e-6)


def test_a_runs_stored_accuracy_is_the_count_over_its_checkpoints_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = {
        "name": "recall",
        "task": {"name": "mqar", "params": {"num_kv_pairs": 4, "vocab_size": 32}, "n_train": 256, "n_val": 16},
        "models": ["attention@transformer"],
        "sizes": ["micro"],
        "seq_lens": [32],
        "train": {"tokens": 16384, "batch_tokens": 512, "lr": 1e-2, "device": "cpu"},
        "eval": {"batch_size": 16},  # one batch: the same logits the plain count below sees
    }
    path = tmp_path / "recall.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    assert main(["run", str(path), "--launcher", "inline", "--train-only"]) == 0
    (run,) = Store().runs("recall")
    values = {name: v for key, _, name, v in Store().metric_values() if key == run.run_key}
    model, _ = load_checkpoint(run.checkpoint_path)
    t = load_suite(path).cells()[0].task
    data = load_task_data(get_task(t["name"])(**t["params"]), t["seq_len"], t["n_train"], t["n_val"], t["seed"])
    with torch.no_grad():
        predicted = model.eval()(data.val.inputs).argmax(-1)
    right = scored = perfect = 0
    for row_pred, row_target in zip(predicted.tolist(), data.val.targets.tolist()):
        pairs = [(p, y) for p, y in zip(row_pred, row_target) if y >= 0]
        right += sum(p == y for p, y in pairs)
        scored += len(pairs)
        perfect += all(p == y for p, y in pairs)
    assert 0 < right < scored, f"{right}/{scored}: the run must neither solve the task nor miss everything"
    assert values["task/accuracy"] == pytest.approx(right / scored, abs=1e-12)
    assert values["task/sequence_accuracy"] == pytest.approx(perfect / len(predicted), abs=1e-12)
