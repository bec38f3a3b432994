"""``mixbench::ttt``, the TTT op as a custom op: the same numbers as the backend it dispatches to,
a valid op (``torch.library.opcheck``), and a TTT layer that ``torch.compile`` takes whole.

On CPU the op dispatches to ``dual``, and once to ``triton`` under the interpreter (in a
subprocess: ``TRITON_INTERPRET`` must be set before triton is imported). ``aot_eager`` runs
Dynamo and AOTAutograd (the fake implementations, the backward op) without the slow C++
compile of Inductor.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixbench_kernels.ttt import TTTState, fresh_state, ttt_dual
from mixbench_kernels.ttt.op import ttt
from models.ttt import TTTMLP, TTTLinear


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def case(widths: tuple[int, ...], dtype: torch.dtype, seq: int = 21, b: int = 8, pos: int = 0, seed: int = 0):
    """Leaves (inputs and the initial state, a mid-mini-batch one when ``pos``) of one op call."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    batch, heads, dim = 2, 2, widths[0]
    params = tuple(
        (rnd(batch, heads, a, c, scale=a**-0.5), rnd(batch, heads, 1, c, scale=0.1)) for a, c in zip(widths, widths[1:])
    )
    sums = tuple((rnd(*w.shape, scale=0.01), rnd(*bias.shape, scale=0.01)) for w, bias in params) if pos else None
    return dict(
        q=rnd(batch, heads, seq, dim),
        k=rnd(batch, heads, seq, dim),
        v=rnd(batch, heads, seq, dim),
        lr=(torch.rand(batch, heads, seq, generator=g, dtype=dtype) / dim).requires_grad_(),
        state=TTTState(params, sums, pos) if pos else fresh_state(params),
        token_scale=(1.0 / torch.arange(1, b + 1, dtype=dtype)).requires_grad_(),
        ln_weight=(1 + rnd(heads, 1, dim, scale=0.1)).detach().requires_grad_(),
        ln_bias=rnd(heads, 1, dim, scale=0.1),
    )


def leaves_of(c: dict) -> list[torch.Tensor]:
    state = [t for layer in c["state"].params + c["state"].grads for t in layer]
    return [c[k] for k in ("q", "k", "v", "lr", "token_scale", "ln_weight", "ln_bias")] + [
        t for t in state if t.requires_grad
    ]


def outputs_and_grads(form, c: dict) -> list[torch.Tensor]:
    """y, the state out, and the gradient of a loss on both with respect to every leaf."""
    y, state = form(
        c["q"],
        c["k"],
        c["v"],
        c["lr"],
        c["state"],
        token_scale=c["token_scale"],
        ln_weight=c["ln_weight"],
        ln_bias=c["ln_bias"],
    )
    out = [y, *(t for layer in state.params + state.grads for t in layer)]
    loss = sum((t * torch.linspace(-1, 1, t.numel(), dtype=t.dtype).view(t.shape)).sum() for t in out)
    return [t.detach() for t in out] + list(torch.autograd.grad(loss, leaves_of(c)))


@pytest.mark.parametrize("widths", [(8, 8), (8, 32, 8)], ids=["linear", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pos", [0, 5], ids=["fresh", "mid-mini-batch"])
def test_the_op_computes_what_its_backend_computes_forward_and_backward(widths, dtype, pos):
    c = case(widths, dtype, pos=pos)
    direct = outputs_and_grads(ttt_dual, c)
    through = outputs_and_grads(lambda *a, **kw: ttt("dual", *a, **kw, through_op=True), c)
    assert len(direct) == len(through) > 10
    for a, b in zip(direct, through):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # the backward recomputes the same ops: exact


def test_opcheck_passes_on_both_ops():
    c = case((8, 8), torch.float64, seq=11, pos=3)
    state = [t for layer in c["state"].params + c["state"].grads for t in layer]
    inputs = [c[k] for k in ("q", "k", "v", "lr", "token_scale", "ln_weight", "ln_bias")] + state
    torch.library.opcheck(torch.ops.mixbench.ttt.default, ("dual", inputs, 3))
    grads = [torch.randn_like(c["q"]), *(torch.randn_like(t) for t in state)]
    torch.library.opcheck(torch.ops.mixbench.ttt_backward.default, ("dual", [t.detach() for t in inputs], 3, grads))


@pytest.mark.parametrize("cls", [TTTLinear, TTTMLP])
def test_a_ttt_layer_compiles_whole_and_trains_to_the_same_gradients(cls):
    torch.manual_seed(0)
    layer = cls(16, n_heads=2, backend="dual", mini_batch_size=4)
    x = torch.randn(2, 11, 16)  # two whole mini-batches and a partial one
    explained = torch._dynamo.explain(layer)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    runs = []
    for fn in (layer, compiled):
        layer.zero_grad()
        y = fn(x)[0]
        y.square().sum().backward()
        runs.append([y.detach(), *(p.grad.clone() for p in layer.parameters())])
    for eager, comp in zip(*runs):
        torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-7)


def test_eager_calls_the_backend_directly_and_bad_input_is_one_line():
    c = case((8, 8), torch.float64)
    y_direct = ttt(
        "dual",
        c["q"],
        c["k"],
        c["v"],
        c["lr"],
        c["state"],
        token_scale=c["token_scale"],
        ln_weight=c["ln_weight"],
        ln_bias=c["ln_bias"],
    )[0]
    assert y_direct.grad_fn is not None and "mixbench" not in type(y_direct.grad_fn).__name__.lower()
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'; one of triton, dual, primal"):
        ttt(
            "cuda-magic",
            c["q"],
            c["k"],
            c["v"],
            c["lr"],
            c["state"],
            token_scale=c["token_scale"],
            ln_weight=c["ln_weight"],
            ln_bias=c["ln_bias"],
        )
    no_bias = fresh_state(((c["state"].params[0][0], None),))
    with pytest.raises(ValueError, match="every inner layer needs a bias"):
        ttt(
            "dual",
            c["q"],
            c["k"],
            c["v"],
            c["lr"],
            no_bias,
            through_op=True,
            token_scale=c["token_scale"],
            ln_weight=c["ln_weight"],
            ln_bias=c["ln_bias"],
        )


COMPILED_TRITON_LAYER = """
import torch
from models.ttt import TTTLinear
torch.manual_seed(0)
layer = TTTLinear(32, n_heads=2, backend="triton", mini_batch_size=16)
x = torch.randn(1, 21, 32)
runs = []
for fn in (layer, torch.compile(layer, fullgraph=True, backend="aot_eager")):
    layer.zero_grad()
    y = fn(x)[0]
    y.square().sum().backward()
    runs.append([y.detach(), *(p.grad.clone() for p in layer.parameters())])
assert all(torch.equal(a, b) for a, b in zip(*runs)), "compiled != eager"
print("compiled == eager")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_the_triton_backend_compiles_whole_through_the_op_under_the_interpreter():
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", COMPILED_TRITON_LAYER], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and "compiled == eager" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
