"""The README's plugin example is real: it runs through a suite as written."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from harness.cli import main
from harness.store.database import Store

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_plugin_example_runs_from_a_suite_by_dotted_path(tmp_path, monkeypatch, small_corpus, capsys):
    source = re.search(r"```python\n# my_mixers.py\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(source.strip().splitlines()) <= 15
    (tmp_path / "my_mixers.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    suite = {
        "name": "plugin",
        "data": {"source": str(small_corpus), "tokenizer": "bytes", "seq_len": 32},
        "models": ["my_mixers:CausalMean@transformer"],
        "sizes": ["micro"],
        "train": {"tokens": 1024, "batch_tokens": 256, "lr": 1e-3},
        "overrides": {"my_mixers:CausalMean": {"scale": 0.5}},
    }
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "plugin.yaml")]) == 0
    [run] = Store().runs()
    assert run.status == "done" and run.config["model"]["mixer_settings"] == {"scale": 0.5}
    assert run.backend == "torch"
    # CausalMean has no flops(): the fallback counts one forward of the mixer with torch's counter.
    # Per layer (d_model 32, T 32): its projection 2*32*32*32 = 65536 (cumsum and the bias are not
    # matmul work) + SwiGLU 3*2*32*32*96 = 589824; two layers 1310720; head 2*32*32*257 = 526336.
    flops = {name: v for key, _step, name, v in Store().metric_values() if key == run.run_key}
    assert flops["flops/forward_per_sequence"] == 1310720 + 526336
    assert flops["flops/train"] == 3 * (1310720 + 526336) * 1024 // 32  # 1024 tokens = 32 sequences


def test_readme_names_the_test_command_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README.read_text() and "python -m pytest -q" in ci


def test_readme_inner_model_example_trains_through_a_suite(tmp_path, monkeypatch, small_corpus):
    source = re.search(r"```python\n# my_inner.py\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(source.strip().splitlines()) <= 15
    (tmp_path / "my_inner.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    settings = {"inner": "my_inner:LowRankGelu", "inner_kwargs": {"rank": 8}, "inner_optimizer": "adam"}
    suite = {
        "name": "inner",
        "data": {"source": str(small_corpus), "tokenizer": "bytes", "seq_len": 32},
        "models": ["ttt@transformer"],
        "sizes": ["micro"],
        "train": {"tokens": 512, "batch_tokens": 256, "lr": 1e-3},
        "overrides": {"ttt": {**settings, "mini_batch_size": 8}},
    }
    (tmp_path / "inner.yaml").write_text(yaml.safe_dump(suite))
    assert main(["run", str(tmp_path / "inner.yaml")]) == 0
    [run] = Store().runs()
    assert run.status == "done" and run.backend == "generic"
    assert {k: run.config["model"]["mixer_settings"][k] for k in settings} == settings
