"""Attention: every backend equals a naive float64 reference; decode equals the full forward."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from models import ModelSpec, build
from models.attention import KV_SPARE, Attention
from models.layers import apply_rotary, rotary_cos_sin


def naive_attention(mixer: Attention, x: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention written out: explicit scores, mask, softmax, weighted sum.

    With grouped-query attention, query head ``i`` reads key/value head ``i // (heads / kv_heads)``.
    """
    b, t, d = x.shape
    h, hd, kv = mixer.n_heads, mixer.head_dim, mixer.n_kv_heads
    q, k, v = (x @ mixer.qkv.weight.T).split([d, kv * hd, kv * hd], dim=-1)
    q = q.view(b, t, h, hd).transpose(1, 2)
    shared = torch.arange(h) // (h // kv)  # the key/value head of each query head
    k, v = (z.view(b, t, kv, hd).transpose(1, 2)[:, shared] for z in (k, v))
    cos, sin = rotary_cos_sin(torch.arange(t), hd, mixer.rope_base, dtype=x.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(-1)
    y = (weights @ v).transpose(1, 2).reshape(b, t, d)
    return y @ mixer.out.weight.T


def test_rotary_preserves_norms_and_relative_positions():
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    cos, sin = rotary_cos_sin(torch.arange(5), 16, dtype=torch.float64)
    assert torch.allclose(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(16, dtype=torch.float64), torch.randn(16, dtype=torch.float64)

    def dot_at(i: int, j: int) -> torch.Tensor:
        c, s = rotary_cos_sin(torch.tensor([i, j]), 16, dtype=torch.float64)
        return apply_rotary(q, c[0], s[0]) @ apply_rotary(k, c[1], s[1])

    assert torch.allclose(dot_at(3, 1), dot_at(10, 8))  # depends only on i - j


@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_sdpa_matches_naive_reference_forward_and_backward(n_kv_heads):
    torch.manual_seed(0)
    mixer = Attention(d_model=24, n_heads=3, backend="sdpa", n_kv_heads=n_kv_heads).double()
    x = torch.randn(2, 11, 24, dtype=torch.float64, requires_grad=True)
    y, _ = mixer(x)
    y_ref = naive_attention(mixer, x)
    assert torch.allclose(y, y_ref, atol=1e-12)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, mixer.qkv.weight, mixer.out.weight], grad_out)
    grads_ref = torch.autograd.grad(y_ref, [x, mixer.qkv.weight, mixer.out.weight], grad_out)
    for g, g_ref in zip(grads, grads_ref):
        assert torch.allclose(g, g_ref, atol=1e-10)


def test_output_is_causal():
    torch.manual_seed(1)
    mixer = Attention(d_model=16, n_heads=2).double()
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 6:] += 1.0
    assert torch.allclose(mixer(x)[0][:, :6], mixer(x2)[0][:, :6])
    assert not torch.allclose(mixer(x)[0][:, 6:], mixer(x2)[0][:, 6:])


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_prefill_then_step_equals_full_forward(n_kv_heads):
    torch.manual_seed(2)
    mixer = Attention(d_model=16, n_heads=4, n_kv_heads=n_kv_heads).double()
    x = torch.randn(2, 13, 16, dtype=torch.float64)
    full, _ = mixer(x)
    y, state = mixer(x[:, :5], mixer.init_state(2, x.device, x.dtype))
    steps = [y]
    for t in range(5, 13):
        y_t, state = mixer.step(x[:, t], state)
        steps.append(y_t.unsqueeze(1))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-12)
    assert state["pos"] == 13 and state["k"].shape[2] >= 13
    assert state["k"].shape[1] == mixer.n_kv_heads  # the cache holds only the key/value heads


def storage_numbers(t: torch.Tensor) -> int:
    """Numbers held by the memory behind ``t`` (a view keeps its whole base alive)."""
    return t.untyped_storage().nbytes() // t.element_size()


def kv_caches(state: list) -> list[dict]:
    """The attention states in an LM's decode state (one list of sub-block states per block)."""
    return [sub for block in state for sub in block if isinstance(sub, dict)]


def test_kv_cache_holds_two_t_d_numbers_per_layer_plus_spare_and_grows_in_place():
    torch.manual_seed(5)
    model = build(ModelSpec.parse("attention@transformer", "micro", vocab_size=50))
    d, t = model.embed.embedding_dim, 40
    _, state = model.prefill(torch.randint(0, 50, (1, t)))
    mixers = kv_caches(state)
    assert len(mixers) == len(model.blocks)
    for st in mixers:
        capacity = st["k"].shape[2]
        assert t <= capacity <= t + KV_SPARE
        # K and V are their own tensors (not views of the QKV projection): 2 * capacity * d in all
        assert storage_numbers(st["k"]) + storage_numbers(st["v"]) == 2 * capacity * d
        assert model.blocks[0].mixer.state_size(t) == 2 * t * d
    before = [(st["k"].data_ptr(), st["v"].data_ptr()) for st in mixers]
    for token in range(KV_SPARE):
        _, state = model.step(torch.tensor([token % 50]), state)
    after = kv_caches(state)
    # every token within the reserved capacity was written in place
    assert [(st["k"].data_ptr(), st["v"].data_ptr()) for st in after] == before
    _, state = model.step(torch.tensor([1]), state)
    for st in kv_caches(state):  # the first token past the capacity doubles it (amortised O(1) per token)
        assert st["k"].shape[2] == 2 * (t + KV_SPARE) and st["pos"] == t + KV_SPARE + 1


def test_continued_prefill_equals_forward():
    torch.manual_seed(6)
    mixer = Attention(d_model=16, n_heads=2).double()
    x = torch.randn(2, 12, 16, dtype=torch.float64)
    full, _ = mixer(x)
    first, state = mixer(x[:, :5], mixer.init_state(2, x.device, x.dtype))
    second, state = mixer(x[:, 5:], state)  # several queries against a non-empty cache
    assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-12)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
def test_lm_prefill_then_step_equals_forward(backbone):
    torch.manual_seed(3)
    model = build(ModelSpec.parse(f"attention@{backbone}", "micro", vocab_size=50)).double()
    ids = torch.randint(0, 50, (2, 17))
    logits = model(ids)
    prefix_logits, state = model.prefill(ids[:, :6])
    assert torch.allclose(prefix_logits, logits[:, :6], atol=1e-10)
    for t in range(6, 17):
        step_logits, state = model.step(ids[:, t], state)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-10), f"decode differs at position {t}"


@pytest.mark.parametrize(("seq_len", "n_kv_heads"), [(32, None), (96, None), (32, 2)])
def test_analytic_flops_match_the_flop_counter(seq_len, n_kv_heads, count_flops):
    mixer = Attention(d_model=32, n_heads=4, n_kv_heads=n_kv_heads)
    with count_flops() as counter:
        mixer(torch.randn(1, seq_len, 32))
    assert mixer.flops(seq_len) == counter.get_total_flops()


def test_bad_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        Attention(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown backend 'flash'"):
        Attention(d_model=32, n_heads=4, backend="flash")
    with pytest.raises(ValueError, match="n_kv_heads 3 does not divide n_heads 4"):
        Attention(d_model=32, n_heads=4, n_kv_heads=3)


def low_precision_error(backend: str, device: str, n_kv_heads: int | None = None) -> tuple[float, float]:
    """(max |y - y_ref|, max |y_ref|) of ``backend`` in bfloat16 against the float64 naive reference.

    The weights have std 1/sqrt(d), so q.k is of order one and the softmax is far from uniform:
    a wrong scale (1/d for 1/sqrt(d)) moves the output by about half its size, while bfloat16
    rounding moves it by well under 1%. The reference runs on the same bfloat16-rounded weights
    and inputs, so only the computation differs.
    """
    torch.manual_seed(4)
    d = 128
    mixer = Attention(d_model=d, n_heads=2, backend=backend, n_kv_heads=n_kv_heads)
    for lin in (mixer.qkv, mixer.out):
        torch.nn.init.normal_(lin.weight, std=d**-0.5)
    mixer = mixer.to(torch.bfloat16)
    x = torch.randn(2, 256, d, dtype=torch.bfloat16)
    y_ref = naive_attention(copy.deepcopy(mixer).double(), x.double())
    mixer, x = mixer.to(device), x.to(device)
    assert mixer.select_backend(x.device) == backend
    y, _ = mixer(x)
    return (y.double().cpu() - y_ref).abs().max().item(), y_ref.abs().max().item()


# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.2%): 2% of max |y| is ~5x the
# error observed for sdpa on CPU, and a wrong softmax scale is ~20x beyond it.
RELATIVE_TOLERANCE = 2e-2


@pytest.mark.parametrize("n_kv_heads", [None, 1])
def test_sdpa_in_bfloat16_matches_the_float64_reference(n_kv_heads):
    error, size = low_precision_error("sdpa", "cpu", n_kv_heads)
    assert error <= RELATIVE_TOLERANCE * size, (error, size)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["flash-attn", "sdpa"])
@pytest.mark.parametrize(
    "n_kv_heads", [None, 1]
)  # 1: grouped-query (flash-attn takes fewer key/value heads as they are)
def test_gpu_backends_in_bfloat16_match_the_float64_reference(backend, n_kv_heads):
    if backend == "flash-attn":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed (pip install '.[gpu]')")
    error, size = low_precision_error(backend, "cuda", n_kv_heads)
    assert error <= RELATIVE_TOLERANCE * size, (backend, n_kv_heads, error, size)
