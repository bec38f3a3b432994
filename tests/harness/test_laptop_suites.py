"""The laptop suites (mqar, mqar-quick, miniature): the grids and budgets they promise, and the
repeated-epochs guard the miniature suite relies on."""

from __future__ import annotations

import math
from pathlib import Path

from harness.cli import main
from harness.config.suite import load_suite
from harness.runner import SuiteRunner
from harness.store.database import Store

SUITES = Path(__file__).resolve().parents[2] / "suites"
KJV = Path(__file__).resolve().parents[2] / "harness" / "corpus"
SIX = [
    "ttt_linear@mamba",
    "ttt_mlp@mamba",
    "ttt_linear@transformer",
    "ttt_mlp@transformer",
    "mamba@mamba_native",
    "attention@transformer",
]


def dry_run_rows(name: str, tmp_path: Path) -> list[dict[str, str]]:
    table = SuiteRunner(
        load_suite(SUITES / f"{name}.yaml"), Store(tmp_path / "m.db"), cache_dir=tmp_path / "cache"
    ).dry_run()
    columns = {c.header: list(c._cells) for c in table.columns}
    return [dict(zip(columns, cells)) for cells in zip(*columns.values())]


def number(text: str) -> int:
    return int(text.replace(",", ""))


def test_miniature_dry_run_lists_six_architectures_two_sizes_three_seeds_and_chinchilla_scaled_budgets(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(SUITES / "miniature.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "train FLOPs" in out and "data to prepare" in out and "builtin:kjv" in out

    suite = load_suite(SUITES / "miniature.yaml")
    rows = dry_run_rows("miniature", tmp_path)
    assert sorted((r["model"], r["size"], r["seq"]) for r in rows) == sorted(
        (m, s, "1024") for m in SIX for s in ("micro", "tiny") for _seed in range(3)
    )
    assert sorted({c.train.seed for c in suite.cells()}) == [0, 1, 2]
    ratio, batch = suite.spec.train.tokens_per_param, suite.spec.train.batch_tokens
    for r in rows:  # tokens proportional to parameters, rounded up to whole batches
        assert number(r["tokens"]) == math.ceil(ratio * number(r["params"]) / batch) * batch, r
    params = {(r["model"], r["size"]): number(r["params"]) for r in rows}
    for model in SIX:
        assert params[(model, "micro")] < params[(model, "tiny")]
    assert not (tmp_path / "cache").exists(), "a dry run reads no data"


def test_miniature_budgets_read_the_shipped_corpus_at_most_once(tmp_path):
    """Every cell's tokens fit one pass over KJV's training blocks, under its ``train.max_epochs`` 1."""
    from tokenizers import Tokenizer

    suite = load_suite(SUITES / "miniature.yaml")
    tokens = len(Tokenizer.from_file(str(KJV / "tokenizer.json")).encode((KJV / "kjv.txt").read_text()).ids)
    width = suite.spec.data.seq_len + 1
    train_tokens = (tokens // width) * (1 - suite.spec.data.val_fraction) * suite.spec.data.seq_len  # about
    largest = max(number(r["tokens"]) for r in dry_run_rows("miniature", tmp_path))
    assert suite.spec.train.max_epochs == 1
    assert 0.5 < largest / train_tokens < 0.95  # most of the corpus, no block twice


def test_mqar_suites_grids():
    decisive = load_suite(SUITES / "mqar.yaml")
    cells = decisive.cells()
    assert len(cells) == 4 * 2 * 3  # mixers x widths x seeds
    assert {c.arch for c in cells} == {"attention@mamba", "ttt_linear@mamba", "ttt_mlp@mamba", "mamba2@mamba_native"}
    assert {c.mixer_settings["d_state"] for c in cells if c.arch.startswith("mamba2")} == {64}  # the suite's override
    assert {c.train.seed for c in cells} == {0, 1, 2} and {c.train.lr for c in cells} == {1e-2}
    assert {c.size for c in cells} == {"micro", "tiny"} and {c.seq_len for c in cells} == {64}
    assert all(c.arch.endswith(("@mamba", "@mamba_native")) for c in cells)  # every model has a short convolution
    assert decisive.spec.train.tokens <= decisive.spec.task.n_train * 64  # no training sequence is seen twice
    assert decisive.spec.launcher.parallel == 2  # both cores, one thread per cell
    quick = load_suite(SUITES / "mqar-quick.yaml")
    assert quick.name == "mqar-quick" and len(quick.cells()) == 5 * 8


def test_epoch_cap_fails_the_cell_in_one_line_and_every_run_records_its_epochs(
    write_suite, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    corpus = tmp_path / "two_chapters.txt"  # ~7.6k bytes: a byte-level corpus smaller than the budget
    corpus.write_text("\n".join((KJV / "kjv.txt").read_text().splitlines()[:2]) + "\n")
    data = {"source": str(corpus), "tokenizer": "bytes", "seq_len": 32}
    train = {"tokens": 16384, "batch_tokens": 256, "lr": 3e-3, "log_every": 8, "device": "cpu"}
    assert main(["run", str(write_suite(name="once", train={**train, "tokens": 2048}))]) == 0  # a prefix, read once
    assert main(["run", str(write_suite(name="repeats", data=data, train=train))]) == 0
    assert main(["run", str(write_suite(name="over", data=data, train={**train, "max_epochs": 2}))]) == 1
    out = capsys.readouterr().out
    runs = {r.suite: r for r in Store().runs()}
    assert [runs[s].status for s in ("once", "repeats", "over")] == ["done", "done", "failed"]
    assert "more than train.max_epochs 2" in runs["over"].error and "epochs of the" in runs["over"].error
    assert "more than train.max_epochs 2" in " ".join(out.split())
    epochs = {s: {n: v for _k, _s, n, v in Store().metric_values(s)}["data/epochs"] for s in ("once", "repeats")}
    assert epochs["once"] == 1.0 and 2 < epochs["repeats"] < 3


def test_epoch_cap_is_a_guard_outside_the_run_key(write_suite):
    capped = load_suite(write_suite(name="g", train={"tokens": 2048, "batch_tokens": 256, "max_epochs": 3})).cells()[0]
    assert capped.config["train"]["max_epochs"] == 3
    uncapped = load_suite(write_suite(name="g", train={"tokens": 2048, "batch_tokens": 256})).cells()[0]
    assert capped.run_key == uncapped.run_key
