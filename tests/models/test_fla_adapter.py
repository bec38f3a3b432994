"""fla's layers as mixers: listed with their reason off a GPU, runnable and decodable on one."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from harness.cli import main
from models.fla_adapter import FLA_LAYERS
from models.registry import build_mixer, get_entry, list_mixers

needs_fla = pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla is not installed")


@pytest.fixture
def fla_installed() -> None:
    """The listing runs without a GPU, so CI installs fla and sets ``MIXBENCH_REQUIRE_FLA=1``:
    there a missing fla fails this test instead of skipping it."""
    if importlib.util.find_spec("fla") is None:
        if os.environ.get("MIXBENCH_REQUIRE_FLA"):
            pytest.fail("MIXBENCH_REQUIRE_FLA is set but fla (flash-linear-attention) is not installed")
        pytest.skip("fla is not installed")


def test_every_fla_layer_is_listed_with_its_reason(fla_installed, capsys):
    entries = {e.name: e for e in list_mixers()}
    for name in FLA_LAYERS:
        entry = entries[name]
        assert entry.origin == "fla" and entry.cls is not None
        if not torch.cuda.is_available():
            assert not entry.available and "needs a CUDA GPU" in entry.unavailable_reason()
    assert main(["mixers"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FLA_LAYERS)


@needs_fla
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("name", list(FLA_LAYERS))
def test_fla_layer_runs_and_prefill_then_step_matches_forward_on_gpu(name):
    torch.manual_seed(0)
    kwargs = {"d_model": 128, "layer_idx": 0, "n_heads": 2, "n_layers": 2, "backbone": "transformer"}
    m = build_mixer(name, kwargs, {}).cuda()
    x = torch.randn(2, 40, 128, device="cuda")
    with torch.no_grad():
        full, _ = m(x)
        y, state = m(x[:, :24], m.init_state(2, x.device, x.dtype))
        outs = [y]
        for t in range(24, 40):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    assert full.shape == x.shape and torch.isfinite(full).all()
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=2e-2, atol=2e-2)
    assert m.flops(40) > 0 and m.state_size(40) > 0
    assert get_entry(name).available
