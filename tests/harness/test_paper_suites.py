"""The paper's suites dry-run offline: the grid, parameter counts and token budgets they promise.

Nothing may touch the network (the tokenizer and the data are Hub ids or absent local folders),
so sockets are refused for the test's duration.
"""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch

from harness import runner as runner_module
from harness.config.suite import load_suite
from harness.runner import SuiteRunner
from harness.store.database import Store

SUITES = Path(__file__).resolve().parents[2] / "suites"
MODELS = [
    "ttt_linear@mamba",
    "ttt_mlp@mamba",
    "ttt_linear@transformer",
    "ttt_mlp@transformer",
    "mamba@mamba_native",
    "attention@transformer",
]
# The TTT paper's configurations: d_model, Transformer layers, SwiGLU width; Llama-2 vocabulary.
SIZES = {"125m": (768, 12, 2048), "350m": (1024, 24, 2736), "760m": (1536, 24, 4096), "1.3b": (2048, 24, 5504)}
VOCAB, BATCH_TOKENS = 32000, 524288


def attention_params(d: int, layers: int, mlp: int) -> int:
    """Tied embedding + final norm; per layer two norms, QKV, output, SwiGLU (gate, up, down)."""
    return VOCAB * d + d + layers * (2 * d + 3 * d * d + d * d + 3 * d * mlp)


def mamba_params(d: int, layers: int, _mlp: int) -> int:
    """mamba-ssm's block (expand 2, d_state 16, d_conv 4, dt_rank ceil(d/16)) plus its norm, twice the layers."""
    inner, rank, state = 2 * d, math.ceil(d / 16), 16
    block = (
        d * 2 * inner  # in_proj (x and gate)
        + inner * 4
        + inner  # depthwise conv weight and bias
        + inner * (rank + 2 * state)  # x_proj to dt, B, C
        + rank * inner
        + inner  # dt_proj weight and bias
        + inner * state
        + inner  # A_log and D
        + inner * d
    )  # out_proj
    return VOCAB * d + d + 2 * layers * (d + block)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


_BUILT: dict[str, torch.nn.Module] = {}


@pytest.fixture
def build_once(monkeypatch):
    """The three suites share their 24 models (only the context differs): build each once.

    Building a 1.3b model on the meta device still costs a second on a loaded CPU, mostly in
    initialisers; the dry run's own code runs in full for every suite.
    """
    real_build = runner_module.build

    def build(spec):
        key = repr(spec)
        if key not in _BUILT:
            _BUILT[key] = real_build(spec)
        return _BUILT[key]

    monkeypatch.setattr(runner_module, "build", build)


@pytest.mark.parametrize("name, seq_len", [("pile2k", 2048), ("pile8k", 8192), ("books32k", 32768)])
def test_paper_suite_dry_run_offline(name, seq_len, no_network, build_once, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    table = SuiteRunner(
        load_suite(SUITES / f"{name}.yaml"), Store(tmp_path / "m.db"), cache_dir=tmp_path / "cache"
    ).dry_run()
    columns = {c.header: list(c._cells) for c in table.columns}
    rows = [dict(zip(columns, cells)) for cells in zip(*columns.values())]
    number = lambda text: int(text.replace(",", ""))  # noqa: E731

    assert sorted((r["model"], r["size"], r["seq"]) for r in rows) == sorted(
        (m, s, str(seq_len)) for m in MODELS for s in SIZES
    )
    params = {(r["model"], r["size"]): number(r["params"]) for r in rows}
    for size, shape in SIZES.items():
        assert params[("attention@transformer", size)] == attention_params(*shape), size
        assert params[("mamba@mamba_native", size)] == mamba_params(*shape), size
        for model in MODELS:  # matched by parameter count: every architecture within 6% of the Transformer
            assert abs(params[(model, size)] / params[("attention@transformer", size)] - 1) < 0.06, (model, size)
    for r in rows:
        n = number(r["params"])
        # Chinchilla: 20 tokens per parameter, rounded up to whole 0.5M-token batches
        assert number(r["tokens"]) == math.ceil(20 * n / BATCH_TOKENS) * BATCH_TOKENS, (r["model"], r["size"])
        assert r["status"] == "new"
    assert params[("attention@transformer", "125m")] == 109_529_856  # 24.6M embedding + 12 x 7.08M
    assert not (tmp_path / "cache").exists(), "a dry run reads no data"
