"""TTT-Linear / TTT-MLP: the forms agree, decode agrees, and the paper's two theorems hold.

Everything runs in float64 on tiny sizes. The mixers are built with their parameters pushed off
their initial values (ones, zeros, std 0.02), so that no term of the function is vanishingly small.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.ttt import fresh_state, scan_tokens, ttt_dual, ttt_primal
from mixbench_kernels.ttt.inner import forward_inputs, layer_norm, output_grads
from models import ModelSpec, build
from models.attention import Attention
from models.layers import apply_rotary, rotary_cos_sin
from models.registry import get_entry, mixer_defaults
from models.ttt import TTTMLP, TTTLinear, rotary_adjacent_pairs

F64 = torch.float64
MIXERS = {"linear": TTTLinear, "mlp": TTTMLP}
FORMS = {"dual": ttt_dual, "primal": ttt_primal}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are tiny: extra intra-op threads only add contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(kind: str, backbone: str = "transformer", d_model: int = 16, n_heads: int = 2, b: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    m = MIXERS[kind](d_model, n_heads=n_heads, backbone=backbone, mini_batch_size=b).to(F64)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(torch.randn_like(p) * (0.02 if name == "learnable_token_idx" else 0.3))
    return m


def run(m, x, backend: str, state=None):
    m.backend = backend
    return m(x, state)


def assert_close(a, b, tol=1e-10, what=""):
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), f"{what} max abs error {err:.3g}"


# -- the forms compute the same function ------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("b,seq", [(1, 5), (3, 7), (4, 8), (4, 11), (16, 20), (16, 9)])
def test_dual_matches_primal_forward_and_gradients(kind, b, seq):
    m = make(kind, b=b)
    x = torch.randn(2, seq, 16, dtype=F64, requires_grad=True)
    weight = torch.randn(2, seq, 16, dtype=F64)
    params = [p for _, p in m.named_parameters()]
    results = {}
    for backend in ("dual", "primal"):
        y, _ = run(m, x, backend)
        results[backend] = (y, torch.autograd.grad((y * weight).sum(), [x, *params]))
    (y_dual, g_dual), (y_primal, g_primal) = results["dual"], results["primal"]
    assert_close(y_dual, y_primal)
    for (name, _), gd, gp in zip([("x", None), *m.named_parameters()], g_dual, g_primal):
        assert gd.abs().max() > 0, f"no gradient reaches {name}"
        assert_close(gd, gp, what=name)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_inner_gradient_is_the_gradient_of_the_loss(kind):
    """The hand-written LayerNorm/GELU backward equals autograd on ``1/2 ||LN(f(k)) - (v - k)||^2``."""
    m = make(kind)
    params = fresh_state(m._initial_params(3)).params
    k, v = torch.randn(2, 3, 2, 5, 8, dtype=F64).unbind(0)
    w_ln, b_ln = m.ttt_norm_weight.reshape(2, 1, 8), m.ttt_norm_bias.reshape(2, 1, 8)
    xs, zs = forward_inputs(params, k)
    gs = output_grads(params, zs, v - k, w_ln, b_ln)
    leaves = [t.detach().requires_grad_() for layer in params for t in layer]
    _, zs_auto = forward_inputs(tuple(zip(leaves[::2], leaves[1::2])), k)
    loss = 0.5 * (layer_norm(zs_auto[-1], w_ln, b_ln) - (v - k)).pow(2).sum()
    auto = torch.autograd.grad(loss, leaves)
    for i, (x, g) in enumerate(zip(xs, gs)):
        assert_close(x.transpose(-1, -2) @ g, auto[2 * i])
        assert_close(g.sum(-2, keepdim=True), auto[2 * i + 1])


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_kernel_resumes_from_any_state(form):
    """Chunks of any length, starting and ending mid-mini-batch, chain into the whole sequence."""
    torch.manual_seed(1)
    m = make("mlp", b=4)
    q, k, v = torch.randn(3, 2, 2, 13, 8, dtype=F64).unbind(0)
    lr = torch.rand(2, 2, 13, dtype=F64) * 0.3
    ln = dict(ln_weight=m.ttt_norm_weight.reshape(2, 1, 8), ln_bias=m.ttt_norm_bias.reshape(2, 1, 8))
    opts = dict(token_scale=m.token_scale(), **ln)
    start = fresh_state(m._initial_params(2))
    whole, end_whole = ttt_dual(q, k, v, lr, start, **opts)
    parts, state = [], start
    for a, e in [(0, 2), (2, 3), (3, 9), (9, 13)]:
        y, state = FORMS[form](q[:, :, a:e], k[:, :, a:e], v[:, :, a:e], lr[:, :, a:e], state, **opts)
        parts.append(y)
    assert_close(torch.cat(parts, 2), whole)
    assert state.pos == end_whole.pos == 1
    for (w, bias), (w2, bias2) in zip(state.params + state.grads, end_whole.params + end_whole.grads):
        assert_close(w, w2)
        assert_close(bias, bias2)


# -- decode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["dual", "primal"])
@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_prefill_then_step_matches_forward(kind, backbone, backend):
    m = make(kind, backbone)
    x = torch.randn(2, 14, 16, dtype=F64)
    full, _ = run(m, x, "dual")
    m.backend = backend
    with torch.no_grad():
        y, state = m(x[:, :6], m.init_state(2, x.device, F64))  # ends mid-mini-batch (b = 4)
        outs = [y]
        for t in range(6, 14):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    assert_close(torch.cat(outs, 1), full)
    assert state["ttt"].pos == 14 % 4


@pytest.mark.parametrize("arch", ["ttt_linear@mamba", "ttt_mlp@transformer"])
def test_lm_prefill_then_step_matches_forward(arch):
    torch.manual_seed(0)
    lm = build(ModelSpec.parse(arch, "tiny", 50)).double()  # mini-batch 16 by default
    ids = torch.randint(0, 50, (2, 37))
    full = lm(ids)
    logits, state = lm.prefill(ids[:, :19])
    outs = [logits]
    for t in range(19, 37):
        step_logits, state = lm.step(ids[:, t], state)
        outs.append(step_logits.unsqueeze(1))
    assert_close(torch.cat(outs, 1), full)


def test_state_size_counts_the_decode_state():
    for kind in MIXERS:
        for backbone in ("transformer", "mamba"):
            m = make(kind, backbone)
            _, state = m(torch.randn(1, 6, 16, dtype=F64), m.init_state(1, torch.device("cpu"), F64))
            tensors = [t for layer in state["ttt"].params + state["ttt"].grads for t in layer]
            tensors += [state[c] for c in ("conv_q", "conv_k") if c in state]
            assert sum(t.numel() for t in tensors) == m.state_size(6)


# -- the paper's theorems --------------------------------------------------------------------


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_theorem1_linear_inner_model_is_linear_attention(form):
    """W0 = 0, f(x) = x W (no bias, LayerNorm or residual), fixed eta, one mini-batch of length T."""
    torch.manual_seed(2)
    batch, heads, seq, dim, eta = 2, 3, 9, 5, 0.37
    q, k, v = torch.randn(3, batch, heads, seq, dim, dtype=F64).unbind(0)
    state = fresh_state(((torch.zeros(batch, heads, dim, dim, dtype=F64), None),))
    lr = torch.full((batch, heads, seq), eta, dtype=F64)
    z, _ = FORMS[form](q, k, v, lr, state, token_scale=torch.ones(seq, dtype=F64), residual=False)
    linear_attention = eta * torch.tril(q @ k.transpose(-1, -2)) @ v
    assert_close(z, linear_attention)


class NadarayaWatson:
    """Theorem 2's inner learner: training stores (k, v); predicting is the kernel-weighted mean of
    the stored values, with kernel ``exp(k . q / sqrt(d))`` (the 1/sqrt(d) is part of theta_Q)."""

    def step(self, state, q, k, v, lr):
        keys, values = torch.cat([state[0], k], 2), torch.cat([state[1], v], 2)
        weights = torch.exp(q @ keys.transpose(-1, -2) / q.shape[-1] ** 0.5)
        return (weights @ values) / weights.sum(-1, keepdim=True), (keys, values)


def test_theorem2_nadaraya_watson_inner_learner_is_self_attention():
    torch.manual_seed(3)
    att = Attention(16, n_heads=2, backend="sdpa").to(F64)
    x = torch.randn(2, 10, 16, dtype=F64)
    q, k, v = att._heads(x, 0)
    empty = (k[:, :, :0], v[:, :, :0])
    z, _ = scan_tokens(NadarayaWatson(), empty, q, k, v)
    assert_close(att._merge(z), att(x)[0])
    assert_close(z, F.scaled_dot_product_attention(q, k, v, is_causal=True))


# -- details of the outer layer ----------------------------------------------------------------


def test_rotary_on_adjacent_pairs_matches_the_official_layout():
    """Official code: move dims (2i, 2i+1) to (i, i + d/2), rotate-half RoPE, move them back."""
    x = torch.randn(2, 3, 10, 8, dtype=F64)
    cos, sin = rotary_cos_sin(torch.arange(10) % 4, 8, dtype=F64)
    to_halves = x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)
    official = apply_rotary(to_halves, cos, sin).unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)
    assert_close(rotary_adjacent_pairs(x, cos, sin), official)


def test_learning_rate_and_token_scale():
    m = make("linear", b=4)
    x = torch.randn(2, 5, 16, dtype=F64)
    gate = torch.sigmoid(torch.einsum("btc,hc->bht", x, m.lr_weight) + m.lr_bias[:, None])
    assert_close(m.inner_lr(x), m.base_lr * gate / m.head_dim)
    with torch.no_grad():
        m.learnable_token_idx.copy_(torch.tensor([0.5, 0.0, -0.5, -0.1], dtype=F64))
    assert_close(m.token_scale(), torch.tensor([1.5, 0.5, 0.0, 0.15], dtype=F64))  # clamped at 0


# -- autograd, FLOPs, errors -----------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_gradcheck_tiny_ttt_linear(backbone):
    m = make("linear", backbone, d_model=8, n_heads=2, b=3)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    x = torch.randn(1, 5, 8, dtype=F64, requires_grad=True)

    def f(x, *ps):
        return functional_call(m, dict(zip(names, ps)), (x,))[0]

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_analytic_flops_match_flop_counter(kind, backbone):
    """Exact, at a multiple of b and at a length ending in a partial mini-batch."""
    m = MIXERS[kind](64, n_heads=4, backbone=backbone, mini_batch_size=8, backend="dual")
    for seq in (32, 45):
        with FlopCounterMode(display=False) as counter:
            m(torch.randn(1, seq, 64))
        counted = counter.get_total_flops()
        assert m.flops(seq) == counted, (seq, m.flops(seq), counted)


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        TTTLinear(16, n_heads=2, backend="cuda-magic")
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        TTTMLP(10, n_heads=4)
    with pytest.raises(ValueError, match="backbone"):
        TTTLinear(16, n_heads=2, backbone="mamba_native")
    m = TTTLinear(16, n_heads=2, backend="triton")
    with pytest.raises(RuntimeError, match="backend 'triton' cannot run"):
        m(torch.randn(1, 4, 16))
    assert TTTLinear(16, n_heads=2).select_backend(torch.device("cpu")) == "dual"


def test_registered_with_defaults_beside_the_mixer():
    assert mixer_defaults(get_entry("ttt_linear").cls)["base_lr"] == 1.0
    assert mixer_defaults(get_entry("ttt_mlp").cls)["base_lr"] == 0.1
    assert mixer_defaults(get_entry("ttt_mlp").cls)["mini_batch_size"] == 16
    for arch in ("ttt_linear@transformer", "ttt_linear@mamba", "ttt_mlp@transformer", "ttt_mlp@mamba"):
        lm = build(ModelSpec.parse(arch, "tiny", 50, mixer_overrides={"mini_batch_size": 8}))
        mixer = lm.blocks[0].mixer
        assert mixer.mini_batch_size == 8 and mixer.share_qk == mixer.use_gate == arch.endswith("mamba")
        assert lm(torch.randint(0, 50, (1, 12))).shape == (1, 12, 50)
