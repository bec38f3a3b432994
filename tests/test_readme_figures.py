"""scripts/readme_figures.py: README tables and figures come from the store, never from a half-run grid."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.cli import main
from harness.config.suite import load_suite
from harness.measure.environment import cpu_model
from harness.store.database import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "scripts" / "readme_figures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_figures"] = module
    spec.loader.exec_module(module)
    return module


README = """# x

<!-- results:{name} -->
stale text
<!-- /results:{name} -->

after
"""


def test_the_block_between_the_markers_is_replaced_and_nothing_else(figures):
    text = README.format(name="mqar")
    out = figures.replace_block(text, "mqar", "new table")
    assert out == text.replace("stale text", "new table")
    assert figures.replace_block(out, "mqar", "again") == text.replace("stale text", "again")  # idempotent markers
    empty = "<!-- results:mqar -->\n<!-- /results:mqar -->\n"  # as first written, before any run
    assert figures.replace_block(empty, "mqar", "table") == "<!-- results:mqar -->\ntable\n<!-- /results:mqar -->\n"
    with pytest.raises(figures.FiguresError, match="no '<!-- results:miniature -->'"):
        figures.replace_block(text, "miniature", "x")


def test_a_suite_with_cells_not_done_is_refused_in_one_line(figures, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README.format(name="mqar"))
    code = figures.main(
        [
            "--db",
            str(tmp_path / "empty.db"),
            "--suite",
            "mqar",
            "--readme",
            str(readme),
            "--figures-dir",
            str(tmp_path / "figs"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "suite mqar: 24 of 24 cells are not done" in err and "python -m harness run suites/mqar.yaml" in err
    assert readme.read_text() == README.format(name="mqar") and not (tmp_path / "figs").exists()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_refresh_writes_png_panels_and_the_tables_of_a_task_and_a_text_suite(
    figures, tmp_path, monkeypatch, small_corpus
):
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        if os.environ.get("MIXBENCH_REQUIRE_BROWSER"):
            pytest.fail("MIXBENCH_REQUIRE_BROWSER is set but no chromium is on PATH")
        pytest.skip("static figures need kaleido's Chromium (Debian: apt-get install chromium)")
    pytest.importorskip("kaleido", reason="static figures need the [figures] extra (kaleido)")
    monkeypatch.chdir(tmp_path)
    train = {"tokens": 2048, "batch_tokens": 256, "lr": [3e-3, 1e-2], "log_every": 4, "device": "cpu"}
    task = {
        "name": "recall",
        "task": {"name": "mqar", "params": {"num_kv_pairs": 2, "vocab_size": 16}, "n_train": 64, "n_val": 16},
        "models": ["attention@transformer"],
        "sizes": ["micro", "tiny"],
        "seq_lens": [16],
        "train": train,
    }
    text = {
        "name": "text",
        "data": {"source": str(small_corpus), "tokenizer": "bytes", "seq_len": 32},
        "models": ["attention@transformer", "ttt_linear@transformer"],
        "sizes": ["micro"],
        "train": {**train, "lr": 3e-3},
        "eval": {"position_buckets": 4, "max_val_sequences": 8},
    }
    paths = []
    for suite in (task, text):
        paths.append(tmp_path / f"{suite['name']}.yaml")
        paths[-1].write_text(yaml.safe_dump(suite))
        assert main(["run", str(paths[-1])]) == 0
    readme = tmp_path / "README.md"
    readme.write_text(README.format(name="recall") + README.format(name="text"))

    written = figures.refresh(Store(), paths, tmp_path / "docs" / "figures", readme)
    names = sorted(p.relative_to(tmp_path / "docs" / "figures").as_posix() for p in written)
    assert names == [
        "recall/mqar-accuracy-vs-state-size.png",
        "text/perplexity-by-token-index-validation.png",
        "text/validation-perplexity-vs-training-flops.png",
    ]
    assert all(_png_size(p)[0] == 1200 for p in written)
    page = readme.read_text()
    assert "stale text" not in page and page.count("do not edit by hand") == 2
    assert "![mqar-accuracy-vs-state-size](docs/figures/recall/mqar-accuracy-vs-state-size.png)" in page
    assert "| attention@transformer | " in page and "micro: accuracy, median [min-max] (lr, state size)" in page
    assert "| ttt_linear@transformer | " in page and "micro ppl at tokens 0-7" in page and "tokens 24-31" in page
    runs = load_suite(paths[0]).cells()
    assert "4 cells, 1 seed(s) per point, wall time" in page and len(runs) == 4
    assert f"measured on cpu ({cpu_model()}, " in page and f"torch {torch.__version__}" in page
