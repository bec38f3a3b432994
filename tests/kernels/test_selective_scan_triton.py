"""The Triton selective scan (``kernels/selective_scan/triton_scan.py``): exact under the interpreter,
the Mamba mixer's fast path on a GPU without mamba-ssm.

* CPU (CI): ``selective_scan_triton_interpreted.py`` runs in a subprocess with ``TRITON_INTERPRET=1``
  (forward, every gradient, with and without initial state, gate, D, bias; mamba-ssm's
  ``selective_scan_ref``; the mixer). Without triton it skips, unless ``MIXBENCH_REQUIRE_TRITON=1``.
* GPU: real sizes in bf16, fp16 and float32 against the chunked scan in float64 on the same inputs.
* Everywhere: bad inputs give one clear line, and CPU keeps the PyTorch scan.
"""

from __future__ import annotations

import os

import pytest
import torch
from interpreted import HAS_TRITON, run_interpreted
from test_selective_scan import make_inputs, run

from mixbench_kernels.selective_scan import selective_scan_chunked, selective_scan_triton, triton_unavailable_reason
from models.mamba import Mamba

CPU = torch.device("cpu")


def test_kernels_under_the_interpreter():
    # The only allowed skip is mamba-ssm's reference where mamba-ssm is absent (conftest decides).
    run_interpreted(
        "selective_scan_triton_interpreted.py", skips_allowed=not os.environ.get("MIXBENCH_REQUIRE_MAMBA_SSM")
    )


# -- bad inputs and the probe (no kernel runs) -------------------------------------------------------


def _args(**changes):
    inputs = {k: v.float() for k, v in make_inputs(2, 6, 4, 10).items()}
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(u=torch.zeros(2, 6)), r"u must be \(batch, d, T\), got shape \(2, 6\)"),
        (dict(delta=torch.zeros(2, 6, 9)), r"delta must have shape 2x6x10 .* got \(2, 6, 9\)"),
        (dict(A=torch.zeros(5, 4)), r"A must have shape 6x4"),
        (dict(B=torch.zeros(2, 3, 10)), r"B must have shape 2x4x10 .* got \(2, 3, 10\)"),
        (dict(C=torch.zeros(1, 4, 10)), r"C must have shape 2x4x10"),
        (dict(D=torch.zeros(4)), r"D must have shape 6 "),
        (dict(z=torch.zeros(2, 10, 6)), r"z must have shape 2x6x10"),
        (dict(delta_bias=torch.zeros(6, 1)), r"delta_bias must have shape 6 "),
        (dict(initial_state=torch.zeros(2, 4, 6)), r"initial_state must have shape 2x6x4"),
        (dict(u=torch.zeros(2, 6, 10, dtype=torch.float64)), r"u is float64; the kernels take bfloat16, .*chunked"),
        (dict(B=torch.zeros(2, 4, 10, dtype=torch.int32)), r"B is int32"),
        (dict(A=torch.zeros(6, 4, dtype=torch.int64)), r"A must be floating point"),
    ],
    ids=lambda x: next(iter(x)) if isinstance(x, dict) else None,
)
def test_bad_inputs_fail_in_one_line(monkeypatch, change, message):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so the device is not what gets refused
    with pytest.raises(ValueError, match=message) as info:
        selective_scan_triton(**_args(**change), delta_softplus=True)
    assert "\n" not in str(info.value)


def test_cpu_keeps_the_pytorch_scan(monkeypatch):
    """Without the interpreter the kernels refuse CPU tensors, and the mixer runs the chunked scan there."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mixer = Mamba(32)
    assert [b.name for b in Mamba.backends] == ["mamba-ssm", "triton", "torch"]
    assert mixer.select_backend(CPU, torch.float32) == "torch"
    if HAS_TRITON:
        assert "needs a CUDA device, got cpu" in triton_unavailable_reason(CPU)
        with pytest.raises(RuntimeError, match="selective_scan_triton: cannot run on these tensors: needs a CUDA"):
            selective_scan_triton(**_args())
        with pytest.raises(RuntimeError, match="backend 'triton' cannot run: needs a CUDA device"):
            Mamba(32, backend="triton")(torch.randn(1, 3, 32))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert mixer.select_backend(CPU, torch.float64) == "torch"  # the kernels compute in float32 at most


# -- on a GPU, at real sizes -----------------------------------------------------------------------

# max |kernel - chunked(float64)| / max |chunked(float64)| on the same (rounded) inputs, per input
# dtype. Both accumulate the state in float32 (or float64); the kernel rounds the output and the
# gradients of u, delta, z to the input dtype (8 mantissa bits for bf16, 11 for fp16); B, C get
# float32 gradients rounded once at the end.
GPU_TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (1e-2, 2e-2), torch.float16: (2e-3, 5e-3)}
# (batch, d_inner, d_state, T): the 125m and 1.3b widths, lengths ending mid-chunk.
GPU_SHAPES = [(2, 1536, 16, 2048 + 5), (1, 4096, 16, 1024 + 3), (2, 100, 16, 333)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(GPU_TOL), ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=str)
def test_gpu_kernel_matches_chunked_at_real_sizes(shape, dtype):
    batch, d, n, T = shape
    inputs = make_inputs(batch, d, n, T, dtype=torch.float32, seed=T, device="cuda")
    inputs["A"] = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(d, 1)  # as the mixer's init
    inputs["delta"] = inputs["delta"] - 3.0  # softplus(delta) ~ 0.001-0.1, as the mixer's init
    rounded = {k: v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v for k, v in inputs.items()}
    out, last, grads = run(selective_scan_triton, rounded)
    ref_out, ref_last, ref_grads = run(selective_scan_chunked, {k: v.double() for k, v in rounded.items()})
    tol_out, tol_grad = GPU_TOL[dtype]

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    assert rel(out, ref_out) <= tol_out and rel(last, ref_last) <= tol_out, (rel(out, ref_out), rel(last, ref_last))
    bad = {k: f"{rel(g, ref_grads[k]):.2g}" for k, g in grads.items() if not rel(g, ref_grads[k]) <= tol_grad}
    assert not bad, f"{shape} {dtype}: gradient relative errors above {tol_grad}: {bad}"


@pytest.mark.gpu
def test_gpu_mixer_picks_the_kernel_without_mamba_ssm(monkeypatch):
    """With mamba-ssm's probe failing, auto picks triton on CUDA and equals the torch backend in bf16 autocast."""
    monkeypatch.setattr(Mamba, "backends", Mamba.backends[1:])
    torch.manual_seed(0)
    mixer = Mamba(768, n_layers=24).cuda()
    assert mixer.select_backend(torch.device("cuda"), torch.float32) == "triton"
    x = torch.randn(2, 1000, 768, device="cuda")
    outs = {}
    for backend in ("triton", "torch"):
        mixer.backend = backend
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs[backend] = mixer(x)[0].float()
    assert (outs["triton"] - outs["torch"]).abs().max() <= 2e-2 * outs["torch"].abs().max()
