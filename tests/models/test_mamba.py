"""Mamba (v1) and Mamba-2 mixers: registration, init, decode == forward, FLOPs, and mamba-ssm parity.

Where mamba-ssm is installed (a GPU extra) our blocks are compared with its ``Mamba`` and
``Mamba2`` modules on copied weights: on CPU through its pure-PyTorch references (its CUDA
extension stubbed for the import only), on a GPU through its fused kernels.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mixbench_kernels.ssd import ssd_reference
from models import ModelSpec, build
from models.mamba import Mamba
from models.mamba2 import Mamba2
from models.registry import get_entry, list_mixers

CPU = torch.device("cpu")


def make(kind: str, d_model: int = 32, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mamba":
        return Mamba(d_model, n_layers=4, **kwargs)
    return Mamba2(d_model, n_layers=4, **{"headdim": 16, "d_state": 8, "chunk_size": 16, **kwargs})


def test_registered_and_available_on_cpu_with_the_torch_backend():
    entries = {e.name: e for e in list_mixers()}
    for name in ("mamba", "mamba2"):
        assert entries[name].available, entries[name].unavailable_reason()
    assert [b.name for b in get_entry("mamba").backends] == ["mamba-ssm", "triton", "torch"]
    assert [b.name for b in get_entry("mamba2").backends] == ["mamba-ssm", "triton", "torch"]
    assert make("mamba").select_backend(CPU) == "torch"
    assert build(ModelSpec.parse("mamba2@mamba_native", "tiny", 50)).backends(CPU) == ["torch"]


def test_bad_settings_fail_clearly():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        Mamba(32, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        Mamba2(32, backend="triton-ish")
    with pytest.raises(ValueError, match=r"headdim 48 does not divide d_inner .* 64.*headdim=64"):
        Mamba2(32, headdim=48)
    with pytest.raises(ValueError, match=r"headdim 64 does not divide d_inner = expand \* d_model = 32; .*headdim=32"):
        Mamba2(16)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2(32, headdim=16, ngroups=3)
    with pytest.raises(ValueError, match="dt_rank"):
        Mamba(32, dt_rank=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend 'mamba-ssm' cannot run"):
            Mamba(32, backend="mamba-ssm")(torch.randn(1, 4, 32))


def test_mamba_init_follows_mamba_ssm():
    m = Mamba(64, n_layers=4, dt_min=0.001, dt_max=0.1)
    assert m.d_inner == 128 and m.dt_rank == 4 and m.d_state == 16
    assert m.in_proj.weight.shape == (256, 64) and m.in_proj.bias is None
    assert m.x_proj.weight.shape == (4 + 32, 128) and m.conv.conv.bias is not None and m.out_proj.bias is None
    assert torch.equal(m.A_log, torch.log(torch.arange(1.0, 17.0)).repeat(128, 1))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    # out_proj: PyTorch's default init (bound 1/sqrt(fan_in)) scaled by 1/sqrt(n_layers)
    assert m.out_proj.weight.abs().max() <= 1 / math.sqrt(128) / math.sqrt(4) + 1e-7


def test_mamba2_init_and_shapes():
    m = Mamba2(64, n_layers=1)  # mamba-ssm defaults: d_state 128, headdim 64
    assert (m.heads, m.headdim, m.d_state) == (2, 64, 128)
    assert m.in_proj.out_features == 2 * 128 + 2 * 128 + 2
    assert ((-torch.exp(m.A_log)).neg() >= 1).all() and (torch.exp(m.A_log) <= 16).all()
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 0.001 * 0.999 and dt.max() <= 0.1 * 1.001
    assert torch.equal(m.D, torch.ones(2)) and torch.equal(m.norm_weight, torch.ones(128))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize(("T", "prefix"), [(1, 1), (23, 0), (40, 17), (70, 33)])
def test_prefill_then_step_reproduces_forward(kind, T, prefix):
    mixer = make(kind, **({"chunk_size": 8} if kind == "mamba" else {})).double()
    x = torch.randn(2, T, 32, dtype=torch.float64)
    full, none = mixer(x)
    assert none is None
    state = mixer.init_state(2, CPU, torch.float64)
    outs = []
    if prefix:
        y, state = mixer(x[:, :prefix], state)
        outs.append(y)
    for t in range(prefix, T):
        y_t, state = mixer.step(x[:, t], state)
        outs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=1e-10)
    assert state["pos"] == T


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_forward_continues_from_a_state(kind):
    """Prefill in pieces (forward from a non-fresh state) equals one forward."""
    mixer = make(kind).double()
    x = torch.randn(1, 50, 32, dtype=torch.float64)
    full, _ = mixer(x)
    state = mixer.init_state(1, CPU, torch.float64)
    pieces = []
    for lo, hi in [(0, 3), (3, 29), (29, 50)]:
        y, state = mixer(x[:, lo:hi], state)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("arch", ["mamba@mamba_native", "mamba2@mamba_native", "mamba@transformer"])
def test_lm_prefill_then_step_reproduces_forward(arch):
    torch.manual_seed(1)
    model = build(ModelSpec.parse(arch, "tiny", 101)).double()
    ids = torch.randint(0, 101, (2, 30))
    full = model(ids)
    logits, state = model.prefill(ids[:, :11])
    torch.testing.assert_close(logits, full[:, :11], atol=1e-10, rtol=1e-8)
    for t in range(11, 30):
        logits_t, state = model.step(ids[:, t], state)
        torch.testing.assert_close(logits_t, full[:, t], atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("T", [16, 45, 200])
def test_flops_match_the_flop_counter(kind, T):
    mixer = make(kind)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        mixer(torch.randn(1, T, 32))
    assert mixer.flops(T) == counter.get_total_flops()


def test_state_size_is_conv_window_plus_ssm_state():
    m, m2 = make("mamba"), make("mamba2")
    assert m.state_size(10) == m.state_size(10_000) == 64 * 3 + 64 * 16
    assert m2.state_size(10) == (64 + 2 * 8) * 3 + 4 * 16 * 8
    state = m2.init_state(1, CPU, torch.float32)
    assert m2.state_size(1) == state["conv"].numel() + state["ssm"].numel()


def test_decode_state_stays_float32_for_half_models():
    m = make("mamba").to(torch.bfloat16)
    state = m.init_state(2, CPU, torch.bfloat16)
    assert state["ssm"].dtype == torch.float32 and state["conv"].dtype == torch.bfloat16
    y, state = m.step(torch.randn(2, 32, dtype=torch.bfloat16), state)
    assert y.dtype == torch.bfloat16 and state["ssm"].dtype == torch.float32


# --- parity with mamba-ssm's own modules --------------------------------------------------

MAMBA_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "conv.conv.weight": "conv1d.weight",
    "conv.conv.bias": "conv1d.bias",
    "x_proj.weight": "x_proj.weight",
    "dt_proj.weight": "dt_proj.weight",
    "dt_proj.bias": "dt_proj.bias",
    "A_log": "A_log",
    "D": "D",
    "out_proj.weight": "out_proj.weight",
}
MAMBA2_NAMES = {
    "in_proj.weight": "in_proj.weight",
    "conv.conv.weight": "conv1d.weight",
    "conv.conv.bias": "conv1d.bias",
    "dt_bias": "dt_bias",
    "A_log": "A_log",
    "D": "D",
    "norm_weight": "norm.weight",
    "out_proj.weight": "out_proj.weight",
}


def copy_weights(ours: torch.nn.Module, theirs: torch.nn.Module, names: dict[str, str]) -> None:
    """Load our parameters into mamba-ssm's module; the two parameter sets must match one to one."""
    mine, other = dict(ours.named_parameters()), dict(theirs.named_parameters())
    assert set(names) == set(mine) and set(names.values()) == set(other)
    with torch.no_grad():
        for a, b in names.items():
            other[b].copy_(mine[a])


def compare_forward_backward(ours, theirs, x, atol, names):
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours)[0], theirs(x_theirs)
    torch.testing.assert_close(y_ours, y_theirs, atol=atol, rtol=atol)
    w = torch.randn_like(y_ours)
    (y_ours * w).sum().backward()
    (y_theirs * w).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=atol, rtol=atol)
    params = dict(theirs.named_parameters())
    for a, b in names.items():
        torch.testing.assert_close(dict(ours.named_parameters())[a].grad, params[b].grad, atol=atol, rtol=atol)


@pytest.fixture
def no_tf32(monkeypatch):
    """Full float32 convs and matmuls on GPU, so backends differ only by summation order."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def test_mamba_matches_mamba_ssm_module_on_cpu(mamba_ssm_module, monkeypatch):
    simple = mamba_ssm_module("mamba_ssm.modules.mamba_simple")
    interface = mamba_ssm_module("mamba_ssm.ops.selective_scan_interface")
    monkeypatch.setattr(simple, "selective_scan_fn", interface.selective_scan_ref)
    monkeypatch.setattr(simple, "causal_conv1d_fn", None)
    ours = make("mamba", d_model=48)
    theirs = simple.Mamba(48, use_fast_path=False)
    copy_weights(ours, theirs, MAMBA_NAMES)
    compare_forward_backward(ours, theirs, torch.randn(2, 300, 48), 1e-4, MAMBA_NAMES)


def test_mamba2_matches_mamba_ssm_module_on_cpu(mamba_ssm_module, monkeypatch):
    """Mamba2 needs Triton for its scan and gated norm: patched with references of the same function.

    Forward with mamba-ssm's ``ssd_chunk_scan_combined_ref``; forward and backward with our
    sequential ``ssd_reference`` in its place (theirs is not differentiable once a chunk's
    decay passes e^88), which checks the block around the scan: projections, conv, norm, gate.
    """
    m2 = mamba_ssm_module("mamba_ssm.modules.mamba2")
    combined = mamba_ssm_module("mamba_ssm.ops.triton.ssd_combined")
    gated = mamba_ssm_module("mamba_ssm.ops.triton.layernorm_gated")
    monkeypatch.setattr(m2, "causal_conv1d_fn", None)
    ours = make("mamba2", d_model=32, chunk_size=32)
    theirs = m2.Mamba2(32, d_state=8, headdim=16, chunk_size=32, use_mem_eff_path=False)
    theirs.norm.forward = lambda x, z: gated.rms_norm_ref(
        x, theirs.norm.weight, None, z=z, eps=theirs.norm.eps, group_size=theirs.norm.group_size, norm_before_gate=False
    )
    copy_weights(ours, theirs, MAMBA2_NAMES)
    x = torch.randn(2, 128, 32)

    def their_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, **_):
        return combined.ssd_chunk_scan_combined_ref(x, dt, A, B, C, chunk_size, D, z, dt_bias, dt_softplus)

    monkeypatch.setattr(m2, "mamba_chunk_scan_combined", their_ref)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x), atol=1e-4, rtol=1e-4)

    def our_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False, **_):
        return ssd_reference(x, dt, A, B, C, D, z, dt_bias, dt_softplus)

    monkeypatch.setattr(m2, "mamba_chunk_scan_combined", our_ref)
    compare_forward_backward(ours, theirs, x, 1e-4, MAMBA2_NAMES)


def test_parameter_counts_match_mamba_ssm(mamba_ssm_module):
    simple = mamba_ssm_module("mamba_ssm.modules.mamba_simple")
    m2 = mamba_ssm_module("mamba_ssm.modules.mamba2")
    for ours, theirs in [(Mamba(96), simple.Mamba(96)), (Mamba2(64), m2.Mamba2(64))]:
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["mamba-ssm", "torch"])
def test_blocks_match_mamba_ssm_fused_kernels_on_gpu(mamba_ssm_module, backend, no_tf32):
    simple = mamba_ssm_module("mamba_ssm.modules.mamba_simple")
    m2 = mamba_ssm_module("mamba_ssm.modules.mamba2")
    x = torch.randn(2, 512, 64, device="cuda")
    ours = Mamba(64, backend=backend).cuda()
    theirs = simple.Mamba(64).cuda()  # fused fast path
    copy_weights(ours, theirs, MAMBA_NAMES)
    compare_forward_backward(ours, theirs, x, 2e-3, MAMBA_NAMES)
    ours2 = Mamba2(64, backend=backend).cuda()
    theirs2 = m2.Mamba2(64, chunk_size=64).cuda()  # mem-efficient fused path
    copy_weights(ours2, theirs2, MAMBA2_NAMES)
    compare_forward_backward(ours2, theirs2, x, 2e-3, MAMBA2_NAMES)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_gpu_prefill_with_mamba_ssm_kernels_then_step(mamba_ssm_module, kind, no_tf32):
    mamba_ssm_module("mamba_ssm.ops.selective_scan_interface")
    sizes = {"headdim": 32, "d_state": 64, "chunk_size": 64} if kind == "mamba2" else {}
    mixer = make(kind, d_model=64, backend="mamba-ssm", **sizes).cuda()
    x = torch.randn(2, 100, 64, device="cuda")
    with torch.no_grad():
        full, _ = mixer(x)
        y, state = mixer(x[:, :37], mixer.init_state(2, x.device, x.dtype))
        outs = [y]
        for t in range(37, 100):
            y_t, state = mixer.step(x[:, t], state)
            outs.append(y_t[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-4, rtol=1e-4)
