"""bf16, the dtype every GPU run trains in, on the PyTorch paths a CPU runs: each built-in mixer's
output and gradients against the same mixer in float64, as a share of the float64 tensor's size.

Two ways in: the weights in bf16 (the latency protocol's ``dtype: bfloat16``) and float32 weights
under bf16 autocast (training and evaluation on CUDA, ``harness.engine.parallel.autocast``). bf16
keeps 8 bits of mantissa (a rounding of 2^-9, about 0.2%); a whole mixer lands within about
1.4% here. The bound, 2.5%, is relative to each tensor's own norm, so a path wrong on most of
its elements cannot pass, and it fails TTT-Linear with its inner loop left in bf16 (4%).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import pytest
import torch

from models import ModelSpec, build
from models.mixer import SequenceMixer

ARCHS = [
    "attention@transformer",
    "ttt_linear@transformer",
    "ttt_mlp@transformer",
    "ttt_linear@mamba",
    "mamba@mamba_native",
    "mamba2@mamba_native",
    "deltanet@transformer",
    "linear_attention@transformer",
]
BOUND = 2.5e-2


def first_mixer(arch: str) -> tuple[SequenceMixer, int]:
    torch.manual_seed(0)
    model = build(ModelSpec.parse(arch, "micro", 97))
    mixer = next(m for m in model.modules() if isinstance(m, SequenceMixer))
    return mixer, model.embed.weight.shape[-1]


def run(mixer: SequenceMixer, x: torch.Tensor, probe: torch.Tensor, dtype: torch.dtype, autocast: bool):
    """Output, input gradient and every parameter gradient (one flat vector), as float64."""
    mixer = copy.deepcopy(mixer).to(dtype)
    x = x.to(dtype).detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else nullcontext():
        y, _ = mixer(x)
    (y.double() * probe).sum().backward()
    grads = torch.cat([p.grad.double().flatten() for p in mixer.parameters() if p.grad is not None])
    return y.double(), x.grad.double(), grads


def relative(a: torch.Tensor, reference: torch.Tensor) -> float:
    return ((a - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "autocast"])
@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_output_and_gradients_are_within_a_share_of_float64(arch, autocast):
    mixer, d_model = first_mixer(arch)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 64, d_model, generator=g, dtype=torch.float64)
    probe = torch.randn(2, 64, d_model, generator=g, dtype=torch.float64)
    exact = run(mixer, x, probe, torch.float64, autocast=False)
    low = run(mixer, x, probe, torch.float32 if autocast else torch.bfloat16, autocast=autocast)
    errors = {name: relative(a, b) for name, a, b in zip(("output", "d input", "d params"), low, exact)}
    assert max(errors.values()) < BOUND, errors
    assert errors["output"] > 1e-4, f"nothing ran in bf16 (a float32 run is within 1e-6): {errors}"
