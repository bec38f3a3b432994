"""SSD (Mamba-2): chunked PyTorch algorithm == sequential reference == mamba-ssm.

Float64 comparisons hold the chunked algorithm to the token-by-token loop, forward and
backward; mamba-ssm's own references (``ssd_chunk_scan_combined_ref``, ``ssd_minimal_discrete``)
are compared where mamba-ssm is installed (its CUDA extension stubbed for the import on a CPU
machine); its Triton kernel where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.ssd import ssd_chunked, ssd_flops, ssd_reference, ssd_triton


def make_inputs(batch, T, heads, headdim, groups, n, dtype=torch.float64, seed=0, D_per_channel=False, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).to(device)

    return {
        "x": rand(batch, T, heads, headdim),
        "dt": rand(batch, T, heads, shift=-1.0),
        "A": -(torch.rand(heads, generator=g, dtype=dtype) * 8 + 0.5).to(device),
        "B": rand(batch, T, groups, n),
        "C": rand(batch, T, groups, n),
        "D": rand(heads, headdim) if D_per_channel else rand(heads),
        "z": rand(batch, T, heads, headdim),
        "dt_bias": rand(heads, scale=0.5),
        "initial_state": rand(batch, heads, headdim, n),
    }


def run(scan, inputs, drop=(), **kwargs):
    """Forward, then gradients of a fixed random projection of (out, final state) w.r.t. every input."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if k not in drop}
    out, final = scan(**leaves, dt_softplus=True, return_final_state=True, **kwargs)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    w_final = torch.randn(final.shape, generator=g, dtype=torch.float64).to(final)
    loss = (out * w_out).sum() + (final * w_final).sum()
    return out, final, dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def assert_match(a, b, atol, rtol=0.0):
    torch.testing.assert_close(a[0], b[0], atol=atol, rtol=rtol)
    torch.testing.assert_close(a[1], b[1], atol=atol, rtol=rtol)
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], atol=atol, rtol=rtol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize(
    ("T", "chunk", "groups", "D_per_channel"),
    [(1, 64, 1, False), (5, 16, 1, False), (37, 8, 2, True), (64, 64, 1, False), (130, 64, 2, False)]
    + [(1100, 64, 1, True)],
)
def test_chunked_matches_reference_float64(T, chunk, groups, D_per_channel):
    inputs = make_inputs(2, T, 4, 3, groups, 5, seed=T, D_per_channel=D_per_channel)
    assert_match(run(ssd_chunked, inputs, chunk_size=chunk), run(ssd_reference, inputs), atol=1e-9, rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(
    T=st.integers(1, 80),
    chunk=st.integers(1, 33),
    heads=st.sampled_from([1, 2, 4]),
    groups=st.sampled_from([1, 2]),
    with_state=st.booleans(),
    with_z=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_reference_any_shape(T, chunk, heads, groups, with_state, with_z, seed):
    groups = min(groups, heads)
    inputs = make_inputs(1, T, heads, 2, groups, 3, seed=seed)
    drop = (() if with_state else ("initial_state",)) + (() if with_z else ("z",))
    ours = run(ssd_chunked, inputs, drop=drop, chunk_size=chunk)
    assert_match(ours, run(ssd_reference, inputs, drop=drop), atol=1e-9, rtol=1e-9)


def test_long_sequence_float32_and_strong_decay():
    inputs = make_inputs(1, 2000, 2, 8, 1, 16, seed=4)
    inputs["A"] = inputs["A"] * 20  # decays far beyond e^-88 inside a chunk
    ref = run(ssd_reference, inputs)
    ours = run(ssd_chunked, {k: v.float() for k, v in inputs.items()})
    assert all(torch.isfinite(t).all() for t in (ours[0], ours[1], *ours[2].values()))
    as64 = (ours[0].double(), ours[1].double(), {k: v.double() for k, v in ours[2].items()})
    assert_match(as64, ref, atol=5e-3, rtol=5e-3)


def test_bad_arguments():
    inputs = make_inputs(1, 8, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="groups"):
        ssd_chunked(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"])
    with pytest.raises(ValueError, match="chunk_size"):
        ssd_chunked(inputs["x"], inputs["dt"], inputs["A"], inputs["B"][:, :, :1], inputs["C"][:, :, :1], chunk_size=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        ssd_triton(inputs["x"], inputs["dt"], inputs["A"], inputs["B"], inputs["C"])


@pytest.mark.parametrize(("T", "chunk"), [(64, 16), (100, 32), (7, 64)])
def test_flops_match_flop_counter(T, chunk):
    inputs = make_inputs(1, T, 4, 8, 2, 16, dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        ssd_chunked(**{k: v for k, v in inputs.items() if k != "initial_state"}, chunk_size=chunk)
    assert counter.get_total_flops() == ssd_flops(T, 4, 8, 16, groups=2, chunk_size=chunk)


def test_matches_mamba_ssm_references(mamba_ssm_module):
    """Ours vs mamba-ssm's ``ssd_chunk_scan_combined_ref`` and ``ssd_minimal_discrete`` (float32).

    Both of theirs need the length to be a multiple of the chunk size. The combined reference
    exponentiates before masking, so its gradients are NaN once a chunk's decay passes e^88
    (ours are not): its gradients are compared on milder decays only.
    """
    combined = mamba_ssm_module("mamba_ssm.ops.triton.ssd_combined")
    minimal = mamba_ssm_module("mamba_ssm.modules.ssd_minimal")
    inputs = {k: v.float() for k, v in make_inputs(2, 1024, 4, 16, 1, 32, seed=9).items()}
    names = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")
    for A_scale in (1.0, 0.01):
        args = {k: inputs[k].detach().clone().requires_grad_() for k in names}
        A = args["A"] * A_scale
        theirs = combined.ssd_chunk_scan_combined_ref(**{**args, "A": A}, chunk_size=64, dt_softplus=True)
        ours = ssd_chunked(**{**args, "A": A}, dt_softplus=True, chunk_size=64)
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=2e-4)
    w = torch.randn_like(ours)
    g_theirs = torch.autograd.grad((theirs * w).sum(), list(args.values()), retain_graph=True)
    g_ours = torch.autograd.grad((ours * w).sum(), list(args.values()))
    for name, a, b in zip(args, g_ours, g_theirs):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=lambda m: f"grad {name}: {m}")
    # ssd_minimal_discrete: pre-discretised inputs, no D or z; stable, so strong decays and grads.
    args = {k: inputs[k].detach().clone().requires_grad_() for k in ("x", "dt", "A", "B", "C")}
    x, dt, A, B, C = args.values()
    dt = torch.nn.functional.softplus(dt + inputs["dt_bias"])
    y_min, final_min = minimal.ssd_minimal_discrete(x * dt[..., None], A * dt, B, C, 64)
    y_ours, final_ours = ssd_chunked(x, dt, A, B, C, return_final_state=True)
    torch.testing.assert_close(y_ours, y_min, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(final_ours, final_min, atol=2e-4, rtol=2e-4)
    w_y, w_final = torch.randn_like(y_ours), torch.randn_like(final_ours)
    loss_min = (y_min * w_y).sum() + (final_min * w_final).sum()
    g_min = torch.autograd.grad(loss_min, list(args.values()), retain_graph=True)
    g_ours = torch.autograd.grad((y_ours * w_y).sum() + (final_ours * w_final).sum(), list(args.values()))
    for name, a, b in zip(args, g_ours, g_min):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_matches_mamba_ssm_triton_kernel(mamba_ssm_module):
    mamba_ssm_module("mamba_ssm.ops.triton.ssd_combined")
    inputs = {k: v.float() for k, v in make_inputs(2, 1000, 4, 64, 1, 64, seed=2, device="cuda").items()}
    kernel = run(ssd_triton, inputs, chunk_size=64)
    ours = run(ssd_chunked, inputs, chunk_size=64)
    assert_match(ours, kernel, atol=2e-3, rtol=2e-3)
