"""The TTT op as one ``torch.library`` custom op, so that ``torch.compile`` sees it as a single node.

``torch.compile`` cannot trace into a Triton launch wrapped in an ``autograd.Function`` or through
``ttt_dual``'s Python loop over hundreds of mini-batches without breaking the graph or unrolling
it. ``mixbench::ttt`` is opaque to the compiler: it names the backend (a key of
``mixbench_kernels.ttt.FORMS``) and dispatches to it, has a fake implementation (output shapes and dtypes
from the inputs') and an autograd formula. The backward is a second custom op,
``mixbench::ttt_backward``, that recomputes the chosen backend's forward under autograd and
differentiates it: the op keeps only its inputs between forward and backward (as
``ttt_triton``'s ``checkpoint=True`` does), for one more forward pass of time. One mechanism for
every backend, and the backend's own gradients are used unchanged.

``ttt`` is what the layer calls: while ``torch.compile`` traces, it goes through the op; in eager
mode it calls the backend directly, so eager training keeps the backend's own autograd (for
``triton``, the stored per-mini-batch weights) and its numbers bit for bit.

The op covers the inner models ``models/ttt.py`` builds: every dense layer has a bias, with the
inner LayerNorm and the residual. The state is passed as a flat list ``W1, b1, .., then the
gradient sums`` and comes back the same way, with the same shapes and dtypes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mixbench_kernels.ttt.inner import TTTState

N_FIXED = 7  # q, k, v, lr, token_scale, ln_weight, ln_bias; the state's tensors follow


def _forms() -> dict:
    from mixbench_kernels.ttt import FORMS  # the package imports this module: look the table up at call time

    return FORMS


def _flatten(state: TTTState) -> list[torch.Tensor]:
    return [t for layer in state.params + state.grads for t in layer]


def _unflatten(flat: list[torch.Tensor], pos: int) -> TTTState:
    n = len(flat) // 4
    return TTTState(
        tuple(zip(flat[0 : 2 * n : 2], flat[1 : 2 * n : 2])), tuple(zip(flat[2 * n :: 2], flat[2 * n + 1 :: 2])), pos
    )


def _run(backend: str, tensors: list[torch.Tensor], pos: int) -> list[torch.Tensor]:
    """``backend``'s forward on the op's flat inputs: ``[y, *state out]``."""
    q, k, v, lr, ts, ln_w, ln_b, *flat = tensors
    y, state = _forms()[backend](q, k, v, lr, _unflatten(flat, pos), token_scale=ts, ln_weight=ln_w, ln_bias=ln_b)
    return [y, *_flatten(state)]


@torch.library.custom_op("mixbench::ttt", mutates_args=())
def _ttt_op(backend: str, inputs: list[torch.Tensor], pos: int) -> list[torch.Tensor]:
    """``[y, *state out]`` of ``backend`` on ``[q, k, v, lr, token_scale, ln_weight, ln_bias, *state in]``."""
    y, *out = _run(backend, inputs, pos)
    # Fresh contiguous tensors in the state's dtype: an op's outputs may not alias its inputs
    # (a chunk that ends mid-mini-batch returns the weights it was given).
    state_in = inputs[N_FIXED:]
    return [
        y.contiguous(),
        *(o.to(s.dtype).clone(memory_format=torch.contiguous_format) for o, s in zip(out, state_in)),
    ]


@_ttt_op.register_fake
def _(backend: str, inputs: list[torch.Tensor], pos: int) -> list[torch.Tensor]:
    q, state_in = inputs[0], inputs[N_FIXED:]
    return [q.new_empty(q.shape), *(s.new_empty(s.shape) for s in state_in)]


@contextmanager
def _autograd_inside_op() -> Iterator[None]:
    """Record autograd again: a custom op's implementation runs with the Autograd dispatch keys
    excluded (it is below autograd), and the recompute needs them for one nested forward/backward."""
    include, exclude = torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set()
    with torch._C._ForceDispatchKeyGuard(include, exclude.remove(torch._C.DispatchKey.AutogradFunctionality)):
        with torch.enable_grad():
            yield


@torch.library.custom_op("mixbench::ttt_backward", mutates_args=())
def _ttt_backward(backend: str, inputs: list[torch.Tensor], pos: int, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of every input of ``mixbench::ttt`` given those of its outputs: recompute, then autograd."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    with _autograd_inside_op():
        outs = _run(backend, leaves, pos)
    used = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
    got = torch.autograd.grad([o for o, _ in used], leaves, [g.to(o.dtype) for o, g in used], allow_unused=True)
    return [
        torch.zeros(t.shape, dtype=t.dtype, device=t.device) if g is None else g.contiguous()
        for g, t in zip(got, inputs)
    ]


@_ttt_backward.register_fake
def _(backend: str, inputs: list[torch.Tensor], pos: int, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.new_empty(t.shape) for t in inputs]


def _setup_context(ctx, inputs, output) -> None:
    backend, tensors, pos = inputs
    ctx.backend, ctx.pos = backend, pos
    ctx.save_for_backward(*tensors)


def _backward(ctx, grads):
    tensors = list(ctx.saved_tensors)
    like = [tensors[0], *tensors[N_FIXED:]]  # y has q's shape and dtype, the state out the state in's
    grads = [torch.zeros(t.shape, dtype=t.dtype, device=t.device) if g is None else g for g, t in zip(grads, like)]
    return None, torch.ops.mixbench.ttt_backward(ctx.backend, tensors, ctx.pos, grads), None


_ttt_op.register_autograd(_backward, setup_context=_setup_context)


def ttt(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    state: TTTState,
    *,
    token_scale: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    through_op: bool | None = None,
) -> tuple[torch.Tensor, TTTState]:
    """TTT over a sequence with ``backend`` (a key of ``FORMS``); as ``ttt_dual`` with the layer's knobs.

    ``through_op``: through ``mixbench::ttt`` (True), the backend directly (False), or the op
    exactly while ``torch.compile`` traces (None, the layer's call; see the module doc).
    """
    if backend not in _forms():
        raise ValueError(f"mixbench::ttt: unknown backend {backend!r}; one of {', '.join(_forms())}")
    if not (torch.compiler.is_compiling() if through_op is None else through_op):
        return _forms()[backend](q, k, v, lr, state, token_scale=token_scale, ln_weight=ln_weight, ln_bias=ln_bias)
    flat = _flatten(state)
    if any(t is None for t in flat):
        raise ValueError("mixbench::ttt: every inner layer needs a bias (as models/ttt.py builds them); use ttt_dual")
    y, *out = _ttt_op(backend, [q, k, v, lr, token_scale, ln_weight, ln_bias, *flat], state.pos)
    return y, _unflatten(out, (state.pos + q.shape[2]) % len(token_scale))
