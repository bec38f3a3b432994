"""The Triton TTT kernels on CPU under the Triton interpreter, float32, against ``ttt_dual``.

Not collected by the main test run: ``test_ttt_triton.py::test_kernels_under_the_interpreter``
runs this file in a subprocess with ``TRITON_INTERPRET=1`` (triton reads it when it is first
imported, so it cannot be switched on inside a process that already imported triton). Sizes are
tiny (the interpreter runs every block op in numpy) and chosen so that chunks are partial:
mini-batches of 5 and 8 over lengths that are not multiples, states starting mid-mini-batch,
head_dim 12 (padded to 16 columns) and 16/32, the 16-row blocks ``tl.dot`` needs masking the rest;
TTT-MLP at head_dim 20 walks its hidden width (80, padded to 128) in several blocks. The
TTT-Linear walks peel a sequence's first and last chunks off their loop over whole mini-batches,
so the cases include one chunk, two, and whole mini-batches only.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_ttt_triton.py with TRITON_INTERPRET=1", allow_module_level=True)

from ttt_triton_cases import Case, make_leaves, relative_errors, run_form

from mixbench_kernels.ttt import ttt_dual, ttt_triton
from mixbench_kernels.ttt.triton_linear import LINEAR, ttt_linear_triton
from mixbench_kernels.ttt.triton_mlp import ttt_mlp_triton
from models.ttt import TTTMLP, TTTLinear

# float32 against float32, both accumulating in float32: observed errors are ~1e-6.
TOL = 2e-5
CASES = [
    Case("linear", batch=1, heads=2, seq=40, dim=16, mb=8),
    Case("linear", batch=2, heads=1, seq=29, dim=12, mb=5, pos=2),
    Case("linear", batch=1, heads=1, seq=21, dim=32, mb=16, pos=9),
    # head_dim 40 (64 columns): the backward's on-chip path at its widest, with masked columns.
    Case("linear", batch=1, heads=1, seq=19, dim=40, mb=8),
    # head_dim 72 (128 columns), masked columns in every kernel.
    Case("linear", batch=1, heads=2, seq=13, dim=72, mb=4, pos=1),
    # The walks peel the first and last chunks off the loop over whole mini-batches: one chunk that
    # starts and ends mid-mini-batch, one that starts mid-way and closes it, two chunks, whole ones only.
    Case("linear", batch=1, heads=1, seq=3, dim=16, mb=8, pos=2),
    Case("linear", batch=1, heads=1, seq=6, dim=16, mb=8, pos=2),
    Case("linear", batch=1, heads=2, seq=16, dim=16, mb=8),
    Case("linear", batch=1, heads=1, seq=32, dim=16, mb=4),
    Case("mlp", batch=1, heads=2, seq=24, dim=16, mb=8),
    Case("mlp", batch=2, heads=1, seq=13, dim=12, mb=5, pos=2),
    # Hidden width 80 in blocks of 32 (triton_mlp.hidden_tile): full, partly and wholly masked blocks.
    Case("mlp", batch=2, heads=1, seq=9, dim=20, mb=8),
    Case("mlp", batch=1, heads=1, seq=11, dim=20, mb=4, pos=3),
]
KERNELS = {"linear": ttt_linear_triton, "mlp": ttt_mlp_triton}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel_matches_dual_forward_and_every_gradient(case):
    """Output, end state, and the gradients of q, k, v, lr, token scale, LN weight/bias, W/b and the sums."""
    leaves = make_leaves(case)
    out, pos, grads = run_form(ttt_triton, leaves, case, torch.float32)
    ref_out, ref_pos, ref_grads = run_form(ttt_dual, leaves, case, torch.float32)
    assert pos == ref_pos == (case.pos + case.seq) % case.mb
    for what, errors in (("output", relative_errors(out, ref_out)), ("gradient", relative_errors(grads, ref_grads))):
        bad = {k: f"{e:.2g}" for k, e in errors.items() if not e <= TOL}
        assert not bad, f"{case}: {what} relative errors above {TOL}: {bad}"
    assert all(g.abs().max() > 0 for g in grads.values())


@pytest.mark.parametrize("pos", [0, 3])
def test_linear_fused_walk_equals_the_split_forward(pos):
    """The decode path (the output inside the walk, ``QUERY``) over a whole sequence gives what the
    walk plus the parallel output kernel give: the same y and state out."""
    case = Case("linear", batch=2, heads=1, seq=29, dim=16, mb=8, pos=pos)
    leaves = {k: v.float() for k, v in make_leaves(case, seed=5).items()}
    b, h, t, d = case.batch, case.heads, case.seq, case.dim
    inputs = [
        leaves[n].reshape(b * h, t, -1).squeeze(-1).contiguous() if n == "lr" else leaves[n].reshape(b * h, t, d)
        for n in ("q", "k", "v", "lr")
    ]
    inputs += [leaves["token_scale"], leaves["ln_weight"].reshape(h, d), leaves["ln_bias"].reshape(h, d)]
    tile = dict(W=leaves["W1"].expand(b, h, d, d), B=leaves["b1"].expand(b, h, 1, d))
    sums = [leaves["sum_W1"], leaves["sum_b1"]] if pos else [torch.zeros(b, h, d, d), torch.zeros(b, h, 1, d)]
    state = [t.reshape(b * h, *t.shape[2:]).squeeze(1).contiguous() for t in (tile["W"], tile["B"], *sums)]
    fused = LINEAR.launch_forward(inputs, state, pos, save=False)
    split = LINEAR.launch_forward(inputs + LINEAR.prepass(inputs, pos), state, pos, save=False)
    assert (fused[0] - split[0]).abs().max() <= TOL * split[0].abs().max()
    for a, s in zip(fused[1], split[1]):
        assert (a - s).abs().max() <= TOL * max(s.abs().max(), 1.0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_stored_and_recomputed_weights_give_the_same_gradients(kind):
    case = Case(kind, batch=1, heads=1, seq=11, dim=16, mb=4, pos=1)
    leaves = make_leaves(case, seed=3)
    _, _, stored = run_form(KERNELS[kind], leaves, case, torch.float32, checkpoint=False)
    _, _, recomputed = run_form(KERNELS[kind], leaves, case, torch.float32, checkpoint=True)
    assert max(relative_errors(recomputed, stored).values()) == 0.0


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_layer_prefill_then_fused_steps(kind):
    """Layer level: each fused decode step equals the PyTorch ``step()`` from the same state, and
    prefill + steps equals the whole forward (of both backends). auto picks the kernel for both."""
    torch.manual_seed(0)
    m = (TTTMLP if kind == "mlp" else TTTLinear)(32, n_heads=2, mini_batch_size=4, backbone="mamba")
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    assert m.select_backend(torch.device("cpu")) == "triton"
    x = torch.randn(2, 11, 32)
    with torch.no_grad():
        m.backend = "dual"
        whole, _ = m(x)
        m.backend = "triton"
        assert (m(x)[0] - whole).abs().max() <= TOL * whole.abs().max()
        y, state = m(x[:, :6], m.init_state(2, x.device, torch.float32))  # ends mid-mini-batch
        outs = [y]
        for t in range(6, 11):
            m.backend = "dual"
            y_ref, state_ref = m.step(x[:, t], state)
            m.backend = "triton"
            y_t, state = m.step(x[:, t], state)
            assert (y_t - y_ref).abs().max() <= TOL * y_ref.abs().max()
            for a, b in zip(state["ttt"].params + state["ttt"].grads, state_ref["ttt"].params + state_ref["ttt"].grads):
                for ta, tb in zip(a, b):
                    assert (ta - tb).abs().max() <= TOL * max(tb.abs().max(), 1.0)
            assert state["ttt"].pos == state_ref["ttt"].pos
            outs.append(y_t.unsqueeze(1))
    assert (torch.cat(outs, 1) - whole).abs().max() <= TOL * whole.abs().max()


def test_layer_gradients_match_dual():
    """The backend hook passes every tensor the kernel needs: all parameter gradients of the layer agree."""
    torch.manual_seed(1)
    m = TTTLinear(32, n_heads=2, mini_batch_size=8)
    x = torch.randn(1, 19, 32, requires_grad=True)
    params = [x, *m.parameters()]
    grads = {}
    for backend in ("triton", "dual"):
        m.backend = backend
        y, _ = m(x)
        grads[backend] = torch.autograd.grad(y.square().sum(), params)
    for (name, _), a, b in zip([("x", None), *m.named_parameters()], grads["triton"], grads["dual"]):
        assert (a - b).abs().max() <= TOL * max(b.abs().max(), 1e-6), name
