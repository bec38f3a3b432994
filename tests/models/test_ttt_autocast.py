"""TTT under bf16 autocast: the inner loop and its state stay float32."""

from __future__ import annotations

import pytest
import torch

from models import ModelSpec, build
from models.ttt import TTTMLP, TTTLinear

CPU = torch.device("cpu")


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_inner_state_stays_float32_under_bf16_autocast(cls, monkeypatch):
    torch.manual_seed(0)
    mixer = cls(32, n_heads=2, mini_batch_size=4)
    x = torch.randn(2, 10, 32)
    seen = []
    real = torch.baddbmm

    def spy(*args, **kwargs):  # every matmul of the dual form's inner loop
        seen.append({a.dtype for a in args if isinstance(a, torch.Tensor)})
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "baddbmm", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = mixer(x, mixer.init_state(2, CPU, torch.float32))
        y_step, state = mixer.step(x[:, 0], state)
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)
    inner = state["ttt"]
    for w, b in (*inner.params, *inner.grads):
        assert w.dtype == torch.float32 and (b is None or b.dtype == torch.float32)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()  # autocast's dtype outside the loop
    # The outer projections are bf16, so the outputs differ from float32 by about bf16's precision.
    y_ref, _ = mixer(x, mixer.init_state(2, CPU, torch.float32))
    assert (y.float() - y_ref).abs().max() <= 0.05 * y_ref.abs().max()


def test_a_bf16_model_keeps_a_float32_inner_state():
    mixer = TTTLinear(32, n_heads=2, mini_batch_size=4).to(torch.bfloat16)
    state = mixer.init_state(1, CPU, torch.bfloat16)
    assert all(w.dtype == torch.float32 for w, _ in state["ttt"].params)
    y, state = mixer(torch.randn(1, 6, 32, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and all(
        w.dtype == torch.float32 for w, _ in state["ttt"].params + state["ttt"].grads
    )


def test_ttt_inner_loop_stays_float32_under_bf16_autocast(monkeypatch):
    import mixbench_kernels.ttt as ttt  # the table the layer dispatches through (mixbench_kernels.ttt.ttt)

    model = build(ModelSpec.parse("ttt_linear@transformer", "micro", 64))
    seen = []
    form = ttt.FORMS[model.blocks[0].mixer.select_backend(torch.device("cpu"))]

    def spy(q, k, v, eta, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype, eta.dtype, torch.is_autocast_enabled("cpu")))
        return form(q, k, v, eta, *args, **kwargs)

    monkeypatch.setitem(ttt.FORMS, model.blocks[0].mixer.select_backend(torch.device("cpu")), spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randint(0, 64, (2, 16)))
    assert logits.dtype == torch.bfloat16, "the rest of the model does run in bf16"
    assert seen and all(s == (torch.float32,) * 4 + (False,) for s in seen)
