"""``linear_attention`` and ``deltanet`` as mixers, and how TTT contains them.

Theorem 1 of the TTT paper, through the generic ``ttt`` mixer: a linear inner model without
LayerNorm, residual or bias, from ``W_0 = 0``, trained by batch gradient descent (one mini-batch
covering the sequence, position scale 1) is linear attention. At mini-batch 1 (online gradient
descent) the same inner learner is the delta rule.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.delta_rule import delta_rule_chunked
from mixbench_kernels.ttt import fresh_state, ttt_dual
from mixbench_kernels.ttt.generic import dense_stack, ttt_generic
from mixbench_kernels.ttt.optim import InnerOptimizer, fresh_generic_state
from models.deltanet import DeltaNet
from models.linear_attention import LinearAttention
from models.ttt_generic import TTT

F64 = torch.float64
MIXERS = {"linear_attention": LinearAttention, "deltanet": DeltaNet}


def make(name: str, chunk_size: int = 4, backend: str = "auto"):
    torch.manual_seed(0)
    m = MIXERS[name](16, n_heads=2, chunk_size=chunk_size, backend=backend).to(F64)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


@pytest.mark.parametrize("name", list(MIXERS))
def test_chunked_backend_equals_the_reference_forward_and_backward(name):
    m = make(name)
    x = torch.randn(2, 11, 16, dtype=F64, requires_grad=True)
    out = {}
    for backend in ("chunked", "reference"):
        m.backend = backend
        y, _ = m(x)
        out[backend] = (y, *torch.autograd.grad(y.square().sum(), [x, *m.parameters()]))
    for a, b in zip(out["chunked"], out["reference"]):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(MIXERS))
def test_prefill_then_step_matches_forward(name):
    m = make(name)
    x = torch.randn(2, 11, 16, dtype=F64)
    full, _ = m(x)
    with torch.no_grad():
        y, state = m(x[:, :5], m.init_state(2, x.device, F64))
        outs = [y]
        for t in range(5, 11):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-10, atol=1e-10)
    assert state["S"][0].numel() == m.state_size(11)


@pytest.mark.parametrize("name", list(MIXERS))
def test_analytic_flops_equal_the_flop_counter(name):
    m = MIXERS[name](32, n_heads=2, chunk_size=8)
    for seq in (16, 21):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.randn(1, seq, 32))
        assert m.flops(seq) == counter.get_total_flops(), (name, seq)


@pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla is not installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("name", list(MIXERS))
def test_fla_backend_equals_chunked_and_decodes_on_gpu(name):
    torch.manual_seed(0)
    m = MIXERS[name](64, n_heads=4, chunk_size=16).cuda()
    x = torch.randn(2, 50, 64, device="cuda")
    assert m.select_backend(x.device) == "fla"
    with torch.no_grad():
        fla_out, _ = m(x)
        m.backend = "chunked"
        chunked_out, _ = m(x)
        m.backend = "fla"
        y, state = m(x[:, :30], m.init_state(2, x.device, x.dtype))
        outs = [y]
        for t in range(30, 50):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    torch.testing.assert_close(fla_out, chunked_out, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(torch.cat(outs, 1), fla_out, rtol=2e-3, atol=2e-3)


def test_theorem1_batch_gd_ttt_linear_is_linear_attention(monkeypatch):
    torch.manual_seed(1)
    seq, d, heads = 13, 16, 2
    att = make("linear_attention", chunk_size=4)
    hd = d // heads
    ttt = TTT(
        d,
        n_heads=heads,
        inner="linear",
        inner_optimizer="gd",
        mini_batch_size=seq,
        base_lr=2 * hd * att.scale,
        inner_layer_norm=False,
        inner_residual=False,
        inner_bias=False,
        backend="generic",
    ).to(F64)
    missing, unexpected = ttt.load_state_dict(att.state_dict(), strict=False)  # Q, K, V, O and the post-norm
    assert not unexpected and set(missing) == {"lr_weight", "lr_bias", "learnable_token_idx", "W1"}
    with torch.no_grad():
        ttt.W1.zero_()  # W_0 = 0
        ttt.lr_weight.zero_()  # eta = base_lr * sigmoid(0) / head_dim = att.scale for every token
        ttt.learnable_token_idx.copy_(1 - 1 / torch.arange(1, seq + 1, dtype=F64))  # position scale 1: batch GD
    monkeypatch.setattr(ttt, "_rope", lambda q, k, pos: (q, k))  # the theorem has no positions
    x = torch.randn(2, seq, d, dtype=F64)
    torch.testing.assert_close(ttt(x)[0], att(x)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("form", ["generic", "dual"])
def test_online_gd_ttt_linear_is_the_delta_rule(form):
    """Mini-batch 1, no LayerNorm, residual or bias, learning rate beta_t: the delta rule, from any state."""
    torch.manual_seed(2)
    q, k, v = torch.randn(3, 2, 3, 9, 5, dtype=F64).unbind(0)
    beta, s0 = torch.rand(2, 3, 9, dtype=F64), torch.randn(2, 3, 5, 5, dtype=F64)
    opts = dict(token_scale=torch.ones(1, dtype=F64), residual=False)
    if form == "generic":
        opt = InnerOptimizer("gd")
        start = fresh_generic_state((s0,), opt)
        z, _ = ttt_generic(q, k, v, beta, start, inner_fn=dense_stack(False), optimizer=opt, **opts)
    else:
        z, _ = ttt_dual(q, k, v, beta, fresh_state(((s0, None),)), **opts)
    torch.testing.assert_close(z, delta_rule_chunked(q, k, v, beta, s0, chunk_size=4)[0], rtol=1e-10, atol=1e-10)


def test_bad_settings_raise_one_clear_line():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        LinearAttention(10, n_heads=4)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        DeltaNet(16, n_heads=2, chunk_size=0)
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        DeltaNet(16, n_heads=2, backend="triton")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'fla' cannot run"):
            LinearAttention(16, n_heads=2, backend="fla")(torch.randn(1, 3, 16))
    assert LinearAttention(16, n_heads=2).select_backend(torch.device("cpu")) == "chunked"
