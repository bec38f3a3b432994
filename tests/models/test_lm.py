"""The causal LM: parameter accounting, tied head, FLOPs and bad specs."""

from __future__ import annotations

import pytest
import torch

from models import ModelSpec, build
from models.backbones import SIZES


def test_parse_spec_and_errors():
    spec = ModelSpec.parse("attention@transformer", "tiny", 100)
    assert (spec.mixer, spec.backbone, spec.arch) == ("attention", "transformer", "attention@transformer")
    assert ModelSpec.parse("pkg.mod:Cls@mamba", "tiny", 10).mixer == "pkg.mod:Cls"
    with pytest.raises(ValueError, match="mixer@backbone"):
        ModelSpec.parse("attention", "tiny", 100)
    with pytest.raises(KeyError, match="unknown size 'huge'"):
        build(ModelSpec.parse("attention@transformer", "huge", 100))
    with pytest.raises(KeyError, match="unknown backbone 'rwkv'"):
        build(ModelSpec.parse("attention@rwkv", "tiny", 100))


def test_parameter_counts_tied_and_untied():
    tied = build(ModelSpec.parse("attention@transformer", "tiny", 1000))
    untied = build(ModelSpec.parse("attention@transformer", "tiny", 1000, tie_embeddings=False))
    d = SIZES["tiny"].d_model
    assert tied.head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 1000 * d
    assert tied.num_params(non_embedding=True) == untied.num_params(non_embedding=True)
    assert tied.num_params() - tied.num_params(non_embedding=True) == 1000 * d


def test_paper_sizes_have_the_expected_scale():
    """The Transformer++ presets land near their names (counted on the meta device: no memory)."""
    for size, expected in [("125m", 125e6), ("350m", 350e6), ("760m", 760e6), ("1.3b", 1.3e9)]:
        with torch.device("meta"):
            n = build(ModelSpec.parse("attention@transformer", size, 32000)).num_params()
        assert 0.8 * expected < n < 1.2 * expected, (size, n)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_model_flops_match_the_flop_counter(backbone, count_flops):
    model = build(ModelSpec.parse(f"attention@{backbone}", "micro", 300))
    with count_flops() as counter:
        model(torch.randint(0, 300, (1, 40)))
    assert model.flops(40) == counter.get_total_flops()
