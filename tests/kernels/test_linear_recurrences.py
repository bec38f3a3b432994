"""Linear attention and the delta rule: chunked forms and fla's kernels equal the token loops.

Float64 on CPU at lengths that are not a multiple of the chunk, from a nonzero initial state,
forward and backward. fla's Triton kernels are compared in float32 where a GPU is present.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mixbench_kernels.delta_rule import delta_rule_chunked, delta_rule_fla, delta_rule_reference
from mixbench_kernels.linear_attention import linear_attention_chunked, linear_attention_fla, linear_attention_reference

F64 = torch.float64
OPS = {
    "linear_attention": (linear_attention_chunked, linear_attention_reference, linear_attention_fla),
    "delta_rule": (delta_rule_chunked, delta_rule_reference, delta_rule_fla),
}


def inputs(op: str, seq: int, dtype=F64, device="cpu", batch=2, heads=3, dim=8):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, batch, heads, seq, dim, dtype=dtype, device=device).unbind(0)
    state = torch.randn(batch, heads, dim, dim, dtype=dtype, device=device) * 0.5
    if op == "linear_attention":
        return [q, k, v, state]
    beta = torch.rand(batch, heads, seq, dtype=dtype, device=device)
    return [F.normalize(q, dim=-1), F.normalize(k, dim=-1), v, beta, state]


@pytest.mark.parametrize("seq,chunk", [(1, 4), (7, 4), (16, 4), (19, 8), (5, 64)])
@pytest.mark.parametrize("op", list(OPS))
def test_chunked_equals_the_token_loop_forward_and_backward(op, seq, chunk):
    chunked, reference, _ = OPS[op]
    args = [t.requires_grad_() for t in inputs(op, seq)]
    w_o = torch.randn(2, 3, seq, 8, dtype=F64)
    w_s = torch.randn(2, 3, 8, 8, dtype=F64)
    results = []
    for form in (lambda *a: chunked(*a, scale=0.7, chunk_size=chunk), lambda *a: reference(*a, scale=0.7)):
        o, s = form(*args)
        results.append((o, s, torch.autograd.grad((o * w_o).sum() + (s * w_s).sum(), args)))
    (o, s, grads), (o_ref, s_ref, grads_ref) = results
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads, grads_ref):
        assert g_ref.abs().max() > 0
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_chunks_chain_through_the_state():
    q, k, v, beta, s0 = inputs("delta_rule", 13)
    whole, s_whole = delta_rule_chunked(q, k, v, beta, s0, chunk_size=4)
    a, s = delta_rule_chunked(q[:, :, :6], k[:, :, :6], v[:, :, :6], beta[:, :, :6], s0, chunk_size=4)
    b, s = delta_rule_chunked(q[:, :, 6:], k[:, :, 6:], v[:, :, 6:], beta[:, :, 6:], s, chunk_size=4)
    torch.testing.assert_close(torch.cat([a, b], 2), whole)
    torch.testing.assert_close(s, s_whole)


@pytest.mark.skipif(importlib.util.find_spec("fla") is None, reason="fla is not installed")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fla's Triton kernels need a CUDA GPU")
@pytest.mark.parametrize("op", list(OPS))
def test_fla_kernel_equals_the_chunked_form_on_gpu(op):
    chunked, _, fla_kernel = OPS[op]
    args = [t.requires_grad_() for t in inputs(op, 100, dtype=torch.float32, device="cuda", dim=16)]
    results = []
    for form in (lambda *a: fla_kernel(*a, scale=0.25), lambda *a: chunked(*a, scale=0.25, chunk_size=32)):
        o, s = form(*args)
        results.append((o, s, torch.autograd.grad(o.square().sum(), args)))
    for a, b in zip(results[0][:2] + results[0][2], results[1][:2] + results[1][2]):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=2e-3)


def test_fla_wrappers_refuse_cpu_tensors_in_one_line():
    for op, (_, _, fla_kernel) in OPS.items():
        with pytest.raises(RuntimeError, match="need CUDA tensors, got cpu"):
            fla_kernel(*inputs(op, 3))
