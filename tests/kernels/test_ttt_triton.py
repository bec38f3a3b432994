"""The Triton TTT kernels (``kernels/ttt/triton_*.py``): exact under the interpreter, fast path on a GPU.

* CPU (CI): ``ttt_triton_interpreted.py`` runs in a subprocess with ``TRITON_INTERPRET=1``
  (forward, every gradient, decode, layer wiring; float32 against ``ttt_dual``). Without triton
  it skips, unless ``MIXBENCH_REQUIRE_TRITON=1`` (set by ``.ci/run``) makes that a failure.
* GPU: real sizes (head_dim 64, mini-batch 16, lengths ending mid-mini-batch) against ``ttt_dual``
  in float64, per-dtype tolerances below; skipped without CUDA.
* Everywhere: bad inputs and the backend probe give one clear line.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from interpreted import HAS_TRITON, run_interpreted
from ttt_triton_cases import Case, make_leaves, relative_errors, run_form

from mixbench_kernels.ttt import TTTState, fresh_state, triton_unavailable_reason, ttt_dual, ttt_triton
from models.ttt import TTTMLP, TTTLinear

ROOT = Path(__file__).resolve().parents[2]
needs_gpu = pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")


def test_kernels_under_the_interpreter():
    run_interpreted("ttt_triton_interpreted.py")


# -- bad inputs and the probe (no kernel runs) -------------------------------------------------------


def _state(kind: str, bias: bool = True) -> TTTState:
    widths = (16, 64, 16) if kind == "mlp" else (16, 16)
    return fresh_state(
        tuple((torch.zeros(1, 2, a, b), torch.zeros(1, 2, 1, b) if bias else None) for a, b in zip(widths, widths[1:]))
    )


def test_refuses_what_it_does_not_compute_in_one_line(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so the device is not what gets refused
    q = torch.zeros(1, 2, 5, 16)
    opts = dict(token_scale=torch.ones(4), ln_weight=torch.ones(2, 1, 16), ln_bias=torch.zeros(2, 1, 16))
    with pytest.raises(ValueError, match="needs biases, the inner LayerNorm and the residual"):
        ttt_triton(q, q, q, q[..., 0], _state("linear"), **{**opts, "ln_weight": None})
    with pytest.raises(ValueError, match="needs biases"):
        ttt_triton(q, q, q, q[..., 0], _state("mlp", bias=False), **opts)
    with pytest.raises(ValueError, match="needs biases"):
        ttt_triton(q, q, q, q[..., 0], _state("linear"), residual=False, **opts)
    three = fresh_state(_state("mlp").params + _state("linear").params)
    with pytest.raises(ValueError, match="no kernel for an inner model of 3 layers"):
        ttt_triton(q, q, q, q[..., 0], three, **opts)


def test_probe_says_why_the_kernels_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if HAS_TRITON:
        assert "needs a CUDA device, got cpu" in triton_unavailable_reason(torch.device("cpu"))
        assert TTTMLP(32, n_heads=2).select_backend(torch.device("cpu")) == "dual"
        with pytest.raises(RuntimeError, match="backend 'triton' cannot run: needs a CUDA device"):
            TTTLinear(32, n_heads=2, backend="triton")(torch.randn(1, 3, 32))
        q = torch.zeros(1, 2, 5, 16)
        with pytest.raises(RuntimeError, match="ttt_triton: cannot run on these tensors"):
            ttt_triton(
                q,
                q,
                q,
                q[..., 0],
                _state("linear"),
                token_scale=torch.ones(4),
                ln_weight=torch.ones(2, 1, 16),
                ln_bias=torch.zeros(2, 1, 16),
            )
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert triton_unavailable_reason(torch.device("cpu")) is None
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a)
    )
    assert triton_unavailable_reason(torch.device("cpu")) == "package 'triton' is not installed"


def test_kernel_modules_do_not_import_the_backend_entry_point():
    """No import circle: the kernels and their glue take ``check_supported`` from ``triton_support``,
    which imports neither triton nor a kernel; only ``triton_backend`` imports the kernels (lazily)."""

    def imported(name: str) -> set[str]:
        tree = ast.parse((ROOT / "kernels" / "ttt" / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    for name in ("triton_common", "triton_linear", "triton_mlp"):
        assert "mixbench_kernels.ttt.triton_backend" not in imported(name), name
    support = imported("triton_support")
    assert not {m for m in support if m.startswith(("triton", "mixbench_kernels.ttt.triton_"))}, support


def test_compile_figures_come_from_the_ptxas_log_or_one_clear_line(monkeypatch):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    spec = importlib.util.spec_from_file_location("triton_aot", ROOT / "benchmarks" / "triton_aot.py")
    smem = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "triton_aot", smem)  # its dataclass looks its module up by name
    spec.loader.exec_module(smem)
    log = """ptxas info    : Function properties for _ttt_linear_bwd
    264 bytes stack frame, 300 bytes spill stores, 260 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 264 bytes cumulative stack size"""
    assert smem.ptxas_figures(log) == dict(registers=255, stack=264, spill_stores=300, spill_loads=260)
    with pytest.raises(RuntimeError, match="no 'Used .* registers' in the ptxas log"):
        smem.ptxas_figures("ptxas fatal   : Unsupported .version 9.4")


SASS = """
	.section	.text._fwd_walk,"ax",@progbits
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   BRA `(.L_x_9) ;
.L_x_1:
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
.L_x_2:
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0040*/                   STL [R1], R4 ;
        /*0050*/               @P1 BRA `(.L_x_2) ;
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0070*/                   LDL R4, [R1] ;
        /*0080*/               @P0 BRA `(.L_x_1) ;
.L_x_9:
        /*0090*/                   EXIT ;
"""


def test_a_walks_step_is_the_body_of_its_outermost_loop_in_sass(monkeypatch):
    """From the label to the branch back to it, the widest such span (an inner loop counts once);
    a branch forward (``.L_x_9``) is no loop, and a kernel without a backward branch has none."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    spec = importlib.util.spec_from_file_location("triton_aot", ROOT / "benchmarks" / "triton_aot.py")
    aot = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "triton_aot", aot)
    spec.loader.exec_module(aot)
    assert aot.loop_figures(SASS) == aot.LoopFigures(instructions=7, barriers=2, local=2)
    assert aot.loop_figures(SASS.replace("@P0 BRA `(.L_x_1)", "@P0 BRA `(.L_x_9)")) == aot.LoopFigures(3, 1, 1)
    assert aot.loop_figures(SASS.replace("@P0 BRA `(.L_x_1)", "NOP").replace("@P1 BRA `(.L_x_2)", "NOP")) is None


# -- on a GPU, at real sizes -----------------------------------------------------------------------

# max |kernel - dual(float64)| / max |dual(float64)|, per input dtype. float32 inputs use IEEE
# float32 dots; bf16/fp16 inputs use TF32 dots on float32 state, and q, k, v and the output
# (and the gradients of q, k, v) are rounded to 8 (bf16) or 11 (fp16) mantissa bits.
GPU_TOL = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (2e-2, 5e-2), torch.float16: (5e-3, 2e-2)}
GPU_CASES = [
    Case("linear", batch=2, heads=4, seq=2048 + 5, dim=64, mb=16),
    Case("linear", batch=2, heads=2, seq=301, dim=128, mb=16, pos=7),
    Case("linear", batch=1, heads=2, seq=257, dim=32, mb=8, pos=3),
    Case("mlp", batch=2, heads=4, seq=1024 + 5, dim=64, mb=16),
    Case("mlp", batch=1, heads=2, seq=203, dim=64, mb=16, pos=5),
    Case("mlp", batch=1, heads=2, seq=157, dim=32, mb=8, pos=3),
    Case("mlp", batch=1, heads=2, seq=77, dim=128, mb=16, pos=3),
]


@needs_gpu
@pytest.mark.parametrize("dtype", list(GPU_TOL), ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_gpu_kernel_matches_dual_at_real_sizes(case, dtype):
    leaves = make_leaves(case, device="cuda")
    ref_out, ref_pos, ref_grads = run_form(ttt_dual, leaves, case, torch.float64)
    # q, k, v in the tested dtype; learning rates, scales and weights stay float32 as the layer keeps them.
    out, pos, grads = run_form(_with_qkv_dtype(dtype), leaves, case, torch.float32)
    tol_out, tol_grad = GPU_TOL[dtype]
    assert pos == ref_pos
    for what, errors, tol in (
        ("output", relative_errors(out, ref_out), tol_out),
        ("gradient", relative_errors(grads, ref_grads), tol_grad),
    ):
        bad = {k: f"{e:.2g}" for k, e in errors.items() if not e <= tol}
        assert not bad, f"{case} {dtype}: {what} relative errors above {tol}: {bad}"


def _with_qkv_dtype(dtype: torch.dtype):
    """``ttt_triton`` with q, k, v cast to ``dtype`` (the rest float32), as a layer under autocast feeds it."""

    def form(q, k, v, *args, **kwargs):
        return ttt_triton(q.to(dtype), k.to(dtype), v.to(dtype), *args, **kwargs)

    return form


@needs_gpu
@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_gpu_layer_picks_the_kernel_and_decodes_with_it(cls):
    """auto picks triton on CUDA; prefill + fused steps equal the whole forward (float32, tol 1e-4)."""
    torch.manual_seed(0)
    m = cls(256, n_heads=4, mini_batch_size=16).cuda()  # head_dim 64
    assert m.select_backend(torch.device("cuda")) == "triton"
    x = torch.randn(2, 70, 256, device="cuda")
    with torch.no_grad():
        m.backend = "dual"
        reference, _ = m(x)
        m.backend = "triton"
        whole, _ = m(x)
        assert (whole - reference).abs().max() <= 1e-4 * reference.abs().max()
        y, state = m(x[:, :37], m.init_state(2, x.device, torch.float32))
        outs = [y]
        for t in range(37, 70):
            y_t, state = m.step(x[:, t], state)
            outs.append(y_t.unsqueeze(1))
    assert (torch.cat(outs, 1) - whole).abs().max() <= 1e-4 * whole.abs().max()
