"""The Mamba (v1) selective scan: chunked PyTorch scan == sequential reference == mamba-ssm.

Float64 comparisons hold the chunked scan (forward and the hand-written backward) to the
sequential loop; mamba-ssm's own ``selective_scan_ref`` is compared where mamba-ssm is
installed (a GPU extra: on a CPU machine its CUDA extension is stubbed for the import only);
its CUDA kernel where a GPU is present.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixbench_kernels.selective_scan import (
    auto_chunk_size,
    selective_scan_chunked,
    selective_scan_cuda,
    selective_scan_reference,
)

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(batch, d, n, T, dtype=torch.float64, strong_decay=False, seed=0, device="cpu"):
    """Random scan inputs in the mixer's memory layout: (batch, d, T) views of time-major tensors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale + shift).to(device)

    A_scale = 40.0 if strong_decay else 4.0
    return {
        "u": rand(batch, T, d).transpose(1, 2),
        "delta": rand(batch, T, d, scale=1.0, shift=2.0 if strong_decay else -1.0).transpose(1, 2),
        "A": -(torch.rand(d, n, generator=g, dtype=dtype) * A_scale + 0.1).to(device),
        "B": rand(batch, T, n).transpose(1, 2),
        "C": rand(batch, T, n).transpose(1, 2),
        "D": rand(d),
        "z": rand(batch, T, d).transpose(1, 2),
        "delta_bias": rand(d, scale=0.5),
        "initial_state": rand(batch, d, n),
    }


def run(scan, inputs, with_state=True, grad_last=True, **kwargs):
    """Forward, then gradients of a fixed random projection of (out, last_state) w.r.t. every input.

    ``grad_last=False`` leaves the last state out of the loss (mamba-ssm's CUDA kernel does not
    back-propagate through it).
    """
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    if not with_state:
        leaves.pop("initial_state")
    out, last = scan(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    w_last = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    loss = (out * w_out.to(out.device)).sum()
    if grad_last:
        loss = loss + (last * w_last.to(last.device)).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return out, last, dict(zip(leaves, grads))


def assert_match(a, b, atol, rtol=0.0):
    out_a, last_a, grads_a = a
    out_b, last_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, atol=atol, rtol=rtol)
    torch.testing.assert_close(last_a, last_b, atol=atol, rtol=rtol)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol, msg=lambda m: f"d{name}: {m}")


def as_float64(result):
    """A ``run`` result with every tensor in float64, to compare with the float64 reference."""
    return tuple({k: v.double() for k, v in x.items()} if isinstance(x, dict) else x.double() for x in result)


@pytest.mark.parametrize(
    ("T", "chunk"),
    [(1, None), (5, 16), (37, 8), (64, 64), (100, 16), (130, 64), (1031, None), (1200, 96)],
)
def test_chunked_matches_reference_float64(T, chunk):
    inputs = make_inputs(2, 6, 4, T, seed=T)
    ours = run(selective_scan_chunked, inputs, chunk_size=chunk)
    assert_match(ours, run(selective_scan_reference, inputs), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.integers(1, 2),
    d=st.integers(1, 5),
    n=st.integers(1, 5),
    T=st.integers(1, 70),
    chunk=st.integers(1, 40),
    with_state=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_reference_any_shape(batch, d, n, T, chunk, with_state, seed):
    inputs = make_inputs(batch, d, n, T, seed=seed)
    ours = run(selective_scan_chunked, inputs, with_state=with_state, chunk_size=chunk)
    assert_match(ours, run(selective_scan_reference, inputs, with_state=with_state), atol=1e-10)


def test_strong_decay_stays_finite_in_float32():
    """Decays far below e^-88 per chunk (where exp-cumsum factorisations overflow) are exact here."""
    inputs = make_inputs(1, 8, 16, 300, strong_decay=True)
    ref = run(selective_scan_reference, inputs)  # float64
    ours = run(selective_scan_chunked, {k: v.float() for k, v in inputs.items()}, chunk_size=64)
    assert all(torch.isfinite(t).all() for t in (ours[0], ours[1], *ours[2].values()))
    assert_match(as_float64(ours), ref, atol=2e-3, rtol=2e-3)


def test_float32_close_to_float64_on_long_sequence():
    inputs = make_inputs(1, 16, 16, 2048, seed=3)
    ours = run(selective_scan_chunked, {k: v.float() for k, v in inputs.items()})
    assert_match(as_float64(ours), run(selective_scan_reference, inputs), atol=1e-3, rtol=1e-3)


def test_layout_and_optional_arguments():
    """Contiguous (batch, d, T) inputs give the same as time-major views; D, z, bias are optional."""
    inputs = make_inputs(2, 5, 3, 50, seed=7)
    contiguous = {k: v.contiguous() for k, v in inputs.items()}
    torch.testing.assert_close(run(selective_scan_chunked, contiguous)[0], run(selective_scan_chunked, inputs)[0])
    bare = {k: inputs[k] for k in ("u", "delta", "A", "B", "C")}
    torch.testing.assert_close(
        selective_scan_chunked(**bare, delta_softplus=True, chunk_size=7),
        selective_scan_reference(**bare, delta_softplus=True),
        atol=1e-10,
        rtol=0,
    )


def test_auto_chunk_size_and_bad_chunk():
    assert auto_chunk_size(8192) in (64, 128) and auto_chunk_size(10) == 16 and auto_chunk_size(10**7) == 256
    inputs = make_inputs(1, 2, 2, 8)
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], chunk_size=0)


def test_cuda_wrapper_refuses_cpu_and_initial_state():
    inputs = make_inputs(1, 2, 2, 8)
    args = [inputs[k] for k in ("u", "delta", "A", "B", "C")]
    with pytest.raises(ValueError, match="zero state"):
        selective_scan_cuda(*args, initial_state=inputs["initial_state"])
    with pytest.raises(RuntimeError, match="CUDA"):
        selective_scan_cuda(*args)


def test_matches_mamba_ssm_selective_scan_ref(mamba_ssm_module):
    """Our chunked scan vs mamba-ssm's own pure-PyTorch reference, float32, forward and backward."""
    selective_scan_ref = mamba_ssm_module("mamba_ssm.ops.selective_scan_interface").selective_scan_ref
    inputs = {k: v.float() for k, v in make_inputs(2, 32, 16, 1100, seed=11).items()}
    theirs = run(selective_scan_ref, inputs, with_state=False)
    ours = run(selective_scan_chunked, inputs, with_state=False)
    assert_match(ours, theirs, atol=2e-4, rtol=2e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_matches_mamba_ssm_cuda_kernel():
    pytest.importorskip("selective_scan_cuda", reason="mamba-ssm's CUDA extension is not built")
    inputs = {k: v.float() for k, v in make_inputs(2, 64, 16, 2048, seed=5, device="cuda").items()}
    kernel = run(selective_scan_cuda, inputs, with_state=False, grad_last=False)
    ours = run(selective_scan_chunked, inputs, with_state=False, grad_last=False)
    assert_match(ours, kernel, atol=1e-3, rtol=1e-3)
