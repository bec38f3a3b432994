"""Synthetic recall tasks: generators, suite validation, run keys, and one real learning run end to end."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config.suite import SuiteError, TrainSection, load_suite
from harness.engine.train import plan_training, train
from harness.report.tasks import _label_box, _overlap, best_of_grid, label_positions, task_figures
from harness.store.database import Store
from harness.tasks import (
    IGNORE_INDEX,
    Task,
    TaskError,
    TaskParamError,
    get_task,
    list_tasks,
    load_task_data,
    make_sequences,
    register_task,
)
from models import ModelSpec, build

SMALL = {
    "mqar": {"num_kv_pairs": 6, "vocab_size": 40},
    "noisy_recall": {"num_kv_pairs": 5, "vocab_size": 48, "noise_vocab": 6, "noise_per_pair": 1.5},
    "selective_copy": {"num_tokens": 8, "vocab_size": 20},
}


def recall_layout(task) -> tuple[range, range]:
    """(key tokens, value tokens) of a recall task."""
    first = 1 + getattr(task, "noise_vocab", 0)
    return range(first, first + task.num_keys), range(first + task.num_keys, task.vocab_size)


def check_recall(task, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    """Every scored position is a query key whose value sits right after that key's one earlier occurrence."""
    keys, values = recall_layout(task)
    mask = targets != IGNORE_INDEX
    assert (mask.sum(1) == task.queries).all()  # one scored position per query, no more
    for x, y, m in zip(inputs.tolist(), targets.tolist(), mask.tolist()):
        pairs = {x[j]: x[j + 1] for j in range(len(x) - 1) if x[j] in keys and x[j + 1] in values}
        assert len(pairs) == task.num_kv_pairs  # distinct keys, each once, each followed by its value
        assert len(set(pairs.values())) == task.num_kv_pairs
        scored = [p for p, on in enumerate(m) if on]
        asked = [p for p, tok in enumerate(x) if tok in keys and not (p + 1 < len(x) and x[p + 1] in values)]
        assert scored == asked  # the mask selects exactly the queries: keys not followed by a value
        for p in scored:
            first = x.index(x[p])
            assert first < p and x[first + 1] == y[p] == pairs[x[p]]  # answer earlier, right after its key
            assert first + 1 < p


def check_copy(task, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    seq_len = inputs.shape[1]
    arena = seq_len - task.num_tokens
    mask = targets != IGNORE_INDEX
    assert mask[:, arena:].all() and not mask[:, :arena].any()  # exactly the copy positions
    for x, y in zip(inputs.tolist(), targets.tolist()):
        content = [t for t in x[:arena] if t != 0]
        assert content == y[arena:]  # the tokens scattered earlier, in order
        assert x[arena] == 1 and x[arena + 1 :] == content[:-1]  # marker, then teacher forcing


def check(task, seqs) -> None:
    (check_copy if task.name == "selective_copy" else check_recall)(task, seqs.inputs, seqs.targets)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_generators_are_deterministic_per_seed_and_split(name):
    task = get_task(name)(**SMALL[name])
    a = make_sequences(task, 48, 300, seed=7)
    b = make_sequences(task, 48, 300, seed=7)
    assert a.inputs.dtype == torch.int64 and a.inputs.shape == a.targets.shape == (300, 48)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, make_sequences(task, 48, 300, seed=8).inputs)
    assert not torch.equal(a.inputs, make_sequences(task, 48, 300, seed=7, split="val").inputs)
    prefix = make_sequences(task, 48, 100, seed=7)  # the first k sequences do not depend on n
    assert torch.equal(prefix.inputs, a.inputs[:100]) and torch.equal(prefix.mask, a.mask[:100])
    check(task, a)


@settings(max_examples=30, deadline=None)
@given(
    pairs=st.integers(1, 12),
    extra=st.integers(0, 30),
    spare_vocab=st.integers(0, 40),
    queries=st.one_of(st.none(), st.integers(1, 12)),
    seed=st.integers(0, 2**31),
)
def test_mqar_answers_are_earlier_and_masks_select_exactly_them(pairs, extra, spare_vocab, queries, seed):
    queries = None if queries is None else min(queries, pairs)
    task = get_task("mqar")(num_kv_pairs=pairs, num_queries=queries, vocab_size=2 * pairs + 1 + spare_vocab)
    seq_len = 2 * pairs + 2 * task.queries + extra
    check_recall(task, *(lambda s: (s.inputs, s.targets))(make_sequences(task, seq_len, 20, seed)))


@settings(max_examples=30, deadline=None)
@given(
    pairs=st.integers(1, 10),
    noise=st.floats(0, 3),
    noise_vocab=st.integers(1, 10),
    extra=st.integers(0, 20),
    seed=st.integers(0, 2**31),
)
def test_noisy_recall_keeps_pairs_intact_among_the_noise(pairs, noise, noise_vocab, extra, seed):
    task = get_task("noisy_recall")(
        num_kv_pairs=pairs, noise_per_pair=noise, noise_vocab=noise_vocab, vocab_size=2 * pairs + 1 + noise_vocab + 4
    )
    seq_len = 2 * pairs + task.num_noise + 2 * pairs + extra
    seqs = make_sequences(task, seq_len, 20, seed)
    check_recall(task, seqs.inputs, seqs.targets)
    context = seqs.inputs[:, : 2 * pairs + task.num_noise]
    assert ((context >= 1) & (context <= noise_vocab)).sum(1).eq(task.num_noise).all()  # exactly M distractors


@settings(max_examples=30, deadline=None)
@given(tokens=st.integers(1, 16), extra=st.integers(0, 30), vocab=st.integers(3, 50), seed=st.integers(0, 2**31))
def test_selective_copy_targets_are_the_scattered_tokens_in_order(tokens, extra, vocab, seed):
    task = get_task("selective_copy")(num_tokens=tokens, vocab_size=vocab)
    seqs = make_sequences(task, 2 * tokens + extra, 20, seed)
    check_copy(task, seqs.inputs, seqs.targets)


def test_dataset_adapter_gives_the_sequences_asked_for():
    task = get_task("mqar")(num_kv_pairs=4, vocab_size=32)
    data = load_task_data(task, seq_len=24, n_train=50, n_val=10, seed=0)
    assert (len(data.train), len(data.val), data.vocab_size) == (50, 10, 32)
    inputs, targets = data.batch("train", [3, 1, 4])
    assert torch.equal(inputs, data.train.inputs[[3, 1, 4]]) and torch.equal(targets, data.train.targets[[3, 1, 4]])
    with pytest.raises(ValueError, match="split must be"):
        data.batch("test", [0])


def test_a_real_training_step_puts_no_gradient_on_unscored_logits():
    """One step of ``train()`` itself: the logits at positions the task does not score get exactly zero gradient."""
    task = get_task("mqar")(num_kv_pairs=4, vocab_size=32)
    data = load_task_data(task, seq_len=24, n_train=50, n_val=10, seed=0)
    picked, grads = [], []

    class Recording:  # the task data, noting which sequences train() takes
        train, val, vocab_size = data.train, data.val, data.vocab_size

        def batch(self, split, indices):
            picked.append(np.asarray(indices).copy())
            return data.batch(split, indices)

    torch.manual_seed(0)
    model = build(ModelSpec.parse("attention@transformer", "micro", task.vocab_size))

    def keep_logits_grad(_module, _inputs, logits) -> None:
        logits.register_hook(grads.append)

    model.register_forward_hook(keep_logits_grad)
    cfg = TrainSection(tokens=3 * 24, batch_tokens=3 * 24, lr=1e-3)
    plan = plan_training(cfg, model.num_params(), 24)
    assert (plan.steps, plan.batch_size) == (1, 3)
    train(model, Recording(), cfg, plan, torch.device("cpu"))
    [indices], [grad] = picked, grads
    scored = data.train.targets[indices] != IGNORE_INDEX  # the generator's own targets, not the batch's
    assert scored.any() and (~scored).any()
    assert torch.count_nonzero(grad[~scored]) == 0
    assert (grad[scored].abs().sum(-1) > 0).all()


def test_task_registry_names_the_known_tasks():
    assert {"mqar", "selective_copy", "noisy_recall"} <= set(list_tasks())
    with pytest.raises(TaskError, match=r"unknown task 'mqr'; known tasks: .*mqar.*noisy_recall.*selective_copy"):
        get_task("mqr")
    with pytest.raises(ValueError, match="already registered"):
        register_task("mqar")(type("Other", (Task,), {"__annotations__": {}}))
    with pytest.raises(TaskParamError) as err:
        get_task("mqar")(num_kv_pairs=20, vocab_size=64).check(64)
    assert err.value.field == "num_kv_pairs" and "need 80 tokens" in str(err.value)


# --- suites -------------------------------------------------------------------------------


@pytest.fixture
def task_suite(tmp_path):
    """``task_suite(**fields)`` writes a small MQAR suite (attention only) and returns its path."""

    def write(name: str = "recall", **fields) -> object:
        suite = {
            "name": name,
            "task": {"name": "mqar", "params": {"num_kv_pairs": 4, "vocab_size": 64}, "n_train": 64, "n_val": 16},
            "models": ["attention@transformer"],
            "sizes": ["tiny"],
            "seq_lens": [32],
            "train": {"tokens": 4096, "batch_tokens": 1024, "lr": 3e-3},
            "eval": {"batch_size": 16},
        }
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(suite.get(key), dict):
                suite[key] = {**suite[key], **value}
            else:
                suite[key] = value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return path

    return write


@pytest.mark.parametrize(
    "task, message",
    [
        ({"name": "mqr"}, "task.name: unknown task 'mqr'; known tasks: mqar, noisy_recall, selective_copy"),
        ({"params": {"num_kv_pairs": [4, 12]}}, "task.params.num_kv_pairs: 12 pairs and 12 queries need 48 tokens"),
        ({"params": {"num_kv_pairs": 4, "vocab_size": 8}}, "task.params.vocab_size: 8 gives 3 keys"),
        ({"params": {"num_kv_pairs": 0}}, "task.params.num_kv_pairs: Input should be greater than or equal to 1"),
        ({"params": {"pairs": 4}}, "task.params.pairs: unknown parameter of task 'mqar'; known: "),
        ({"params": {"num_kv_pairs": []}}, "task.params.num_kv_pairs: an empty list gives no cells"),
        ({"n_train": 0}, "task.n_train"),
        ({"sizes": 3}, "task.sizes: unknown field"),
    ],
)
def test_bad_task_suites_name_the_file_and_the_field(task_suite, task, message):
    path = task_suite(task=task)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_task_grid_expands_and_hashes_every_parameter(task_suite):
    path = task_suite(
        task={"params": {"num_kv_pairs": [2, 4, 12], "vocab_size": 64}, "skip_infeasible": True},
        seq_lens=[32, 64],
        train={"lr": [1e-3, 3e-3]},
    )
    cells = load_suite(path).cells()
    # 12 pairs need 48 tokens: skipped at seq_len 32, kept at 64.
    points = [(c.seq_len, c.task["params"]["num_kv_pairs"], c.train.lr) for c in cells]
    assert points == [(t, p, lr) for t in (32, 64) for p in (2, 4, 12) if 4 * p <= t for lr in (1e-3, 3e-3)]
    assert len({c.run_key for c in cells}) == len(cells)
    cell = cells[0]
    assert "data" not in cell.config
    assert cell.config["task"] == {
        "name": "mqar",
        "params": {"vocab_size": 64, "num_kv_pairs": 2, "num_queries": None},
        "seq_len": 32,
        "n_train": 64,
        "n_val": 16,
        "seed": 0,
    }
    assert cell.config["selection"] == {
        "lr_grid": [1e-3, 3e-3],
        "seeds": [0],
        "metric": "task/accuracy",
        "goal": "max",
        "over_seeds": "median",
    }
    key = cell.run_key
    changes = (
        {"task": {"seed": 1}},
        {"task": {"n_train": 65}},
        {"task": {"params": {"num_kv_pairs": 2, "vocab_size": 66}}},
    )
    for change in changes:
        assert load_suite(task_suite(**change)).cells()[0].run_key != key
    # The grid a run belongs to is recorded but not hashed: widening it retrains nothing done.
    wider = task_suite(
        task={"params": {"num_kv_pairs": [2, 4, 12], "vocab_size": 64}, "skip_infeasible": True},
        seq_lens=[32, 64],
        train={"lr": [1e-3, 3e-3, 1e-2]},
    )
    assert {c.run_key for c in cells} <= {c.run_key for c in load_suite(wider).cells()}


def test_text_suites_keep_their_config_and_keys(write_suite):
    cell = load_suite(write_suite()).cells()[0]
    assert cell.task is None and cell.lr_grid is None
    assert set(cell.config) == {"protocol", "suite", "model", "data", "train", "eval"}
    lr_grid = {"tokens": 2048, "batch_tokens": 256, "lr": [3e-3, 1e-3], "log_every": 2, "device": "cpu"}
    grid = load_suite(write_suite(train=lr_grid)).cells()
    assert [c.train.lr for c in grid] == [3e-3, 1e-3] and grid[0].run_key == cell.run_key
    assert grid[0].config["selection"]["metric"] == "val/loss"
    with pytest.raises(SuiteError, match="train.lr: .*distinct values"):
        load_suite(write_suite(train={"lr": [1e-3, 1e-3]}))


# --- the best-of-grid rule ------------------------------------------------------------------


class FakeRun:
    """A stored task run as the report reads it: the canonical config's shape, no database."""

    def __init__(
        self,
        key: str,
        lr: float,
        seq_len: int = 32,
        pairs: int = 4,
        mixer: str = "attention",
        size: str = "tiny",
        seed: int = 0,
    ):
        self.run_key, self.mixer, self.backbone, self.size, self.seq_len = key, mixer, "transformer", size, seq_len
        self.status = "done"
        task = {"name": "mqar", "params": {"num_kv_pairs": pairs, "vocab_size": 64}, "seq_len": seq_len}
        model = {"arch": f"{mixer}@transformer", "size": size, "mixer_settings": {}}
        self.config = {"model": model, "train": {"lr": lr, "seed": seed}, "task": task}


def test_best_of_grid_keeps_the_most_accurate_run_of_each_group():
    runs = [FakeRun("a", 1e-3), FakeRun("b", 3e-3), FakeRun("c", 1e-2)]
    runs += [FakeRun("d", 1e-3, pairs=8), FakeRun("e", 3e-3, pairs=8)]
    runs += [FakeRun("f", 1e-3, seq_len=64, mixer="mamba"), FakeRun("g", 1e-3, seq_len=128, mixer="mamba")]
    acc = {"a": 0.5, "b": 0.9, "c": 0.9, "d": 0.2, "e": 0.1, "f": 0.3, "g": 0.3}
    loss = {"a": 1.0, "b": 0.4, "c": 0.3, "d": 2.0, "e": 2.5, "f": 1.0, "g": 1.0}
    values = {(k, "task/accuracy"): v for k, v in acc.items()} | {(k, "val/loss"): v for k, v in loss.items()}
    values |= {(k, "model/state_size"): 100.0 for k in "fg"}  # a fixed-size state: same x at both lengths
    choices = {c.best.run.run_key: [p.run.run_key for p in c.candidates] for c in best_of_grid(runs, values)}
    assert set(choices) == {"c", "d", "f", "g"}  # ties on accuracy go to the lower loss
    assert choices["c"] == ["c", "b", "a"]
    figures = task_figures(runs, values)
    assert [f.layout.title.text.split("<br>")[0] for f in figures] == [
        "mqar: accuracy vs sequence length",
        "mqar: accuracy vs num_kv_pairs",
        "mqar: accuracy vs state size",
    ]
    assert "of the learning rate with the best median" in figures[0].layout.title.text


def test_one_task_point_draws_only_the_state_size_panel_one_line_per_mixer_through_its_widths():
    """Zoology's figure: with one sequence length and one difficulty, the other panels would be a column of dots."""
    runs = [
        FakeRun(f"{m}-{size}", 1e-3, mixer=m, size=size) for m in ("attention", "mamba") for size in ("micro", "tiny")
    ]
    acc = {"attention-micro": 0.99, "attention-tiny": 1.0, "mamba-micro": 0.2, "mamba-tiny": 0.6}
    state = {"attention-micro": 4096, "attention-tiny": 8192, "mamba-micro": 1024, "mamba-tiny": 2048}
    values = {(k, "task/accuracy"): v for k, v in acc.items()} | {
        (k, "model/state_size"): float(v) for k, v in state.items()
    }
    values |= {(k, "val/loss"): 1.0 for k in acc}
    [figure] = task_figures(runs, values)
    assert figure.layout.title.text.startswith("mqar: accuracy vs state size")
    lines = {trace.name: trace for trace in figure.data}
    assert set(lines) == {"attention@transformer", "mamba@transformer"}
    mamba = lines["mamba@transformer"]
    assert list(mamba.x) == [1024, 2048] and list(mamba.y) == [0.2, 0.6] and list(mamba.text) == ["micro", "tiny"]
    assert "lines" in mamba.mode


def test_labels_of_two_mixers_whose_points_nearly_coincide_are_placed_apart():
    """The README's MQAR figure printed attention's 'tiny' and Mamba-2's 'micro 2/3 seeds solve'
    on top of each other."""
    points = [
        (2752, 0.51, "micro"),
        (16768, 1.0, "tiny"),
        (18688, 0.999, "micro 2/3 seeds solve"),
        (35840, 1.0, "tiny"),
        (35200, 0.10, "tiny 1/3 seeds solve"),
    ]
    positions = label_positions(points, log_x=True)
    assert positions[1].startswith("bottom") and positions[3].startswith("bottom")  # near the top: below the point
    assert positions[0].startswith("top")  # elsewhere above it
    lo, hi = math.log10(2752), math.log10(35840)
    boxes = [
        _label_box(0.05 + 0.9 * (math.log10(x) - lo) / (hi - lo), y / 1.02, t, pos, 1)
        for (x, y, t), pos in zip(points, positions)
    ]
    assert all(_overlap(a, b) == 0 for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert positions[2] != positions[1]  # the first choice for both; the later one moves
    assert label_positions([], log_x=False) == []


# --- end to end: attention learns MQAR through the real runner -----------------------------


def test_attention_learns_mqar_through_the_runner_and_store(task_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = task_suite(
        name="mqar_unit",
        # Measured: accuracy 1.0 after these 800 steps for train seeds 0 and 1 (0.96 after 600); ~16 s on one core.
        task={"params": {"num_kv_pairs": 4, "vocab_size": 32}, "n_train": 20000, "n_val": 256},
        seq_lens=[32],
        train={"tokens": 800 * 1024, "batch_tokens": 1024, "lr": 1e-3, "log_every": 50},
        eval={"batch_size": 128},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs faster on one thread than on two busy ones
    try:
        assert main(["run", str(path)]) == 0, capsys.readouterr().out
    finally:
        torch.set_num_threads(threads)
    [run] = Store().runs("mqar_unit")
    assert run.status == "done" and run.dataset == "task:mqar" and run.config["task"]["params"]["num_kv_pairs"] == 4
    values = {name: v for key, _step, name, v in Store().metric_values("mqar_unit")}
    assert values["task/accuracy"] > 0.99, values
    assert values["model/state_size"] == 2 * (2 * 32 * 64)  # two attention layers' KV cache at T=32, d=64
    assert 0 <= values["task/sequence_accuracy"] <= 1 and values["val/loss"] > 0
    page = (tmp_path / "results" / "dashboards" / "mqar_unit.html").read_text()
    assert "accuracy vs state size" in page and "Task runs" in page
    assert "accuracy vs sequence length" not in page  # one sequence length: that panel would say nothing
    with sqlite3.connect(tmp_path / "results" / "mixbench.db") as db:
        [(accuracy,)] = db.execute("SELECT value FROM metrics WHERE name = 'task/accuracy'").fetchall()
    assert accuracy == values["task/accuracy"]


def test_lm_eval_is_refused_on_a_task_suite(tmp_path):
    suite = {
        "name": "t",
        "task": {"name": "mqar", "params": {"num_kv_pairs": 4, "vocab_size": 32}},
        "models": ["attention@transformer"],
        "sizes": ["micro"],
        "seq_lens": [32],
        "eval": {"lm_eval": ["kjv_cloze"]},
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(SuiteError, match="eval.lm_eval needs a text suite"):
        load_suite(path)
