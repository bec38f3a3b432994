"""The Triton selective scan on CPU under the Triton interpreter, float32, against the references.

Not collected by the main test run: ``test_selective_scan_triton.py::test_kernels_under_the_interpreter``
runs this file in a subprocess with ``TRITON_INTERPRET=1`` (triton reads it when first imported).
Sizes are tiny (the interpreter runs the in-chunk scan element by element in Python) and chosen
so that blocks are partial: lengths that are not multiples of the 16-step chunk, d_state 3
(padded to 4), and d_inner 12 at d_state 16, which both kernels cover in 2 channel blocks of 8.
Both kernels prefetch the next chunk while computing the current one, so every case with more
than one chunk also checks the prefetch (and the one past the end, fully masked).
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_selective_scan_triton.py with TRITON_INTERPRET=1", allow_module_level=True)

from test_selective_scan import as_float64, assert_match, make_inputs, run

from mixbench_kernels.selective_scan import selective_scan_reference, selective_scan_triton
from models import ModelSpec, build
from models.mamba import Mamba

# float32 kernels against the float64 loop: observed errors are ~1e-6 on values ~10.
TOL = 5e-5
WITHOUT = {"D": ("D",), "z": ("z",), "bias": ("delta_bias",), "all": ("D", "z", "delta_bias")}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)


def drop(inputs: dict, names: tuple[str, ...]) -> dict:
    return {k: v for k, v in inputs.items() if k not in names}


@pytest.mark.parametrize(
    ("batch", "d", "n", "T", "with_state", "without"),
    [
        (2, 6, 4, 37, True, ()),  # three chunks, the last partial; every option
        (1, 12, 16, 21, True, ()),  # two channel blocks of 8, the second partial
        (1, 5, 3, 16, True, WITHOUT["all"]),  # one full chunk; no D, no gate, no bias
        (2, 4, 2, 19, False, WITHOUT["D"]),
        (1, 3, 2, 18, True, WITHOUT["z"]),
        (1, 2, 2, 1, True, WITHOUT["bias"]),
    ],
)
def test_matches_reference_forward_and_every_gradient(batch, d, n, T, with_state, without):
    """Output, last state, and the gradients of u, delta, A, B, C, D, z, delta bias and the initial state."""
    inputs = drop(make_inputs(batch, d, n, T, seed=T + d), without)
    ours = run(selective_scan_triton, {k: v.float() for k, v in inputs.items()}, with_state=with_state)
    ref = run(selective_scan_reference, inputs, with_state=with_state)
    assert_match(as_float64(ours), ref, atol=TOL, rtol=TOL)


def test_without_softplus_and_strong_decay():
    """``delta_softplus=False`` (delta used as given) and decays far below e^-88 per chunk stay finite."""
    inputs = make_inputs(1, 4, 4, 40, strong_decay=True, seed=2)
    inputs["delta"] = inputs["delta"].abs()
    bare = {k: inputs[k] for k in ("u", "delta", "A", "B", "C", "D")}
    leaves = {k: v.float().requires_grad_() for k, v in bare.items()}
    out = selective_scan_triton(**leaves)
    out.sum().backward()
    ref = {k: v.clone().requires_grad_() for k, v in bare.items()}
    expected = selective_scan_reference(**ref)
    expected.sum().backward()
    torch.testing.assert_close(out.double(), expected, atol=TOL, rtol=TOL)
    for k in bare:
        assert torch.isfinite(leaves[k].grad).all()
        torch.testing.assert_close(
            leaves[k].grad.double(), ref[k].grad, atol=1e-3, rtol=1e-3, msg=lambda m: f"d{k}: {m}"
        )


def test_loss_on_the_last_state_alone():
    """Only the last state reaches the loss: the output's gradient comes back as None."""
    inputs = {k: v.float() for k, v in make_inputs(1, 3, 2, 20, seed=4).items()}
    grads = []
    for scan in (selective_scan_triton, selective_scan_reference):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        _, last = scan(**leaves, delta_softplus=True, return_last_state=True)
        grads.append(torch.autograd.grad(last.square().sum(), [leaves["u"], leaves["initial_state"], leaves["A"]]))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=TOL, rtol=TOL)


def test_matches_mamba_ssm_selective_scan_ref(mamba_ssm_module):
    """Against mamba-ssm's own pure-PyTorch reference, float32 (it has no initial state)."""
    selective_scan_ref = mamba_ssm_module("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    inputs = {k: v.float() for k, v in make_inputs(2, 6, 4, 35, seed=11).items()}
    assert_match(
        run(selective_scan_triton, inputs, with_state=False),
        run(selective_scan_ref, inputs, with_state=False),
        atol=TOL,
        rtol=TOL,
    )


def test_contiguous_layout_and_half_inputs():
    """(batch, d, T)-contiguous inputs give what time-major views give; fp16 inputs give fp16
    outputs and gradients, equal to the float64 loop on the same (rounded) inputs to fp16 precision."""
    inputs = {k: v.float() for k, v in make_inputs(1, 4, 4, 20, seed=5).items()}
    ours = run(selective_scan_triton, {k: v.contiguous() for k, v in inputs.items()})
    assert_match(ours, run(selective_scan_triton, inputs), atol=1e-6, rtol=1e-6)
    half = {k: v.half() if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    out, _, grads = run(selective_scan_triton, half)
    assert out.dtype == grads["u"].dtype == grads["delta"].dtype == grads["z"].dtype == torch.float16
    assert grads["A"].dtype == grads["initial_state"].dtype == torch.float32
    ref_out, _, ref_grads = run(selective_scan_reference, {k: v.double() for k, v in half.items()})
    torch.testing.assert_close(out.double(), ref_out, atol=2e-2, rtol=2e-3)
    for k in ("u", "delta", "B", "C", "z", "A"):
        scale = ref_grads[k].abs().max().item()
        torch.testing.assert_close(
            grads[k].double(), ref_grads[k], atol=2e-3 * scale, rtol=0, msg=lambda m: f"d{k}: {m}"
        )


def test_mamba_mixer_runs_the_kernel_and_decodes_from_its_state():
    """Under the interpreter the mixer picks ``triton`` (float32), equals the ``torch`` backend in the
    output and every parameter gradient, and a prefill's state continues into step-by-step decode."""
    torch.manual_seed(0)
    mixer = Mamba(16, n_layers=2, d_state=4)  # d_inner 32
    assert mixer.select_backend(torch.device("cpu"), torch.float32) == "triton"
    assert mixer.select_backend(torch.device("cpu"), torch.float64) == "torch"
    x = torch.randn(2, 19, 16)
    results = {}
    for backend in ("triton", "torch"):
        mixer.backend = backend
        mixer.zero_grad()
        y, _ = mixer(x)
        y.square().sum().backward()
        results[backend] = (y.detach(), {k: p.grad.clone() for k, p in mixer.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-5, rtol=1e-5)
    for k, g in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][k], g, atol=1e-4, rtol=1e-4, msg=lambda m: f"d{k}: {m}")
    mixer.backend = "auto"  # prefill on the kernel; step() has no Triton kernel of its own and runs torch
    with torch.no_grad():
        whole, _ = mixer(x)
        y, state = mixer(x[:, :11], mixer.init_state(2, x.device, x.dtype))
        y2, state = mixer(x[:, 11:15], state)  # a second prefill from a non-zero state
        outs = [y, y2]
        for t in range(15, 19):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1), whole, atol=1e-5, rtol=1e-5)


def test_a_run_records_the_backend_of_training_and_of_decode():
    """What a run stores (``model.backends``): the scan kernels for training, the decode kernels for ``step``."""
    model = build(ModelSpec.parse("mamba@mamba_native", "tiny", 50))
    cpu = torch.device("cpu")
    assert model.backends(cpu, torch.bfloat16) == ["triton"]
    assert model.backends(cpu, torch.bfloat16, decode=True) == ["triton"]


def test_torch_compile_runs_the_kernels_as_they_are():
    """Under ``torch.compile`` the launch is a graph break: same output and gradients as eager."""
    inputs = {k: v.float() for k, v in make_inputs(1, 4, 4, 20, seed=6).items()}
    compiled = torch.compile(selective_scan_triton, backend="eager")
    assert_match(run(compiled, inputs), run(selective_scan_triton, inputs), atol=0)
