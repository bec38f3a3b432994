"""Our Triton kernels for the Mamba blocks: SSD (``kernels/ssd/triton_chunked.py``), the one-token conv
(``kernels/causal_conv/triton_update.py``) and SSM-state update (``kernels/ssm_step/``).

* CPU (CI): ``mamba_triton_interpreted.py`` runs in a subprocess with ``TRITON_INTERPRET=1``
  (float32 against the references and mamba-ssm's / causal-conv1d's, forward and every gradient,
  decode against prefill). Without triton it skips, unless ``MIXBENCH_REQUIRE_TRITON=1``.
* GPU: real sizes in bfloat16 against the float32 chunked PyTorch path (SSD: forward and the Triton
  backward's gradients), tolerances stated per test.
* Everywhere: bad inputs give one clear line before any kernel launches.
"""

from __future__ import annotations

import os

import pytest
import torch
from interpreted import HAS_TRITON, run_interpreted
from test_ssd import make_inputs

from mixbench_kernels.ssd import ssd_chunked, ssd_chunked_triton
from mixbench_kernels.ssm_step import ssm_state_update_reference


def test_kernels_under_the_interpreter():
    # The only allowed skips are the references of the GPU extras where they are absent.
    run_interpreted("mamba_triton_interpreted.py", skips_allowed=not os.environ.get("MIXBENCH_REQUIRE_MAMBA_SSM"))


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_ssd_triton_refuses_bad_input_in_one_line():
    inputs = make_inputs(1, 8, 4, 2, 2, 2, dtype=torch.float32)
    x, dt, A, B, C = (inputs[k] for k in ("x", "dt", "A", "B", "C"))
    cases = [
        ((x.double(), dt, A, B, C), {}, "x must be float32, bfloat16 or float16, got torch.float64"),
        ((x, dt, A, B, C), {"chunk_size": 0}, "chunk_size must be positive, got 0"),
        ((x, dt[:, :, :3], A, B, C), {}, r"expected x \(batch, T, heads, headdim\), dt \(batch, T, heads\)"),
        ((x, dt, A, B, C[..., :1]), {}, r"expected B and C \(batch, T, groups, d_state\)"),
        (
            (x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1)),
            {},
            "4 heads cannot be split",
        ),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            ssd_chunked_triton(*args, **kwargs)


def test_ssm_state_update_refuses_bad_shapes_in_one_line():
    state, x = torch.zeros(2, 6, 4), torch.zeros(2, 6)
    with pytest.raises(ValueError, match=r"A must be \(6, 4\) for state \(2, 6, 4\), got \(6, 3\)"):
        ssm_state_update_reference(state, x, x, torch.zeros(6, 3), torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"state must be \(batch, d, n\) or \(batch, heads, headdim, n\)"):
        ssm_state_update_reference(torch.zeros(6, 4), x, x, torch.zeros(6, 4), torch.zeros(2, 4), torch.zeros(2, 4))


# -- GPU: real sizes, bfloat16 ---------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
@pytest.mark.parametrize(("T", "headdim", "d_state", "groups"), [(2048, 64, 128, 1), (1000, 64, 64, 2)])
def test_ssd_triton_bf16_on_gpu(T, headdim, d_state, groups):
    """bfloat16 inputs (the state float32) against the float32 chunked path on the same rounded inputs:
    outputs within 3e-2 relative to their scale, final state within 1e-2; the Triton backward's
    gradients (bfloat16 matmul operands, float32 sums) each within 5e-2 of its largest value, in its input's dtype."""
    inputs = make_inputs(2, T, 8, headdim, groups, d_state, dtype=torch.float32, seed=1, device="cuda")
    low = {k: (v.bfloat16() if k in ("x", "z", "B", "C", "dt") else v) for k, v in inputs.items()}
    out, final = ssd_chunked_triton(**low, dt_softplus=True, return_final_state=True)
    ref, ref_final = ssd_chunked(**{k: v.float() for k, v in low.items()}, dt_softplus=True, return_final_state=True)
    assert out.dtype == torch.bfloat16 and final.dtype == torch.float32
    scale = ref.abs().max()
    torch.testing.assert_close(out.float() / scale, ref / scale, atol=3e-2, rtol=0)
    torch.testing.assert_close(final / ref_final.abs().max(), ref_final / ref_final.abs().max(), atol=1e-2, rtol=0)
    leaves = {k: v.detach().requires_grad_() for k, v in low.items()}
    ref_leaves = {k: v.detach().float().requires_grad_() for k, v in low.items()}
    w_out = torch.randn(out.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    w_final = torch.randn(final.shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    y, h = ssd_chunked_triton(**leaves, dt_softplus=True, return_final_state=True)
    y_ref, h_ref = ssd_chunked(**ref_leaves, dt_softplus=True, return_final_state=True)
    grads = torch.autograd.grad((y.float() * w_out).sum() + (h * w_final).sum(), list(leaves.values()))
    refs = torch.autograd.grad((y_ref * w_out).sum() + (h_ref * w_final).sum(), list(ref_leaves.values()))
    for name, g, r in zip(leaves, grads, refs):
        assert g.dtype == leaves[name].dtype and torch.isfinite(g).all(), name
        scale = r.abs().max()
        torch.testing.assert_close(g.float() / scale, r / scale, atol=5e-2, rtol=0, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_triton_decode_bf16_on_gpu(kind):
    """The Triton decode step against the PyTorch step from the same bfloat16 prefill state: within 3e-2."""
    from models.mamba import Mamba
    from models.mamba2 import Mamba2

    torch.manual_seed(0)
    mixer = (Mamba(256) if kind == "mamba" else Mamba2(256, headdim=64, d_state=128)).cuda().bfloat16()
    mixer.decode_backends = tuple(b for b in mixer.decode_backends if b.name != "mamba-ssm")
    assert mixer.select_backend(torch.device("cuda"), torch.bfloat16, decode=True) == "triton"
    x = torch.randn(2, 40, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        _, ours = mixer(x[:, :33], mixer.init_state(2, x.device, x.dtype))
        _, ref = mixer(x[:, :33], mixer.init_state(2, x.device, x.dtype))
        for t in range(33, 40):
            y, ours = mixer.step(x[:, t], ours)
            y_ref, ref = mixer._step_torch(x[:, t], ref)
            torch.testing.assert_close(y.float(), y_ref.float(), atol=3e-2, rtol=3e-2)
