"""Seeds are applied where they must be, checked against an independent computation.

A grid over seeds is only worth its min-max ranges if ``train.seed`` really sets the model's
initial weights and the data order, and a task's sequences stay ``task.seed``'s. A seed
applied after the model is built, or a task drawn from ``train.seed``, would leave every
"same seed, same result" test green; these tests rebuild each from the seed alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from harness import runner as runner_module
from harness.cli import main
from harness.config.cells import model_spec
from harness.config.suite import load_suite
from harness.data import load_tokenizer
from harness.engine import train as train_module
from harness.engine.sampler import BlockSampler
from harness.engine.train import seed_everything
from harness.tasks import dataset as task_dataset
from harness.tasks import get_task, load_task_data
from models import build


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def recorded(monkeypatch):
    """What the runner built and what the loop sampled, per cell in run order."""
    seen: dict[str, list] = {"weights": [], "first_batch": [], "task_seeds": [], "task_batches": []}

    def recording_build(spec):
        model = build(spec)
        seen["weights"].append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    class RecordingSampler(BlockSampler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.first = True

        def next_batch(self):
            batch = super().next_batch()
            if self.first:  # the first batch of a run: what the seed's order starts with
                seen["first_batch"].append((self.seed, self.n_blocks, batch.copy()))
                self.first = False
            return batch

    def recording_load(task, seq_len, n_train, n_val, seed):
        seen["task_seeds"].append(seed)
        return load_task_data(task, seq_len, n_train, n_val, seed)

    original_batch = task_dataset.TaskData.batch

    def recording_batch(self, split, indices):
        out = original_batch(self, split, indices)
        if split == "train":
            seen["task_batches"].append((list(indices), out[0].clone()))
        return out

    monkeypatch.setattr(runner_module, "build", recording_build)
    monkeypatch.setattr(train_module, "BlockSampler", RecordingSampler)
    monkeypatch.setattr(runner_module, "load_task_data", recording_load)
    monkeypatch.setattr(task_dataset.TaskData, "batch", recording_batch)
    return seen


def test_train_seed_sets_the_initial_weights_and_the_data_order(write_suite, recorded):
    path = write_suite(seeds=[0, 1])
    assert main(["run", str(path), "--launcher", "inline", "--train-only"]) == 0
    cells = load_suite(path).cells()
    assert [c.train.seed for c in cells] == [0, 1] and len(recorded["weights"]) == 2
    vocab = load_tokenizer("bytes").vocab_size
    for cell, weights in zip(cells, recorded["weights"]):
        seed_everything(cell.train.seed)  # what the seed alone gives, outside the runner
        alone = build(model_spec(cell, vocab)).state_dict()
        assert weights.keys() == alone.keys()
        assert all(torch.equal(weights[k], alone[k]) for k in alone), f"seed {cell.train.seed}: other weights"
    first, second = recorded["weights"]
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # The order: the first batch of the permutation the cell's own seed draws (epoch 0).
    batch_size = cells[0].train.batch_tokens // cells[0].seq_len
    assert [seed for seed, _, _ in recorded["first_batch"]] == [0, 1]
    for seed, n_blocks, batch in recorded["first_batch"]:
        assert list(batch) == list(np.random.default_rng([seed, 0]).permutation(n_blocks)[:batch_size])
    assert list(recorded["first_batch"][0][2]) != list(recorded["first_batch"][1][2])


def test_a_tasks_sequences_are_task_seeds_whatever_the_train_seed(task_suite, recorded):
    path = task_suite(seeds=[0, 1], task={"seed": 7})
    assert main(["run", str(path), "--launcher", "inline", "--train-only"]) == 0
    assert recorded["task_seeds"] and set(recorded["task_seeds"]) == {7}
    cell = load_suite(path).cells()[0]
    t = cell.task
    alone = load_task_data(get_task(t["name"])(**t["params"]), t["seq_len"], t["n_train"], t["n_val"], 7)
    assert len(recorded["task_batches"]) == 2 * 4  # 4 steps of 16 sequences per seed
    for indices, inputs in recorded["task_batches"]:
        assert torch.equal(inputs, alone.train.inputs[torch.as_tensor(indices)])
    other = load_task_data(get_task(t["name"])(**t["params"]), t["seq_len"], t["n_train"], t["n_val"], 0)
    assert not torch.equal(other.train.inputs, alone.train.inputs)  # the check could fail: seeds differ


@pytest.fixture
def task_suite(tmp_path):
    def write(**fields):
        suite = {
            "name": "recall",
            "task": {"name": "mqar", "params": {"num_kv_pairs": 4, "vocab_size": 64}, "n_train": 64, "n_val": 16},
            "models": ["attention@transformer"],
            "sizes": ["micro"],
            "seq_lens": [32],
            "train": {"tokens": 2048, "batch_tokens": 512, "lr": 3e-3, "device": "cpu"},
            "eval": {"batch_size": 16},
        }
        for key, value in fields.items():
            suite[key] = {**suite[key], **value} if isinstance(suite.get(key), dict) else value
        path = tmp_path / "recall.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return path

    return write
