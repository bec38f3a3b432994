"""Mamba and Mamba-2 decode through mamba-ssm's fused one-token kernels equals our PyTorch step.

The fused path (``_step_fused``) calls two thin wrappers (``models.mamba.DECODE_KERNELS``); on
CPU they are replaced by the libraries' own pure-PyTorch references of the same kernels (``selective_state_update_ref``,
``causal_conv1d_update_ref``), which share their in-place state contract. On a GPU the real
kernels run (``test_fused_decode_on_gpu``).
"""

from __future__ import annotations

import pytest
import torch

import models.mamba
from models.mamba import Mamba
from models.mamba2 import Mamba2
from models.mixer import Backend, always

CPU = torch.device("cpu")


@pytest.fixture
def conv_update_ref(causal_conv1d_interface):
    return causal_conv1d_interface.causal_conv1d_update_ref


def make(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mamba":
        return Mamba(32, n_layers=2)
    return Mamba2(32, n_layers=2, headdim=16, d_state=8, ngroups=2, chunk_size=8)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_fused_decode_equals_the_torch_step_and_updates_the_state_in_place(
    kind, monkeypatch, mamba_ssm_module, conv_update_ref
):
    ssu_ref = mamba_ssm_module("mamba_ssm.ops.triton.selective_state_update").selective_state_update_ref
    cls = Mamba if kind == "mamba" else Mamba2

    def conv_update(x, conv_state, weight, bias, activation):  # the wrapper's casts, then the reference
        return conv_update_ref(x, conv_state, weight.to(x.dtype), bias.to(x.dtype), activation=activation)

    monkeypatch.setitem(models.mamba.DECODE_KERNELS, "mamba-ssm", (conv_update, ssu_ref))
    mixer = make(kind)
    x = torch.randn(2, 14, 32)
    full, _ = mixer(x)
    _, torch_state = mixer(x[:, :5], mixer.init_state(2, CPU, x.dtype))
    torch_steps = []
    for t in range(5, 14):
        y, torch_state = mixer.step(x[:, t], torch_state)
        torch_steps.append(y)

    monkeypatch.setattr(cls, "decode_backends", (Backend("mamba-ssm", always), Backend("torch", always)))
    assert (
        mixer.select_backend(CPU, x.dtype) == "torch" and mixer.select_backend(CPU, x.dtype, decode=True) == "mamba-ssm"
    )
    _, state = mixer(x[:, :5], mixer.init_state(2, CPU, x.dtype))
    buffers = (state["conv"], state["ssm"])
    for i, t in enumerate(range(5, 14)):
        y, state = mixer.step(x[:, t], state)
        torch.testing.assert_close(y, torch_steps[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(y, full[:, t], atol=1e-5, rtol=1e-4)
    assert state["conv"] is buffers[0] and state["ssm"] is buffers[1] and state["pos"] == 14  # updated in place
    torch.testing.assert_close(state["ssm"], torch_state["ssm"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state["conv"], torch_state["conv"])


def test_decode_backend_is_torch_on_cpu_and_recorded_apart():
    from models import ModelSpec, build

    model = build(ModelSpec.parse("mamba@mamba_native", "micro", vocab_size=50))
    assert model.backends(CPU, torch.float32, decode=True) == ["torch"]
    reason = Mamba.decode_backends[0].unavailable_reason(CPU)
    assert reason is not None  # not installed, no GPU, or not a CUDA device: said in one line
    assert (
        [b.name for b in Mamba2.decode_backends]
        == [b.name for b in Mamba.decode_backends]
        == ["mamba-ssm", "triton", "torch"]
    )


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_decode_on_gpu(kind, dtype):
    """The real Triton/CUDA kernels against our PyTorch step, from the same prefill state."""
    device = torch.device("cuda")
    mixer = make(kind).to(device=device, dtype=dtype)
    if mixer.select_backend(device, dtype, decode=True) != "mamba-ssm":
        pytest.skip(f"mamba-ssm decode kernels unavailable: {mixer.decode_backends[0].unavailable_reason(device)}")
    x = torch.randn(2, 40, 32, device=device, dtype=dtype)
    with torch.no_grad():
        _, fused = mixer(x[:, :33], mixer.init_state(2, device, dtype))
        _, ours = mixer(x[:, :33], mixer.init_state(2, device, dtype))
        tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2}[dtype]
        for t in range(33, 40):
            y_fused, fused = mixer.step(x[:, t], fused)
            y_ours, ours = mixer._step_torch(x[:, t], ours)
            torch.testing.assert_close(y_fused.float(), y_ours.float(), atol=tol, rtol=tol)
