"""The Mamba Triton kernels of this folder on CPU under the Triton interpreter, float32.

Not collected by the main test run: ``test_mamba_triton_kernels.py`` runs this file in a
subprocess with ``TRITON_INTERPRET=1`` (triton reads it when first imported). Sizes are tiny and
chosen so that blocks are partial: lengths that are not multiples of the chunk, head dims and
state sizes padded to 16, head dims split into several blocks.

* SSD (``ssd_chunked_triton``) against the sequential reference in float64 and mamba-ssm's
  ``ssd_chunk_scan_combined_ref`` / ``ssd_minimal_discrete``: output, final state, every gradient
  (those of the Triton backward, ``_ssd_backward``), with the loss on the output and the final
  state, on the output alone, or on the final state alone.
* The one-token conv and SSM-state kernels against our references and causal-conv1d's /
  mamba-ssm's (``causal_conv1d_update_ref``, ``selective_state_update_ref``), in both layouts.
* The mixers: Mamba-2's ``triton`` backend equals ``torch`` (forward, parameter gradients), and
  both blocks' ``triton`` decode equals prefill token by token, updating the state in place.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_mamba_triton_kernels.py with TRITON_INTERPRET=1", allow_module_level=True)

import importlib.util
import sys
import types

from test_ssd import make_inputs, run

# mamba-ssm's package __init__ imports every model it ships (Mamba-3, tilelang, quack: ~35 s on two
# cores); the references used here need only their own modules, so in this subprocess the package
# is an empty shell over its real folder (the modules themselves load unchanged, ~6 s).
_spec = importlib.util.find_spec("mamba_ssm")
if _spec is not None and "mamba_ssm" not in sys.modules:
    _shell = types.ModuleType("mamba_ssm")
    _shell.__path__, _shell.__spec__ = list(_spec.submodule_search_locations), _spec
    sys.modules["mamba_ssm"] = _shell

from mixbench_kernels.causal_conv import causal_conv1d_update_reference, causal_conv1d_update_triton  # noqa: E402
from mixbench_kernels.ssd import ssd_chunked, ssd_chunked_triton, ssd_reference  # noqa: E402
from mixbench_kernels.ssm_step import ssm_state_update_reference, ssm_state_update_triton  # noqa: E402
from models.mamba import Mamba  # noqa: E402
from models.mamba2 import Mamba2  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    torch.set_num_threads(1)


def as64(result):
    out, final, grads = result
    return out.double(), final.double(), {k: v.double() for k, v in grads.items()}


@pytest.mark.parametrize(
    ("T", "chunk", "heads", "headdim", "groups", "n", "drop", "D_per_channel"),
    [
        (37, 16, 4, 3, 2, 5, (), False),  # partial last chunk, padded head dim and state
        (40, 32, 2, 80, 1, 16, ("z",), True),  # head dim 80: blocks of 64 (backward: 32), the last mostly masked
        (5, 64, 2, 8, 2, 20, ("initial_state",), False),  # one short chunk, d_state 20 -> 32 columns
        (48, 16, 3, 4, 1, 8, ("D", "dt_bias"), False),  # whole chunks, no skip, no bias
    ],
)
def test_ssd_matches_the_reference_forward_and_every_gradient(T, chunk, heads, headdim, groups, n, drop, D_per_channel):
    inputs = make_inputs(2, T, heads, headdim, groups, n, seed=T, D_per_channel=D_per_channel)
    ref = run(ssd_reference, inputs, drop=drop)
    ours = as64(run(ssd_chunked_triton, {k: v.float() for k, v in inputs.items()}, drop=drop, chunk_size=chunk))
    torch.testing.assert_close(ours[0], ref[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(ours[1], ref[1], atol=2e-5, rtol=2e-5)
    for name in ref[2]:
        torch.testing.assert_close(ours[2][name], ref[2][name], atol=1e-4, rtol=1e-4, msg=lambda m: f"grad {name}: {m}")


def test_ssd_gradients_of_the_final_state_alone():
    """The loss reads only the final state: the backward gets no output gradient (``None``), only ``d_final``."""
    inputs = make_inputs(2, 37, 4, 20, 2, 12, seed=11)
    leaves = {k: v.float().requires_grad_() for k, v in inputs.items()}
    ref_leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    w = torch.randn(inputs["initial_state"].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, final = ssd_chunked_triton(**leaves, dt_softplus=True, return_final_state=True, chunk_size=16)
    _, ref_final = ssd_reference(**ref_leaves, dt_softplus=True, return_final_state=True)
    ours = torch.autograd.grad((final.double() * w).sum(), list(leaves.values()), allow_unused=True)
    ref = torch.autograd.grad((ref_final * w).sum(), list(ref_leaves.values()), allow_unused=True)
    for name, a, b in zip(leaves, ours, ref):
        b = torch.zeros_like(inputs[name]) if b is None else b  # z and D do not reach the state
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4, msg=lambda m: f"grad {name}: {m}")


def test_ssd_strong_decay_stays_finite():
    inputs = make_inputs(1, 70, 2, 4, 1, 8, seed=3)
    inputs["A"] = inputs["A"] * 40  # decays far beyond e^-88 inside a chunk
    ref = run(ssd_reference, inputs)
    ours = as64(run(ssd_chunked_triton, {k: v.float() for k, v in inputs.items()}, chunk_size=32))
    torch.testing.assert_close(ours[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours[1], ref[1], atol=1e-4, rtol=1e-4)
    for name in ref[2]:  # the backward's exponents are <= 0 too
        torch.testing.assert_close(ours[2][name], ref[2][name], atol=1e-3, rtol=1e-3, msg=lambda m: f"grad {name}: {m}")


def test_ssd_matches_mamba_ssm_references(mamba_ssm_module):
    """Forward and gradients against ``ssd_chunk_scan_combined_ref`` (D, z, dt bias) and ``ssd_minimal_discrete``."""
    combined = mamba_ssm_module("mamba_ssm.ops.triton.ssd_combined")
    minimal = mamba_ssm_module("mamba_ssm.modules.ssd_minimal")
    inputs = {k: v.float() for k, v in make_inputs(1, 64, 2, 16, 1, 16, seed=9).items()}
    inputs["A"] = inputs["A"] * 0.05  # the combined reference's gradients are NaN once a chunk decays past e^-88
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
    args = {k: inputs[k].clone().requires_grad_() for k in names}
    theirs = combined.ssd_chunk_scan_combined_ref(**args, chunk_size=32, dt_softplus=True)
    ours = ssd_chunked_triton(**args, dt_softplus=True, chunk_size=32)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    w = torch.randn_like(ours)
    g_theirs = torch.autograd.grad((theirs * w).sum(), list(args.values()))
    g_ours = torch.autograd.grad((ours * w).sum(), list(args.values()))
    for name, a, b in zip(args, g_ours, g_theirs):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=lambda m: f"grad {name}: {m}")
    x, dt, A, B, C = (inputs[k] for k in ("x", "dt", "A", "B", "C"))
    dt = torch.nn.functional.softplus(dt + inputs["dt_bias"])
    y_min, final_min = minimal.ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, 32)
    y_ours, final_ours = ssd_chunked_triton(x, dt, A, B, C, return_final_state=True, chunk_size=32)
    torch.testing.assert_close(y_ours, y_min, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(final_ours, final_min, atol=1e-4, rtol=1e-4)


def test_ssd_half_precision_inputs_keep_a_float32_state():
    """float16 only: Triton 3.9's interpreter multiplies bfloat16 ``tl.dot`` operands as raw bits
    (errors of 1e10 on a plain 16x16 product), so bfloat16 is tested on a GPU (``test_mamba_triton_kernels.py``)."""
    inputs = {k: v.float() for k, v in make_inputs(1, 20, 2, 16, 1, 16, seed=5).items()}
    low = {k: (v.half() if k in ("x", "B", "C", "z", "dt") else v) for k, v in inputs.items()}
    out, final = ssd_chunked_triton(**low, dt_softplus=True, return_final_state=True, chunk_size=16)
    ref, ref_final = ssd_chunked(**{k: v.float() for k, v in low.items()}, dt_softplus=True, return_final_state=True)
    assert out.dtype == torch.float16 and final.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(final, ref_final, atol=2e-2, rtol=2e-2)
    # the backward's float16 matmul operands: every gradient within 2e-2 of its largest value
    ours, ref = (
        as64(run(ssd_chunked_triton, low, chunk_size=16)),
        run(ssd_chunked, {k: v.double() for k, v in low.items()}),
    )
    for name in ref[2]:
        scale = ref[2][name].abs().max()
        torch.testing.assert_close(
            ours[2][name] / scale, ref[2][name] / scale, atol=2e-2, rtol=0, msg=lambda m: f"grad {name}: {m}"
        )


@pytest.mark.parametrize(("channels", "width"), [(10, 4), (300, 4), (5, 2)])
def test_conv_update_kernel(channels, width, causal_conv1d_interface):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(2, 7, channels, generator=g)
    weight, bias = torch.randn(channels, width, generator=g), torch.randn(channels, generator=g)
    states = [torch.randn(2, channels, width - 1, generator=g)] * 3
    states = [s.clone() for s in states]
    for t in range(7):
        ours = causal_conv1d_update_triton(x[:, t], states[0], weight, bias, "silu")
        ref = causal_conv1d_update_reference(x[:, t], states[1], weight, bias, "silu")
        theirs = causal_conv1d_interface.causal_conv1d_update_ref(x[:, t], states[2], weight, bias, activation="silu")
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(states[0], states[1], atol=0, rtol=0)  # rolled in place, exactly
        torch.testing.assert_close(states[0], states[2], atol=0, rtol=0)


def ssm_step_inputs(layout, seed, batch=2, d=20, heads=3, headdim=10, groups=1, n=12):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    if layout == "mamba":
        return dict(
            state=r(batch, d, n),
            x=r(batch, d),
            dt=r(batch, d) - 2,
            A=-torch.rand(d, n, generator=g) * 4,
            B=r(batch, n),
            C=r(batch, n),
            D=r(d),
            z=r(batch, d),
            dt_bias=r(d),
        )
    # Mamba-2: per-head values as expanded views, as the mixer passes them
    A = (-torch.rand(heads, generator=g) * 4)[:, None, None].expand(heads, headdim, n)
    per_head = lambda t: t[:, None].expand(heads, headdim)  # noqa: E731
    dt = (r(batch, heads) - 2)[:, :, None].expand(batch, heads, headdim)
    return dict(
        state=r(batch, heads, headdim, n),
        x=r(batch, heads, headdim),
        dt=dt,
        A=A,
        B=r(batch, groups, n),
        C=r(batch, groups, n),
        D=per_head(r(heads)),
        z=r(batch, heads, headdim),
        dt_bias=per_head(r(heads)),
    )


@pytest.mark.parametrize("layout", ["mamba", "mamba2"])
@pytest.mark.parametrize("drop", [(), ("z", "D", "dt_bias")])
def test_ssm_state_update_kernel(layout, drop, mamba_ssm_module):
    ssu_ref = mamba_ssm_module("mamba_ssm.ops.triton.selective_state_update").selective_state_update_ref
    inputs = ssm_step_inputs(layout, seed=len(drop), groups=3 if layout == "mamba2" and drop else 1)
    for k in drop:
        inputs[k] = None
    fns = (ssm_state_update_triton, ssm_state_update_reference, ssu_ref)
    states = [inputs["state"].clone() for _ in fns]
    ours, ref, theirs = (fn(**{**inputs, "state": state}, dt_softplus=True) for fn, state in zip(fns, states))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states[0], states[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(states[0], states[2], atol=1e-6, rtol=1e-6)
    assert not torch.equal(states[0], inputs["state"])


def make_mixer(kind, **kwargs):
    torch.manual_seed(0)
    if kind == "mamba":
        return Mamba(32, n_layers=2, **kwargs)
    return Mamba2(32, n_layers=2, headdim=16, d_state=8, ngroups=2, chunk_size=16, **kwargs)


def test_mamba2_triton_backend_equals_torch():
    x = torch.randn(2, 21, 32)
    outs = {}
    for backend in ("triton", "torch"):
        mixer = make_mixer("mamba2", backend=backend)
        assert mixer.select_backend(CPU) == backend
        y, _ = mixer(x)
        grads = torch.autograd.grad((y * torch.cos(y)).sum(), list(mixer.parameters()))
        outs[backend] = (y, grads)
    torch.testing.assert_close(outs["triton"][0], outs["torch"][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs["triton"][1], outs["torch"][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_triton_decode_equals_prefill_token_by_token(kind):
    mixer = make_mixer(kind)
    assert mixer.select_backend(CPU, torch.float32, decode=True) == "triton"
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        full, _ = mixer(x)
        y, state = mixer(x[:, :4], mixer.init_state(2, CPU, x.dtype))
        buffers = (state["conv"], state["ssm"])
        steps = [y]
        for t in range(4, 13):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=2e-5)
    assert state["conv"] is buffers[0] and state["ssm"] is buffers[1] and state["pos"] == 13
