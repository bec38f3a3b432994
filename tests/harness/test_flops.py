"""FLOPs: every registered mixer's analytic count equals torch's flop counter, and the stored
estimates equal numbers worked out by hand (the derivations are in the comments).

The stored ``flops/train`` of a real run is checked in ``test_stored_numbers.py``.
"""

from __future__ import annotations

import pytest
import torch

from harness.measure.flops import training_flops
from models import ModelSpec, build
from models.backbones import BACKBONES
from models.registry import MixerEntry, list_mixers

# Mixers whose analytic count may differ from the counter: name -> (relative tolerance, why).
# Empty: every built-in count is exact. A dropped term (the LM head is 2-6% of a small model)
# must fail, so an entry here needs a reason a reader accepts.
ALLOWED_TO_DIFFER: dict[str, tuple[float, str]] = {}

# 45 ends in a partial chunk / TTT mini-batch; two lengths catch a count that grows wrongly with T.
SEQ_LENS = (45, 64)


def _builtin_mixers() -> list[MixerEntry]:
    return [e for e in list_mixers() if e.origin == "builtin"]


@pytest.mark.parametrize("entry", _builtin_mixers(), ids=lambda e: e.name)
def test_every_mixer_analytic_flops_equal_the_counter(entry, count_flops):
    if not entry.available:
        pytest.skip(f"{entry.name} cannot run on this machine: {entry.unavailable_reason()}")
    rel, _why = ALLOWED_TO_DIFFER.get(entry.name, (0.0, ""))
    checked = []
    for backbone in BACKBONES:
        torch.manual_seed(0)
        try:
            model = build(ModelSpec.parse(f"{entry.name}@{backbone}", "micro", 64))
        except ValueError:  # a mixer may refuse a backbone (TTT has no mamba_native form)
            continue
        for seq_len in SEQ_LENS:
            with count_flops() as counter:
                model(torch.randint(0, 64, (1, seq_len)))
            counted, analytic = counter.get_total_flops(), model.flops(seq_len)
            assert abs(analytic - counted) <= rel * counted, (
                f"{entry.name}@{backbone} T={seq_len}: {analytic} vs {counted}"
            )
        checked.append(backbone)
    assert "transformer" in checked, f"{entry.name} does not build on the transformer backbone"


# Micro size: d_model 32, 2 layers, 2 heads, SwiGLU hidden 96; vocabulary 100, tied head.
# Training on D = 3200 tokens in sequences of T = 32 (100 sequences).
T, D = 32, 3200


def test_attention_model_estimates_equal_hand_computed_numbers():
    model = build(ModelSpec.parse("attention@transformer", "micro", 100))
    # Parameters: embedding 100*32 = 3200 (the head is tied to it) + final norm 32
    #   per layer: 2 norms 64 + qkv 96*32 = 3072 + out 32*32 = 1024 + SwiGLU 3*96*32 = 9216 -> 13376
    #   total 3232 + 2*13376 = 29984
    assert model.num_params() == 29984
    # Forward FLOPs per sequence (2 per multiply-add):
    #   per layer: qkv 2*T*32*96 = 196608, QK^T and AV 2 * 2*T*T*32 = 131072 (full T x T),
    #   out 2*T*32*32 = 65536, SwiGLU 3 * 2*T*32*96 = 589824 -> 983040; two layers 1966080
    #   LM head 2*T*32*100 = 204800 -> 2170880 per sequence
    m = training_flops(model, T, D)
    assert m["flops/forward_per_sequence"] == 2170880
    assert m["flops/train"] == 3 * 2170880 * 100 == 651264000
    assert m["flops/6nd"] == 6 * 29984 * 3200 == 575692800
    # attention term 6 * n_attention_layers * T * d_model * D = 6 * 2 * 32 * 32 * 3200 = 39321600
    assert m["flops/6nd_attention"] == 575692800 + 39321600


def test_ttt_model_estimates_equal_hand_computed_numbers():
    model = build(ModelSpec.parse("ttt_linear@transformer", "micro", 100))
    # Parameters: embedding 3200 + final norm 32
    #   per layer: 2 norms 64 + SwiGLU 9216 + TTT-Linear: q, k, v, o projections 4*32*32 = 4096,
    #   learning-rate gate 2*32 + 2 = 66, learnable token index 16 (mini-batch), inner LayerNorm
    #   2*2*16 = 64, W1 2*16*16 = 512, b1 2*16 = 32, post norm 2*32 = 64 -> 14130
    #   total 3232 + 2*14130 = 31492
    assert model.num_params() == 31492
    m = training_flops(model, T, D)
    assert m["flops/6nd"] == 6 * 31492 * 3200 == 604646400
    assert m["flops/6nd_attention"] == m["flops/6nd"], "TTT does not attend over the context: no attention term"
    assert m["flops/train"] == 3 * model.flops(T) * 100  # model.flops is checked against the counter above
