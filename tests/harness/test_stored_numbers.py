"""The numbers a real run stores, recomputed independently, and the dashboard drawing exactly them.

One small suite (attention and TTT-Linear, micro) runs once through the CLI. Then:

* ``val/loss``, ``val/ppl`` and every position bucket equal a plain loop over the validation
  blocks with ``F.cross_entropy``, on the reloaded checkpoint;
* ``flops/train`` equals 3 × the forward FLOPs torch's counter measures × the sequences trained;
* the dashboard's figure JSON holds the stored ``flops/train``/``val/ppl`` points and the stored
  ``position_loss`` curves.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from harness.cli import main
from harness.config.cells import data_config
from harness.config.suite import load_suite
from harness.data import load_packed
from harness.store.checkpoints import load_checkpoint
from harness.store.database import Store

KJV = Path(__file__).resolve().parents[2] / "harness" / "corpus" / "kjv.txt"
SEQ_LEN, TOKENS, MAX_VAL = 32, 2048, 8
# 5 buckets over 32 positions (edges rounded from multiples of 32/5): unequal widths on purpose.
BUCKETS = [(0, 6), (6, 13), (13, 19), (19, 26), (26, 32)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(suite path, store, results folder) after one real run of a two-model suite."""
    root = tmp_path_factory.mktemp("stored")
    (root / "corpus.txt").write_text("\n".join(KJV.read_text().splitlines()[:40]) + "\n")
    suite = {
        "name": "stored",
        "data": {"source": str(root / "corpus.txt"), "tokenizer": "bytes", "seq_len": SEQ_LEN, "val_fraction": 0.1},
        "models": ["attention@transformer", "ttt_linear@transformer"],
        "sizes": ["micro"],
        "train": {"tokens": TOKENS, "batch_tokens": 256, "lr": 3e-3, "log_every": 4},
        # batches of 3 over 8 sequences: the last batch is partial, so a mean of batch means is wrong
        "eval": {"position_buckets": len(BUCKETS), "max_val_sequences": MAX_VAL, "batch_size": 3},
    }
    path = root / "stored.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    args = [
        "--db",
        str(root / "m.db"),
        "--cache-dir",
        str(root / "cache"),
        "--checkpoint-dir",
        str(root / "ckpt"),
        "--report-dir",
        str(root / "dash"),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", str(path), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    return path, Store(root / "m.db"), root


def stored_values(store: Store, run_key: str) -> dict[str, float]:
    return {name: v for key, _step, name, v in store.metric_values() if key == run_key}


def independent_losses(model: torch.nn.Module, val_blocks: np.ndarray) -> torch.Tensor:
    """``(sequences, positions)`` token losses: one block at a time, inputs and targets cut by hand."""
    rows = []
    with torch.no_grad():
        for block in val_blocks[:MAX_VAL]:
            ids = torch.tensor(block.astype(np.int64))
            logits = model(ids[None, :-1])[0]
            rows.append(F.cross_entropy(logits, ids[1:], reduction="none"))
    return torch.stack(rows).double()


def test_stored_evaluation_equals_a_plain_cross_entropy_loop(finished):
    path, store, root = finished
    cells = {c.run_key: c for c in load_suite(path).cells()}
    runs = store.runs("stored")
    assert len(runs) == 2 and all(r.status == "done" for r in runs)
    positions = store.position_losses("stored")
    for run in runs:
        model, _ = load_checkpoint(run.checkpoint_path)
        data = load_packed(data_config(cells[run.run_key]), root / "cache")
        assert len(data.val) > MAX_VAL, "the cap on validation sequences must be exercised"
        losses = independent_losses(model, data.val)
        values = stored_values(store, run.run_key)
        assert values["val/loss"] == pytest.approx(losses.mean().item(), rel=1e-5)
        assert values["val/ppl"] == pytest.approx(math.exp(losses.mean().item()), rel=1e-5)
        buckets = [(b, lo, hi, loss) for key, b, lo, hi, loss in positions if key == run.run_key]
        assert [(b, lo, hi) for b, lo, hi, _ in buckets] == [(i, lo, hi) for i, (lo, hi) in enumerate(BUCKETS)]
        for _, lo, hi, loss in buckets:
            assert loss == pytest.approx(losses[:, lo:hi].mean().item(), rel=1e-5), (run.mixer, lo, hi)


def test_stored_training_flops_equal_the_counted_forward(finished, count_flops):
    _, store, _ = finished
    for run in store.runs("stored"):
        model, _ = load_checkpoint(run.checkpoint_path)
        with count_flops() as counter:
            model(torch.zeros(1, SEQ_LEN, dtype=torch.long))
        values = stored_values(store, run.run_key)
        # 2048 tokens = 8 steps x 8 sequences x 32 positions; training = 3 x forward per sequence
        assert values["train/tokens"] == TOKENS
        assert values["flops/forward_per_sequence"] == counter.get_total_flops()
        assert values["flops/train"] == 3 * counter.get_total_flops() * (TOKENS // SEQ_LEN)
        assert values["flops/6nd"] == 6 * run.n_params * TOKENS


def plotly_figures(page: str) -> list[dict]:
    """The ``data`` and ``layout`` of every ``Plotly.newPlot(id, data, layout, config)`` call on the page."""
    decoder, figures = json.JSONDecoder(), []
    for match in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, re.compile(r"[\s,]*").match(page, end).end())
        figures.append({"data": data, "layout": layout})
    return figures


def numbers(array) -> list[float]:
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"])).tolist()
    return [float(v) for v in array]


def test_dashboard_draws_the_stored_numbers(finished):
    _, store, root = finished
    figures = {
        f["layout"]["title"]["text"].split("<br>")[0]: f
        for f in plotly_figures((root / "dash" / "stored.html").read_text())
    }
    runs = {r.run_key: r for r in store.runs("stored")}

    flops = figures["Validation perplexity vs training FLOPs"]
    drawn = {}
    for trace in flops["data"]:
        for key_etc, x, y in zip(trace["customdata"], numbers(trace["x"]), numbers(trace["y"])):
            drawn[key_etc[0]] = (trace["name"], x, y)
    assert set(drawn) == set(runs)
    for key, (name, x, y) in drawn.items():
        values = stored_values(store, key)
        assert name == f"{runs[key].mixer}@{runs[key].backbone}"
        assert x == pytest.approx(values["flops/train"], rel=1e-12) and y == pytest.approx(values["val/ppl"], rel=1e-12)

    curves = {t["name"]: t for t in figures["Perplexity by token index (validation)"]["data"]}
    assert len(curves) == len(runs)
    for key, run in runs.items():
        stored = [(lo, hi, loss) for k, _b, lo, hi, loss in store.position_losses("stored") if k == key]
        trace = curves[f"{run.mixer}@{run.backbone} {run.size} T{run.seq_len}"]
        assert numbers(trace["x"]) == [(lo + hi - 1) / 2 for lo, hi, _ in stored]
        assert numbers(trace["y"]) == pytest.approx([math.exp(loss) for _, _, loss in stored], rel=1e-12)
