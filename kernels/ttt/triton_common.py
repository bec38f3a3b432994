"""What the TTT Triton kernels share: row helpers inside a kernel, and the launch/autograd glue.

The host side is written once here: ``_KernelFn`` and ``run_kernel`` drive any ``Launcher``.
``KernelPair`` is the launcher of one sequential walk per pass (TTT-MLP's kernels; TTT-Linear's
split kernels have their own, ``triton_linear.LinearKernels``): one program per (batch, head)
walks the chunks of the sequence; the forward kernel takes
``(Q, K, V, LR, TS, LNW, LNB, *pre, *state, Y, *saved, seq, heads, start_pos, n_chunks)``, where
``state`` (float32) holds the state in on entry and the state out on exit,
and the backward kernel ``(Q, K, V, LR, TS, LNW, LNB, *pre, *grads_in, *saved, DY, DQ, DK, DV, DLR,
DTS, DLNW, DLNB, *d_pre, *d_state, *scratch, seq, heads, start_pos, n_chunks)``, where ``d_state`` holds the
gradients of the state out on entry and those of the state in on exit, and where a state
is its weights ``(W_l, b_l for each layer)`` then the running gradient sums in the same order,
and ``saved`` the weights at the start of every chunk (padded blocks, float32). ``pre`` are the
tensors a pair's parallel pre-pass computes (PyTorch, under autograd) from the inputs, taking
out of the sequential walk what does not depend on the weights; the backward kernel writes
their gradients into ``d_pre`` (float32, zero-filled) and autograd carries them on to the inputs.

A chunk is the run of tokens inside one mini-batch. Its first position in the mini-batch is
``p`` (non-zero only for the first chunk of a state that starts mid-mini-batch); ``tl.dot``
needs every dim >= 16, so a chunk is a block of ``max(16, b)`` rows (a power of two) whose rows
past the chunk are masked to zero, and widths are padded to powers of two >= 16 with masked
columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from mixbench_kernels.ttt.inner import LN_EPS, TTTState
from mixbench_kernels.ttt.triton_support import check_supported

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# -- inside a kernel ---------------------------------------------------------------------------


@triton.jit
def centre(a, cmask, D: tl.constexpr):
    """``a`` minus its row mean over the ``D`` real columns; zero in the padding columns."""
    return tl.where(cmask[None, :], a - tl.sum(a, axis=1)[:, None] / D, 0.0)


@triton.jit
def _add_pairs(a0, a1, b0, b1):
    return a0 + b0, a1 + b1


@triton.jit
def _add_triples(a0, a1, a2, b0, b1, b2):
    return a0 + b0, a1 + b1, a2 + b2


@triton.jit
def row_sums(a, b):
    """``(sum(a), sum(b))`` over each row in one reduction: where a row spans warps, one exchange
    through shared memory (and its barriers) instead of two."""
    return tl.reduce((a, b), 1, _add_pairs)


@triton.jit
def row_sums3(a, b, c):
    """``row_sums`` of three."""
    return tl.reduce((a, b, c), 1, _add_triples)


@triton.jit
def row_layer_norm(z, cmask, D: tl.constexpr, EPS: tl.constexpr):
    """``(z_hat, rstd)`` of a LayerNorm over the last dim, without the affine part."""
    centred = centre(z, cmask, D)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + EPS)
    return centred * rstd[:, None], rstd


@triton.jit
def ln_project(a, z_hat, rstd, cmask, D: tl.constexpr):
    """``rstd * (a - mean(a) - z_hat * mean(a * z_hat))``: a LayerNorm's backward applied to ``a``."""
    return rstd[:, None] * (centre(a, cmask, D) - z_hat * (tl.sum(a * z_hat, axis=1) / D)[:, None])


@triton.jit
def chunk_bounds(c, start_pos, seq, MB: tl.constexpr, BLOCK_N: tl.constexpr):
    """Chunk ``c``: first token ``t0``, length ``n``, first position in its mini-batch ``p``, row masks."""
    t0 = tl.maximum(c * MB - start_pos, 0)
    t1 = tl.minimum((c + 1) * MB - start_pos, seq)
    rows = tl.arange(0, BLOCK_N)
    return t0, t1 - t0, t0 + start_pos - c * MB, rows, rows < t1 - t0


@triton.jit
def chunk_square(at, p, rows, valid, MB: tl.constexpr):
    """Offsets and mask of chunk ``at``'s ``rows x rows`` block in a per-chunk ``(.., MB, MB)`` tensor
    indexed by position in the mini-batch (a pre-pass output, or its gradient)."""
    pos = p + rows
    return (at * MB + pos[:, None]) * MB + pos[None, :], valid[:, None] & valid[None, :]


@triton.jit
def chunk_mix_block(MIX, at, p, rows, valid, q, x, s, lr, MB: tl.constexpr, PREC: tl.constexpr, HAS_PRE: tl.constexpr):
    """Chunk ``at``'s ``eta * (Q X^T + 1)``: loaded from the pre-pass (``chunk_mix``), or computed here
    when there is none (a decode step)."""
    if HAS_PRE:
        offs, mask = chunk_square(at, p, rows, valid, MB)
        return tl.load(MIX + offs, mask=mask, other=0.0)
    else:
        eta = tl.where(rows[None, :] <= rows[:, None], s[:, None] * lr[None, :], 0.0)
        return eta * (tl.dot(q, tl.trans(x), input_precision=PREC) + 1.0)


@triton.jit
def load_chunk(Q, K, V, LR, TS, base, tok_base, t0, p, rows, valid, cols, cmask, D: tl.constexpr):
    """A chunk's q, k, v (float32, zero-padded), learning rates and token scales (zero past the chunk)."""
    offs = base + (t0 + rows)[:, None] * D + cols[None, :]
    mask = valid[:, None] & cmask[None, :]
    q = tl.load(Q + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(K + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
    lr = tl.load(LR + tok_base + t0 + rows, mask=valid, other=0.0).to(tl.float32)
    s = tl.load(TS + p + rows, mask=valid, other=0.0).to(tl.float32)
    return offs, mask, q, x, v, lr, s


@triton.jit
def query_input_bwd(a, dzq, w, gw, s, dw, dgw, HAS_ACC: tl.constexpr, PREC: tl.constexpr):
    """The input side of a layer at the queries, ``zq = a W + b - mix G [- s (a GW + gb)]``.

    Returns ``(da, dw, dgw)``: the gradient of ``a`` through ``W`` (and ``GW``), and ``dw``/``dgw``
    with this layer's terms added. Works on a block of ``W``'s rows or columns as on all of it.
    """
    da = tl.dot(dzq, tl.trans(w), input_precision=PREC)
    dw += tl.dot(tl.trans(a), dzq, input_precision=PREC)
    if HAS_ACC:
        s_dzq = s[:, None] * dzq
        da -= tl.dot(s_dzq, tl.trans(gw), input_precision=PREC)
        dgw -= tl.dot(tl.trans(a), s_dzq, input_precision=PREC)
    return da, dw, dgw


@triton.jit
def query_output_bwd(dzq, g, mix, s, acc_q, db, dgb, ds, HAS_ACC: tl.constexpr, PREC: tl.constexpr):
    """The output side of the same layer: ``(dmix, dG, db, dgb, ds)``, the last three accumulated.

    ``acc_q = a GW + gb`` (read only when ``HAS_ACC``). On a block of the layer's output columns
    ``dmix`` is that block's part of the sum over columns.
    """
    db += tl.sum(dzq, axis=0)
    dmix = -tl.dot(dzq, tl.trans(g), input_precision=PREC)
    dg = -tl.dot(tl.trans(mix), dzq, input_precision=PREC)
    if HAS_ACC:
        s_dzq = s[:, None] * dzq
        dgb -= tl.sum(s_dzq, axis=0)
        ds -= tl.sum(dzq * acc_q, axis=1)
    return dmix, dg, db, dgb, ds


@triton.jit
def mix_bwd(dmix, scores, eta, rows):
    """``mix = eta * scores`` with ``eta[i, j] = s_i lr_j`` on the causal triangle: ``(deta, dscores)``."""
    return tl.where(rows[None, :] <= rows[:, None], dmix * scores, 0.0), dmix * eta


@triton.jit
def tanh(u):
    """``tanh`` from ``exp`` (the interpreter and every backend have it); saturates cleanly."""
    return 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)


@triton.jit
def gelu_tanh(z, C: tl.constexpr):
    """``F.gelu(z, approximate="tanh")``, its first and second derivatives (``C = sqrt(2/pi)``)."""
    t = tanh(C * (z + 0.044715 * z * z * z))
    du = C * (1.0 + 3 * 0.044715 * z * z)
    sech2 = 1.0 - t * t
    first = 0.5 * (1.0 + t) + 0.5 * z * sech2 * du
    second = sech2 * (du - z * t * du * du + 3 * 0.044715 * C * z * z)
    return 0.5 * z * (1.0 + t), first, second


# -- on the host -------------------------------------------------------------------------------


def padded(width: int) -> int:
    """A block's width: ``width`` rounded up to a power of two, at least 16 (``tl.dot``)."""
    return max(16, triton.next_power_of_2(width))


@dataclass(frozen=True)
class KernelSpec:
    """One kernel of a launcher as it is built: for the compile-time report (``benchmarks/ttt_kernels_smem.py``)."""

    name: str
    kernel: Any  # a triton JITFunction
    constants: dict
    num_warps: int
    sequential: bool  # a walk over the chunks (its loop body is a step of the chain), else parallel over them


def kernel_constants(kernel: Any, options: dict) -> dict:
    """The compile-time arguments ``kernel`` takes, out of the options every TTT kernel is offered."""
    return {name: value for name, value in options.items() if name in kernel.arg_names}


class Launcher(Protocol):
    """How one inner model's kernels run on flat ``(BH, ...)`` contiguous tensors: what
    ``_KernelFn`` and ``run_kernel`` call, whatever the kernels (one walk per pass, ``KernelPair``, or
    a walk beside parallel kernels, TTT-Linear's)."""

    n_layers: int  # of the inner model f
    n_pre: int  # how many tensors ``prepass`` returns
    # flat inputs (q, k, v, lr, ts, ln_w, ln_b), start position -> the pre-pass tensors (``pre`` above)
    prepass: Callable[[list[torch.Tensor], int], list[torch.Tensor]]

    def launch_forward(
        self, inputs: list[torch.Tensor], state: list[torch.Tensor], start_pos: int, save: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(y, state out, saved)``; ``saved`` is what the backward needs (empty tensors'
        stand-ins without ``save``)."""

    def launch_backward(
        self,
        inputs: list[torch.Tensor],
        state: list[torch.Tensor],
        saved: list[torch.Tensor],
        dy: torch.Tensor,
        d_state: list[torch.Tensor],
        start_pos: int,
    ) -> tuple[torch.Tensor, ...]:
        """``(dq, dk, dv, dlr, dts per token, dln_w, dln_b per program, *d_pre)``, float32 where not the
        inputs' dtype; ``d_state`` (the gradients of the state out on entry) becomes those of the state in."""


@dataclass(frozen=True)
class KernelPair:
    """A forward and a backward kernel for one inner model, each one sequential walk, and how to launch them."""

    n_layers: int  # of the inner model f
    fwd: Any
    bwd: Any
    constexprs: Callable[[tuple[int, ...]], dict]  # widths of f -> kernel-specific compile-time sizes
    num_warps: Callable[[tuple[int, ...]], int]
    # widths of f, rows of a chunk block -> shapes of the backward's per-program float32 scratch buffers
    scratch: Callable[[tuple[int, ...], int], list[tuple[int, ...]]] = lambda widths, block_n: []
    prepass: Callable[[list[torch.Tensor], int], list[torch.Tensor]] = lambda inputs, start_pos: []
    n_pre: int = 0

    def options(self, widths: tuple[int, ...], mb: int, dtype: torch.dtype) -> dict:
        """Compile-time sizes of both kernels, ``num_warps`` included."""
        return dict(
            **base_options(widths, mb, dtype),
            num_warps=self.num_warps(widths),
            **self.constexprs(widths),
        )

    def specs(self, widths: tuple[int, ...], mb: int, dtype: torch.dtype, has_acc: bool) -> list:
        """The two walks as a training step builds them (``benchmarks/ttt_kernels_smem.py``)."""
        fwd = dict(self.options(widths, mb, dtype), HAS_ACC=has_acc, SAVE=True, HAS_PRE=True)
        bwd = dict(self.options(widths, mb, dtype), HAS_ACC=has_acc)
        return [
            KernelSpec(name, kernel, opts, opts.pop("num_warps"), True)
            for name, kernel, opts in (("forward", self.fwd, fwd), ("backward", self.bwd, bwd))
        ]

    def launch_forward(self, inputs, state, start_pos, save):
        q, ts = inputs[0], inputs[4]
        has_pre = len(inputs) > N_INPUTS
        if not has_pre:  # placeholders the kernel does not read (it computes what the pre-pass would)
            inputs = inputs + [q] * self.n_pre
        bh, seq, _ = q.shape
        n_chunks = -(-(seq + start_pos) // ts.shape[0])
        f32 = dict(device=q.device, dtype=torch.float32)
        widths = state_widths(state)
        y = torch.empty_like(q)
        out = [t.to(torch.float32, copy=True) for t in state]  # the kernel turns the state in into the state out
        saved = []  # a dummy pointer (out[...]) when nothing is saved
        for d_in, d_out in zip(widths[:-1], widths[1:]):
            saved.append(torch.empty(bh, n_chunks, padded(d_in), padded(d_out), **f32))
            saved.append(torch.empty(bh, n_chunks, padded(d_out), **f32))
        if not save:
            saved = [out[0]] * len(saved)
        self.fwd[(bh,)](
            *inputs,
            *out,
            y,
            *saved,
            seq,
            inputs[5].shape[0],
            start_pos,
            n_chunks,
            HAS_ACC=start_pos > 0,
            SAVE=save,
            HAS_PRE=has_pre,
            **self.options(widths, ts.shape[0], q.dtype),
        )
        return y, out, saved

    def launch_backward(self, inputs, state, saved, dy, d_state, start_pos):
        q, k, v, lr, ts, ln_w, ln_b, *pre = inputs
        bh, seq, dim = q.shape
        mb, heads = ts.shape[0], ln_w.shape[0]
        f32 = dict(device=q.device, dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlr, dts_tok = torch.empty(bh, seq, **f32), torch.empty(bh, seq, **f32)
        dln_w, dln_b = torch.empty(bh, dim, **f32), torch.empty(bh, dim, **f32)
        d_pre = [torch.zeros(t.shape, **f32) for t in pre]  # the kernel writes only its chunks' blocks
        widths = state_widths(state)
        scratch = [torch.empty(bh, *shape, **f32) for shape in self.scratch(widths, padded(mb))]
        self.bwd[(bh,)](
            *inputs,
            *state[len(state) // 2 :],
            *saved,
            dy,
            dq,
            dk,
            dv,
            dlr,
            dts_tok,
            dln_w,
            dln_b,
            *d_pre,
            *d_state,
            *scratch,
            seq,
            heads,
            start_pos,
            -(-(seq + start_pos) // mb),
            HAS_ACC=start_pos > 0,
            **self.options(widths, mb, q.dtype),
        )
        return (dq, dk, dv, dlr, dts_tok, dln_w, dln_b, *d_pre)


N_INPUTS = 7  # q, k, v, lr, ts, ln_w, ln_b; the pre-pass tensors follow


def state_widths(state: list[torch.Tensor]) -> tuple[int, ...]:
    """Widths of the inner model ``(d, d_1, ..)`` from a flat state ``W1, b1, .., then the sums``."""
    weights = state[0 : len(state) // 2 : 2]
    return (weights[0].shape[1], *(w.shape[2] for w in weights))


def base_options(widths: tuple[int, ...], mb: int, dtype: torch.dtype) -> dict:
    """Compile-time sizes every TTT kernel takes; float32 inputs use full-precision dots, other
    dtypes TF32 (the state stays float32)."""
    return dict(
        D=widths[0],
        BD=padded(widths[0]),
        MB=mb,
        BLOCK_N=padded(mb),
        PREC="ieee" if dtype == torch.float32 else "tf32",
        EPS=LN_EPS,
    )


class _KernelFn(torch.autograd.Function):
    """A launcher's forward and backward on flat tensors; the state in and out are differentiable."""

    @staticmethod
    def forward(ctx, pair: Launcher, start_pos: int, checkpoint: bool, n_inputs: int, *tensors):
        inputs, state = list(tensors[:n_inputs]), list(tensors[n_inputs:])
        y, out, saved = pair.launch_forward(inputs, state, start_pos, save=not checkpoint)
        ctx.pair, ctx.start_pos, ctx.checkpoint, ctx.n_inputs = pair, start_pos, checkpoint, n_inputs
        ctx.save_for_backward(*tensors, *(() if checkpoint else saved))
        return (y, *out)

    @staticmethod
    def backward(ctx, dy, *d_out):
        pair, start_pos, n_inputs = ctx.pair, ctx.start_pos, ctx.n_inputs
        tensors = ctx.saved_tensors
        inputs = list(tensors[:n_inputs])
        state = list(tensors[n_inputs : n_inputs + len(d_out)])
        saved = list(tensors[n_inputs + len(d_out) :])
        if ctx.checkpoint:  # recompute what the forward would have saved: one more forward pass, no memory kept
            saved = pair.launch_forward(inputs, state, start_pos, save=True)[2]
        q, lr, ts, ln_w, pre = inputs[0], inputs[3], inputs[4], inputs[5], inputs[N_INPUTS:]
        seq, dim = q.shape[1:]
        mb, heads = ts.shape[0], ln_w.shape[0]
        f32 = dict(device=q.device, dtype=torch.float32)

        def given(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
            return torch.zeros(like.shape, **f32) if g is None else g.float().contiguous()

        # The launcher turns the gradients of the state out into those of the state in, in place.
        d_state = [given(g, t).clone() for g, t in zip(d_out, state)]
        dq, dk, dv, dlr, dts_tok, dln_w, dln_b, *d_pre = pair.launch_backward(
            inputs, state, saved, given(dy, q), d_state, start_pos
        )
        # Per-token token-scale gradients go to their position in the mini-batch.
        positions = (torch.arange(seq, device=q.device) + start_pos) % mb
        dts = torch.zeros(mb, **f32).index_add_(0, positions, dts_tok.sum(0))
        grads = [dq, dk, dv, dlr.to(lr.dtype), dts.to(ts.dtype)]
        grads += [g.view(-1, heads, dim).sum(0).to(ln_w.dtype) for g in (dln_w, dln_b)]
        grads += [g.to(t.dtype) for g, t in zip(d_pre, pre)]
        grads += [g.to(t.dtype) for g, t in zip(d_state, state)]
        return (None, None, None, None, *grads)


def chunk_mix(inputs: list[torch.Tensor], start_pos: int) -> list[torch.Tensor]:
    """The pre-pass: ``eta * (Q X^T + 1)`` of every chunk at once, ``(BH, n_chunks, b, b)`` float32
    (TTT-Linear's mix, TTT-MLP's first layer's).

    It depends on no weight, so batched matmuls compute it for all mini-batches in parallel and
    the sequential walk only loads it; autograd takes the kernel's ``dMIX`` on to q, k, lr and
    the token scales. Rows and columns are positions in the mini-batch: the sequence is padded
    in front by ``start_pos`` (and at the end to whole mini-batches) with zero learning rates.
    """
    q, k, _, lr, ts = inputs[:5]
    bh, seq, dim = q.shape
    mb = ts.shape[0]
    n_chunks = -(-(seq + start_pos) // mb)
    pad = (start_pos, n_chunks * mb - seq - start_pos)
    qb, kb = (F.pad(t.float(), (0, 0, *pad)).view(bh, n_chunks, mb, dim) for t in (q, k))
    eta = torch.tril(ts.float()[:, None] * F.pad(lr.float(), pad).view(bh, n_chunks, 1, mb))
    return [eta * (qb @ kb.mT + 1.0)]


def run_kernel(
    pair: Launcher,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr: torch.Tensor,
    state: TTTState,
    *,
    token_scale: torch.Tensor,
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    residual: bool,
    checkpoint: bool,
) -> tuple[torch.Tensor, TTTState]:
    """TTT over a sequence with ``pair``'s kernels; the arguments and result of ``ttt_dual``."""
    check_supported(q, state, ln_weight, residual, n_layers=pair.n_layers)
    batch, heads, seq, dim = q.shape
    bh = batch * heads

    def flat(t: torch.Tensor, *tail: int) -> torch.Tensor:
        """``(batch or 1, heads, ...)`` -> contiguous ``(batch * heads, *tail)``."""
        return t.expand(batch, heads, *t.shape[2:]).reshape(bh, *tail).contiguous()

    inputs = [flat(q, seq, dim), flat(k, seq, dim), flat(v, seq, dim), flat(lr, seq), token_scale.contiguous()]
    inputs += [ln_weight.reshape(heads, dim).contiguous(), ln_bias.reshape(heads, dim).contiguous()]
    layers = [t for layer in state.params + state.grads for t in layer]  # W1, b1, .., then the sums
    flat_state = [flat(t, *(t.shape[-1:] if i % 2 else t.shape[2:])) for i, t in enumerate(layers)]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs + flat_state)
    # A decode step (one token, no gradient) computes its 1 x 1 block in the kernel: for it a
    # pre-pass would be a few more launches and no parallelism. The backward always has it.
    if seq > 1 or needs_grad:
        inputs += [t.contiguous() for t in pair.prepass(inputs, state.pos)]
    if needs_grad:
        y, *out = _KernelFn.apply(pair, state.pos, checkpoint, len(inputs), *inputs, *flat_state)
    else:
        y, out, _ = pair.launch_forward(inputs, flat_state, state.pos, save=False)
    shaped = [t.view(batch, heads, *((1,) if i % 2 else ()), *t.shape[1:]) for i, t in enumerate(out)]
    n = len(state.params)
    params = tuple(zip(shaped[0 : 2 * n : 2], shaped[1 : 2 * n : 2]))
    grads = tuple(zip(shaped[2 * n :: 2], shaped[2 * n + 1 :: 2]))
    return y.view(batch, heads, seq, dim), TTTState(params, grads, (state.pos + seq) % len(token_scale))
