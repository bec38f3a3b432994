"""FLOPs: every registered mixer's analytic count against torch's flop counter, and the estimates."""

from __future__ import annotations

import pytest
import torch

from harness.flops import training_flops
from models import ModelSpec, build
from models.registry import list_mixers

# A mixer's analytic count may leave out small terms (e.g. per-token scalars) but must scale
# like the real work: checked at two lengths, so a count that grows wrongly with T fails.
TOLERANCE = 0.05
SEQ_LENS = (64, 256)


def _available_mixers() -> list[str]:
    return [e.name for e in list_mixers() if e.available and e.origin == "builtin"]


@pytest.mark.parametrize("mixer", _available_mixers())
def test_every_mixer_analytic_flops_match_the_counter(mixer, count_flops):
    torch.manual_seed(0)
    model = build(ModelSpec.parse(f"{mixer}@transformer", "micro", 64))
    for seq_len in SEQ_LENS:
        with count_flops() as counter:
            model(torch.randint(0, 64, (1, seq_len)))
        counted, analytic = counter.get_total_flops(), model.flops(seq_len)
        assert analytic == pytest.approx(counted, rel=TOLERANCE), f"{mixer} at T={seq_len}: {analytic} vs {counted}"


def test_training_flops_and_the_classic_estimates():
    model = build(ModelSpec.parse("attention@transformer", "micro", 100))
    seq_len, tokens = 32, 3200
    m = training_flops(model, seq_len, tokens)
    assert m["flops/train"] == 3 * model.flops(seq_len) * 100
    assert m["flops/6nd"] == 6 * model.num_params() * tokens
    n_layers, d_model = len(model.blocks), model.embed.embedding_dim
    assert m["flops/6nd_attention"] - m["flops/6nd"] == 6 * n_layers * seq_len * d_model * tokens
