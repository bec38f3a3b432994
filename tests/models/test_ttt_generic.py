"""The generic ``ttt`` mixer: equal to the built-ins, to a token-at-a-time loop, and to itself in decode.

Float64, tiny sizes; parameters are pushed off their initial values so no term is vanishingly small.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.ttt.generic import dense_stack, ttt_generic
from mixbench_kernels.ttt.generic_reference import ttt_generic_primal
from mixbench_kernels.ttt.optim import InnerOptimizer, fresh_generic_state
from models.inner_models import GatedMLP
from models.ttt import TTTMLP, TTTLinear
from models.ttt_generic import TTT, module_inner_fn

F64 = torch.float64
CUSTOM = "models.inner_models:GatedMLP"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.02 if name == "learnable_token_idx" else 0.3))
    return m


def assert_close(a, b, tol=1e-10, what=""):
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what} max abs error {err:.3g}"


@pytest.mark.parametrize("backend", ["dual", "generic"])
@pytest.mark.parametrize("kind,builtin,backbone", [("linear", TTTLinear, "mamba"), ("mlp", TTTMLP, "transformer")])
def test_generic_with_gd_equals_the_builtin_forward_and_gradients(kind, builtin, backbone, backend):
    torch.manual_seed(0)
    ref = perturb(builtin(16, n_heads=2, backbone=backbone, mini_batch_size=4).to(F64))
    gen = TTT(16, n_heads=2, backbone=backbone, inner=kind, mini_batch_size=4, backend=backend).to(F64)
    gen.load_state_dict(ref.state_dict())  # same parameter names: the same weights
    x = torch.randn(2, 11, 16, dtype=F64, requires_grad=True)
    w = torch.randn(2, 11, 16, dtype=F64)
    grads = {}
    for name, m in (("builtin", ref), ("generic", gen)):
        y, _ = m(x)
        grads[name] = (y, *torch.autograd.grad((y * w).sum(), [x, *m.parameters()]))
    names = ["y", "x", *(n for n, _ in ref.named_parameters())]
    for name, a, b in zip(names, grads["generic"], grads["builtin"]):
        assert b.abs().max() > 0, f"nothing reaches {name}"
        assert_close(a, b, what=name)


def _inner(kind: str, batch: int, heads: int, dim: int):
    """Initial parameters ``(batch, heads, ...)`` and the ``InnerFn`` of a linear, MLP or custom inner model."""
    torch.manual_seed(5)
    if kind == "custom":
        stacked, fn = module_inner_fn([GatedMLP(dim).to(F64) for _ in range(heads)])
        params = tuple(p.detach() * 20 for p in stacked.values())  # std 0.4: well off zero
    else:
        widths = (dim, 4 * dim, dim) if kind == "mlp" else (dim, dim)
        layers = [(torch.randn(heads, a, b) * 0.3, torch.randn(heads, 1, b) * 0.1) for a, b in zip(widths, widths[1:])]
        params = tuple(t for layer in layers for t in layer)
        fn = dense_stack(True)
    return tuple(p.to(F64).expand(batch, *p.shape).clone().requires_grad_() for p in params), fn


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
@pytest.mark.parametrize("kind", ["linear", "mlp", "custom"])
def test_fast_form_equals_the_token_loop_forward_and_backward(kind, optimizer):
    """Length 10 with b = 4: two whole mini-batches, then one ending mid-way; then 3 more tokens resume it."""
    torch.manual_seed(1)
    params, fn = _inner(kind, 2, 2, 6)
    q, k, v = torch.randn(3, 2, 2, 13, 6, dtype=F64, requires_grad=True).unbind(0)
    lr = (torch.rand(2, 2, 13, dtype=F64) * 0.3).requires_grad_()
    ln = dict(ln_weight=1 + 0.3 * torch.randn(2, 1, 6, dtype=F64), ln_bias=0.3 * torch.randn(2, 1, 6, dtype=F64))
    opt = InnerOptimizer(optimizer, beta1=0.8, beta2=0.9, lr=0.05)
    kw = dict(inner_fn=fn, optimizer=opt, token_scale=torch.tensor([1.1, 0.5, 0.3, 0.2], dtype=F64), **ln)
    out = {}
    for name, form in (("fast", ttt_generic), ("loop", ttt_generic_primal)):
        state = fresh_generic_state(params, opt)
        y1, state = form(*(t[:, :, :10] for t in (q, k, v, lr)), state, **kw)
        y2, state = form(*(t[:, :, 10:] for t in (q, k, v, lr)), state, **kw)
        y = torch.cat([y1, y2], 2)
        out[name] = (y, state, torch.autograd.grad(y.square().sum(), [q, k, v, lr, *params]))
    (y, state, grads), (y_ref, state_ref, grads_ref) = out["fast"], out["loop"]
    assert_close(y, y_ref, what="output")
    assert (state.pos, state.steps) == (state_ref.pos, state_ref.steps) == (1, 3)
    for a, b in zip(state.params + state.grads, state_ref.params + state_ref.grads):
        assert_close(a, b, what="state")
    for a, b in zip([t for m in state.moments for t in m], [t for m in state_ref.moments for t in m]):
        assert b.abs().max() > 0 and a.shape == b.shape
        assert_close(a, b, what="moments")
    for name, a, b in zip(["q", "k", "v", "lr", *(f"param{i}" for i in range(len(params)))], grads, grads_ref):
        assert b.abs().max() > 0, f"nothing reaches {name}"
        assert_close(a, b, what=f"d/d{name}")


def test_optimizer_rules_by_hand():
    u, m0, v0 = torch.tensor([[0.5, -2.0], [0.1, 0.2], [0.3, 0.0]], dtype=F64).unbind(0)
    d, (m,) = InnerOptimizer("momentum", beta1=0.9).step(u, (m0,), 1)
    assert_close(d, 0.9 * m0 + u)
    assert_close(m, d)
    d, (m, v) = InnerOptimizer("adam", beta1=0.9, beta2=0.99, lr=0.1, eps=1e-3).step(u, (m0, v0), 3)
    m_hat, v_hat = (0.9 * m0 + 0.1 * u) / (1 - 0.9**3), (0.99 * v0 + 0.01 * u * u) / (1 - 0.99**3)
    assert_close(d, 0.1 * m_hat / torch.sqrt(v_hat + 1e-6))
    assert_close(InnerOptimizer("momentum", beta1=0.0).step(u, (m0,), 1)[0], u)  # momentum 0 is gd


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
@pytest.mark.parametrize("inner", ["linear", "mlp", CUSTOM])
def test_prefill_then_step_matches_forward(inner, optimizer):
    torch.manual_seed(2)
    backbone = "mamba" if inner == "linear" else "transformer"
    m = TTT(16, n_heads=2, backbone=backbone, inner=inner, inner_optimizer=optimizer, mini_batch_size=4)
    m = perturb(m.to(F64))
    x = torch.randn(2, 11, 16, dtype=F64)
    full, _ = m(x)
    with torch.no_grad():
        y, state = m(x[:, :6], m.init_state(2, x.device, F64))  # ends mid-mini-batch
        outs = [y]
        for t in range(6, 11):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    assert_close(torch.cat(outs, 1), full)
    tensors = [t for part in state["ttt"] if isinstance(part, tuple) for t in _leaves(part)]
    tensors += [state[c] for c in ("conv_q", "conv_k") if c in state]
    assert sum(t[0].numel() for t in tensors) == m.state_size(11)


def _leaves(tree):
    for t in tree:
        if isinstance(t, tuple):
            yield from _leaves(t)
        elif t is not None:
            yield t


@pytest.mark.parametrize("inner,optimizer", [("mlp", "adam"), (CUSTOM, "momentum"), ("linear", "gd")])
def test_flops_match_the_flop_counter(inner, optimizer):
    m = TTT(32, n_heads=2, inner=inner, inner_optimizer=optimizer, mini_batch_size=8, backend="auto")
    for seq in (16, 21):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.randn(1, seq, 32))
        assert m.flops(seq) == counter.get_total_flops(), (inner, optimizer, seq)


def test_bad_settings_raise_one_clear_line():
    with pytest.raises(ValueError, match="not 'linear', 'mlp' or a dotted path"):
        TTT(16, n_heads=2, inner="transformer")
    with pytest.raises(ValueError, match="cannot load inner model 'no_such_pkg:Thing'"):
        TTT(16, n_heads=2, inner="no_such_pkg:Thing")
    with pytest.raises(ValueError, match="is not an nn.Module subclass"):
        TTT(16, n_heads=2, inner="torch:tensor")
    with pytest.raises(ValueError, match=r"maps \(2, 8\) to \(2, 16\)"):
        TTT(16, n_heads=2, inner="torch.nn:Linear", inner_kwargs={"out_features": 16})
    with pytest.raises(ValueError, match=r"cannot build inner model .* as GatedMLP\(head_dim, width=3\)"):
        TTT(16, n_heads=2, inner=CUSTOM, inner_kwargs={"width": 3})
    with pytest.raises(ValueError, match="inner_kwargs applies to a custom inner model, not to 'mlp'"):
        TTT(16, n_heads=2, inner="mlp", inner_kwargs={"expand": 2})
    with pytest.raises(ValueError, match="has buffers"):
        TTT(16, n_heads=2, inner="torch.nn:BatchNorm1d")
    with pytest.raises(ValueError, match="inner_optimizer 'sgd' is not one of gd, momentum, adam"):
        TTT(16, n_heads=2, inner_optimizer="sgd")
    with pytest.raises(ValueError, match="backend 'dual' needs inner linear|mlp with inner_optimizer gd"):
        TTT(16, n_heads=2, inner_optimizer="adam", backend="dual")
    with pytest.raises(ValueError, match="inner_bias applies to the built-in"):
        TTT(16, n_heads=2, inner=CUSTOM, inner_bias=False)
    assert TTT(16, n_heads=2).select_backend(torch.device("cpu")) == "dual"
    assert TTT(16, n_heads=2, inner_optimizer="momentum").select_backend(torch.device("cpu")) == "generic"
