"""TTT-Linear against an outside reference: fla's ``chunk_ttt_linear_ref`` (``fla/ops/ttt/naive.py``).

Every TTT form in ``mixbench_kernels.ttt`` shares ``reconstruction_target`` and
``finish_output``, and the Triton kernels are held to ``ttt_dual``; fla's plain PyTorch
reference was written apart from them, so it can catch a mistake they all share.

How the two are put side by side:
- layouts: ours ``(batch, heads, T, d)``, fla's ``(batch, T, heads, d)``; its LayerNorm
  weight and bias ``(heads, d)``, ours ``(heads, 1, d)``; it scales ``q`` in place, so it gets
  ``scale=1`` and a copy;
- learning rates: ours is ``token_scale[r] * lr[j]`` (query position r, key j), fla's is one
  rate per token ``eta[r]``, used for the whole row and, at the last row, for the update. They
  agree where ``lr`` is constant inside each mini-batch: then ``eta[r] = token_scale[r] * lr``;
- outputs: ours is ``q + LN(z)``, the paper's (``f(x) = x + LN(...)``); fla's naive reference
  returns ``z + LN(z)``. So ``o_fla - y_ours`` is fla's ``z``, and its LayerNorm must be
  ``y_ours - q``: a check that both compute the same ``z`` at every token.
The states are compared directly, at the end and, through gradients of a loss on them, with
respect to the keys, values, the LayerNorm and the initial state.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixbench_kernels.ttt import fresh_state, ttt_dual
from mixbench_kernels.ttt.inner import LN_EPS


def _load_naive():
    """fla's ``ops/ttt/naive.py`` alone: it needs only torch, while ``import fla`` imports
    transformers' models (before ``hf_format.import_transformers`` could keep them off hub kernels,
    which other tests in the same process rely on)."""
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        if os.environ.get("MIXBENCH_REQUIRE_FLA"):
            pytest.fail("MIXBENCH_REQUIRE_FLA is set but fla (flash-linear-attention) is not installed")
        pytest.skip("fla (the [dev] extra) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "ops" / "ttt" / "naive.py"
    module_spec = importlib.util.spec_from_file_location("mixbench_test_fla_ttt_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


naive = _load_naive()

B, H, D, MB = 2, 3, 16, 16  # batch, heads, head dim, mini-batch


def case(seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    n_mb = -(-seq // MB)
    per_mb = torch.rand(B, H, n_mb, generator=g) * 0.5 + 0.05  # one inner rate per mini-batch
    return dict(
        q=rnd(B, H, seq, D),
        k=rnd(B, H, seq, D, scale=D**-0.5),
        v=rnd(B, H, seq, D),
        lr=per_mb.repeat_interleave(MB, dim=-1)[..., :seq],
        token_scale=1.0 / torch.arange(1, MB + 1, dtype=torch.float32),
        w0=rnd(B, H, D, D, scale=D**-0.5),
        b0=rnd(B, H, 1, D, scale=0.1),
        ln_w=(1 + torch.randn(H, 1, D, generator=g) * 0.1).requires_grad_(),
        ln_b=rnd(H, 1, D, scale=0.1),
    )


def ours(c):
    y, state = ttt_dual(
        c["q"],
        c["k"],
        c["v"],
        c["lr"],
        fresh_state(((c["w0"], c["b0"]),)),
        token_scale=c["token_scale"],
        ln_weight=c["ln_w"],
        ln_bias=c["ln_b"],
    )
    ((w, b),) = state.params
    return y, w, b


def theirs(c):
    seq = c["q"].shape[2]
    eta = c["token_scale"][torch.arange(seq) % MB] * c["lr"]  # (B, H, T)
    o, w, b = naive.chunk_ttt_linear_ref(
        c["q"].transpose(1, 2).clone(),
        c["k"].transpose(1, 2),
        c["v"].transpose(1, 2),
        c["ln_w"].reshape(H, D),
        c["ln_b"].reshape(H, D),
        eta[..., None].transpose(1, 2),
        scale=1.0,
        eps=LN_EPS,
        mini_batch_size=MB,
        initial_state=c["w0"],
        initial_state_bias=c["b0"],
        output_final_state=True,
    )
    return o.transpose(1, 2), w, b


@pytest.mark.parametrize("seq", [48, 40])  # whole mini-batches; and a last partial one (outputs only)
def test_every_tokens_output_is_the_same_inner_model(seq):
    c = case(seq)
    with torch.no_grad():
        y, _, _ = ours(c)
        o, _, _ = theirs(c)
        z = o - (y - c["q"])  # fla's z, if our output is q + LN(z) of the same z
        ln_z = F.layer_norm(z, (D,), eps=LN_EPS) * c["ln_w"] + c["ln_b"]
    torch.testing.assert_close(ln_z, y - c["q"], rtol=1e-4, atol=1e-4)
    assert (y - c["q"]).abs().mean() > 0.1, "LN(z) must not be near zero for the check to mean anything"


def test_the_final_state_and_its_gradients_match():
    c = case(48, seed=1)
    leaves = ("k", "v", "w0", "b0", "ln_w", "ln_b")
    g = torch.Generator().manual_seed(2)
    probe_w, probe_b = torch.randn(B, H, D, D, generator=g), torch.randn(B, H, 1, D, generator=g)
    results = []
    for form in (ours, theirs):
        _, w, b = form(c)
        grads = torch.autograd.grad((w * probe_w).sum() + (b * probe_b).sum(), [c[n] for n in leaves])
        results.append((w.detach(), b.detach(), grads))
    (w1, b1, g1), (w2, b2, g2) = results
    torch.testing.assert_close(w1, w2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b1, b2, rtol=1e-4, atol=1e-5)
    assert (w1 - c["w0"]).abs().max() > 1e-2, "the state must have moved for the check to mean anything"
    for name, a, b in zip(leaves, g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=lambda m, name=name: f"d/d{name}: {m}")
