"""The TTT inner loop in Triton against the alternatives: correctness first, then floors and times.

    python benchmarks/ttt_kernels.py                       # GPU: 125m and 1.3b layer shapes, T = 2k, 8k, 32k
    python benchmarks/ttt_kernels.py --seq-lens 2048 --sizes 125m --repeats 3
    python benchmarks/ttt_kernels.py --quick               # CPU or GPU: the correctness checks at tiny sizes and the floors

Layer shapes are the paper's (``models.backbones.SIZES``): per layer ``batch x heads x T x head_dim``
with head_dim 64 (125m: 12 heads, 1.3b: 32), ``batch = max(1, --tokens // T)``, mini-batch 16.
Rows, forward and forward+backward of one layer's sequence op:

* ``ttt_linear triton`` / ``ttt_mlp triton``: ours (``mixbench_kernels.ttt.ttt_triton``), q, k, v in ``--dtype``;
* ``ttt_linear dual`` / ``ttt_mlp dual``: our PyTorch dual form (float32, as the layer runs it);
* ``fla chunk_ttt_linear (dtype)``: flash-linear-attention's TTT-Linear kernel (same shapes; its function
  differs in details: no per-position token scale, scaled q, no output LayerNorm/residual), in
  ``--dtype`` and in float32 (its bf16 backward does not compile under Triton 3.6);
* ``attention``: FlashAttention 2 (flash-attn) when importable, else SDPA, causal;
* ``mamba selective scan``: mamba-ssm's CUDA scan at the same model width (d_inner = 2 d_model, d_state 16).

Each implementation is first checked against its reference on the same inputs (ours against
``ttt_dual``, fla against its own ``chunk_ttt_linear_ref``, attention against a matmul softmax,
the scan against ``mixbench_kernels.selective_scan.selective_scan_reference``) at ``--check-len`` tokens;
one that fails its check, or fails to import, compile or run, is one row that says why (the
exception's first line) and is not timed; the others go on. Then: median of ``--repeats`` after
a warm-up, tokens/s (forward+backward), this implementation's time over ours (TTT-MLP rows: over our TTT-MLP kernel,
all others: over our TTT-Linear kernel), and the fraction of the floor ``max(FLOPs / peak, bytes / bandwidth)``
reached (peaks from ``--peak-tflops``/``--peak-tbps``, or a small table of known GPUs). It never
asserts a time. Without CUDA it runs the Triton kernels under ``TRITON_INTERPRET=1`` for the checks
(tiny sizes, ``--quick``) and prints the floors; the timing needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

if not torch.cuda.is_available():  # must precede the first triton import (the kernels import it lazily)
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.measure.environment import machine_summary
from mixbench_kernels.selective_scan import selective_scan_cuda, selective_scan_reference
from mixbench_kernels.ttt import fresh_state, ttt_dual, ttt_triton
from models.backbones import SIZES

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "float32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Dense tensor-core peaks (bf16 TFLOP/s) and HBM bandwidth (TB/s) of the GPUs we expect.
PEAKS = {"H200": (989.0, 4.8), "H100": (989.0, 3.35), "A100": (312.0, 2.0)}
MINI_BATCH, D_STATE = 16, 16


# -- floors ----------------------------------------------------------------------------------------


def ttt_flops(kind: str, seq: int, dim: int, b: int = MINI_BATCH) -> int:
    """Matmul FLOPs of the dual form for one (batch, head), forward (2 per multiply-add).

    Per chunk of n tokens, Linear: X W, Q W, the update X^T (lr G) (3 x 2 n d^2) and Q X^T,
    (eta * scores) G (2 x 2 n^2 d). MLP (hidden F = 4d): seven n x d x F products (two key-side
    layers, G2 W2^T, two query-side layers, two updates) and the two layers' n x n mixes.
    """
    total = 0
    for start in range(0, seq, b):
        n = min(b, seq - start)
        if kind == "linear":
            total += 6 * n * dim * dim + 4 * n * n * dim
        else:
            hidden = 4 * dim
            total += 14 * n * dim * hidden + 4 * n * n * (dim + hidden)
    return total


def floors(kind: str, batch: int, heads: int, seq: int, dim: int, elt: int) -> dict[str, tuple[float, float]]:
    """``{mode: (FLOPs, bytes)}``: the least work and HBM traffic of one call, forward and fwd+bwd.

    Bytes count what must cross HBM (inputs read, outputs written); a backward reads the inputs
    and the output gradient and writes the input gradients. Backward FLOPs: 2x forward for the
    TTT forms and the scan, 2.5x for attention (the FlashAttention convention).
    """
    bh, tok = batch * heads, batch * seq
    if kind in ("linear", "mlp"):
        fwd_flops = bh * ttt_flops(kind, seq, dim)
        fwd_bytes = bh * seq * (4 * dim * elt + 4)  # q, k, v, lr in; y out
        bwd_bytes = bh * seq * (7 * dim * elt + 8)  # q, k, v, lr, dy in; dq, dk, dv, dlr out
        return {"fwd": (fwd_flops, fwd_bytes), "fwd+bwd": (3 * fwd_flops, fwd_bytes + bwd_bytes)}
    if kind == "attention":
        fwd_flops = bh * 2 * seq * seq * dim  # causal: half of 4 T^2 d
        fwd_bytes = bh * seq * 4 * dim * elt
        return {"fwd": (fwd_flops, fwd_bytes), "fwd+bwd": (3.5 * fwd_flops, fwd_bytes + bh * seq * 7 * dim * elt)}
    width = heads * dim * 2  # the scan: d_inner channels, D_STATE states, ~9 FLOPs per (token, channel, state)
    fwd_flops = 9 * tok * width * D_STATE
    fwd_bytes = tok * (4 * width + 2 * D_STATE) * elt  # u, delta, z in, y out; B, C in
    return {"fwd": (fwd_flops, fwd_bytes), "fwd+bwd": (3 * fwd_flops, fwd_bytes * 2.5)}


# -- the implementations: inputs, a reference check, a callable ------------------------------------


def ttt_inputs(kind, batch, heads, seq, dim, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, offset=0.0):
        return (torch.randn(*shape, generator=g) * scale + offset).to(device)

    widths = (dim, 4 * dim, dim) if kind == "mlp" else (dim, dim)
    params = tuple(
        (rnd(batch, heads, a, c, scale=a**-0.5), rnd(batch, heads, 1, c, scale=0.1)) for a, c in zip(widths, widths[1:])
    )
    return dict(
        q=rnd(batch, heads, seq, dim).to(dtype),
        k=rnd(batch, heads, seq, dim).to(dtype),
        v=rnd(batch, heads, seq, dim).to(dtype),
        lr=torch.rand(batch, heads, seq, generator=g).to(device) / dim,
        params=params,
        token_scale=1.0 / torch.arange(1, MINI_BATCH + 1, device=device),
        ln_weight=rnd(heads, 1, dim, scale=0.1, offset=1.0),
        ln_bias=rnd(heads, 1, dim, scale=0.1),
    )


def ttt_call(form, inp, backward: bool, dtype=None):
    """One forward (and backward) of ``form``; returns y and the input gradients."""
    leaves = {k: inp[k].detach().to(dtype or inp[k].dtype).requires_grad_(backward) for k in ("q", "k", "v", "lr")}
    with torch.set_grad_enabled(backward):
        y, _ = form(
            leaves["q"],
            leaves["k"],
            leaves["v"],
            leaves["lr"],
            fresh_state(inp["params"]),
            token_scale=inp["token_scale"],
            ln_weight=inp["ln_weight"],
            ln_bias=inp["ln_bias"],
        )
        if not backward:
            return [y]
        return [y, *torch.autograd.grad(y.float().square().sum(), list(leaves.values()))]


def fla_inputs(inp):
    """fla's layout ``(B, T, H, d)`` from ours; eta = lr (no token scale), LayerNorm weight/bias ``(H, d)``."""
    w0, b0 = inp["params"][0]
    return dict(
        q=inp["q"].transpose(1, 2).contiguous(),
        k=inp["k"].transpose(1, 2).contiguous(),
        v=inp["v"].transpose(1, 2).contiguous(),
        w=inp["ln_weight"].squeeze(1),
        b=inp["ln_bias"].squeeze(1),
        eta=inp["lr"].transpose(1, 2).unsqueeze(-1).to(inp["q"].dtype),
        initial_state=w0.contiguous(),
        initial_state_bias=b0.contiguous(),
    )


def fla_call(fn, inp, backward: bool, **kw):
    leaves = {k: (v.detach().requires_grad_(backward) if k in ("q", "k", "v") else v) for k, v in inp.items()}
    with torch.set_grad_enabled(backward):
        y = fn(**{**leaves, "q": leaves["q"].clone()}, **kw)[0]  # fla's reference scales q in place
        if not backward:
            return [y]
        return [y, *torch.autograd.grad(y.float().square().sum(), [leaves[k] for k in ("q", "k", "v")])]


def attention_call(q, k, v, backward: bool, use_flash: bool):
    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
    with torch.set_grad_enabled(backward):
        if use_flash:
            from flash_attn import flash_attn_func

            y = flash_attn_func(*(t.transpose(1, 2) for t in leaves), causal=True).transpose(1, 2)
        else:
            y = torch.nn.functional.scaled_dot_product_attention(*leaves, is_causal=True)
        if not backward:
            return [y]
        return [y, *torch.autograd.grad(y.float().square().sum(), leaves)]


def attention_reference(q, k, v):
    s = (q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
    s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return s.softmax(-1) @ v.double()


def scan_inputs(batch, width, seq, device, dtype):
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(batch, width, seq, generator=g).to(device, dtype) for _ in range(3))
    bc = [torch.randn(batch, D_STATE, seq, generator=g).to(device, dtype) for _ in range(2)]
    a = -torch.arange(1, D_STATE + 1, dtype=torch.float32).repeat(width, 1).to(device)
    return dict(
        u=u,
        delta=delta * 0.5,
        A=a,
        B=bc[0],
        C=bc[1],
        D=torch.ones(width, device=device),
        z=z,
        delta_bias=torch.full((width,), -3.0, device=device),
    )


def scan_call(fn, inp, backward: bool):
    leaves = {k: v.detach().requires_grad_(backward and k in ("u", "delta", "z")) for k, v in inp.items()}
    with torch.set_grad_enabled(backward):
        y = fn(**leaves, delta_softplus=True)
        if not backward:
            return [y]
        return [y, *torch.autograd.grad(y.float().square().sum(), [leaves[k] for k in ("u", "delta", "z")])]


def attempt(fn):
    """``(fn(), None)``, or ``(None, one line)`` when it raises: e.g. a kernel too big for this GPU
    ("out of resource: shared memory") is reported in its row, and the other rows still run."""
    try:
        return fn(), None
    except Exception as e:
        return None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:100]}"


def rel_error(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(((a.double() - b.double()).abs().max() / b.double().abs().max()).item() for a, b in zip(ours, ref))


# -- the run ---------------------------------------------------------------------------------------


def peer(name: str, kind: str, tol: float, prepare) -> tuple:
    """One row to time: ``(name, floor kind, check error, tolerance, call(backward))``.

    A peer that fails to import, compile or run its check becomes a row whose check is the
    exception's first line and whose call is ``None``: it is reported, not timed, and the
    benchmark goes on.
    """
    got, why = attempt(prepare)
    return (name, kind, why, tol, None) if got is None else (name, kind, got[0], tol, got[1])


def implementations(kind_sizes, seq, device, dtype, check_len):
    """The rows (``peer``'s tuples) for one shape and length: ours first, then the peers on CUDA."""
    batch, heads, dim = kind_sizes
    out, check_seq = [], min(seq, check_len)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for kind in ("linear", "mlp"):
        small = ttt_inputs(kind, 1, heads, check_seq, dim, device, dtype)
        ref = ttt_call(ttt_dual, small, True, dtype=torch.float32)
        err, why = attempt(lambda: rel_error(ttt_call(ttt_triton, small, True), ref))
        if err is None:  # the backward may not fit this GPU: check (and time) the forward alone
            err = attempt(lambda: rel_error(ttt_call(ttt_triton, small, False), ref[:1]))[0]
        full = ttt_inputs(kind, batch, heads, seq, dim, device, dtype)
        out.append(
            (
                f"ttt_{kind} triton",
                kind,
                err if err is not None else why,
                tol,
                lambda bw, f=full: ttt_call(ttt_triton, f, bw),
            )
        )
        out.append(
            (
                f"ttt_{kind} dual (fp32)",
                kind,
                0.0,
                tol,
                lambda bw, f=full: ttt_call(ttt_dual, f, bw, dtype=torch.float32),
            )
        )
    if device.type != "cuda":
        return out
    # fla in the benchmark's dtype, and in float32 where that differs (its bf16 backward does not
    # compile under every Triton: "Loop-carried variable b_w has initial type fp32 but is re-assigned to bf16").
    for fla_dtype in dict.fromkeys((dtype, torch.float32)):
        fla_tol = 1e-4 if fla_dtype == torch.float32 else 3e-2
        out.append(
            peer(
                f"fla chunk_ttt_linear ({DTYPE_NAMES[fla_dtype]})",
                "linear",
                fla_tol,
                lambda d=fla_dtype: fla_peer(batch, heads, seq, dim, device, d, check_seq),
            )
        )
    try:
        import flash_attn  # noqa: F401

        use_flash = dtype != torch.float32
    except ImportError:
        use_flash = False
    out.append(
        peer(
            "attention " + ("flash-attn 2" if use_flash else "sdpa"),
            "attention",
            tol,
            lambda: attention_peer(batch, heads, seq, dim, device, dtype, check_seq, use_flash),
        )
    )
    out.append(
        peer(
            "mamba selective scan",
            "scan",
            tol,
            lambda: scan_peer(batch, 2 * heads * dim, seq, device, dtype, check_seq),
        )
    )
    return out


def fla_peer(batch, heads, seq, dim, device, dtype, check_seq):
    """fla's chunk_ttt_linear checked against its own reference: ``(check error, call)``."""
    from fla.ops.ttt import chunk_ttt_linear
    from fla.ops.ttt.naive import chunk_ttt_linear_ref

    small = fla_inputs(ttt_inputs("linear", 1, heads, check_seq, dim, device, dtype))
    ref = fla_call(chunk_ttt_linear_ref, small, True, mini_batch_size=MINI_BATCH)
    err = rel_error(fla_call(chunk_ttt_linear, small, True, chunk_size=MINI_BATCH), ref)
    full = fla_inputs(ttt_inputs("linear", batch, heads, seq, dim, device, dtype))
    return err, lambda bw: fla_call(chunk_ttt_linear, full, bw, chunk_size=MINI_BATCH)


def attention_peer(batch, heads, seq, dim, device, dtype, check_seq, use_flash):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, dim, generator=g).to(device, dtype) for _ in range(3))
    qs, ks, vs = (t[:1, :, :check_seq] for t in (q, k, v))
    err = rel_error(attention_call(qs, ks, vs, False, use_flash), [attention_reference(qs, ks, vs)])
    return err, lambda bw: attention_call(q, k, v, bw, use_flash)


def scan_peer(batch, width, seq, device, dtype, check_seq):
    small = scan_inputs(1, width, check_seq, device, torch.float32)
    err = rel_error(scan_call(selective_scan_cuda, small, True), scan_call(selective_scan_reference, small, True))
    full = scan_inputs(batch, width, seq, device, dtype)
    return err, lambda bw: scan_call(selective_scan_cuda, full, bw)


def median_time(call, backward: bool, repeats: int, device) -> float:
    call(backward)  # warm-up (compilation, autotuning)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        call(backward)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="125m,1.3b")
    p.add_argument("--seq-lens", default="2048,8192,32768")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per call: batch = max(1, tokens // T)")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check-len", type=int, default=1024, help="tokens of the correctness checks")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 tensor-core peak (default: known GPUs)")
    p.add_argument("--peak-tbps", type=float, help="HBM bandwidth in TB/s (default: known GPUs)")
    p.add_argument(
        "--quick", action="store_true", help="checks at tiny sizes and the floors only (CPU: the interpreter)"
    )
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    print(f"command: python {shlex.join(['benchmarks/ttt_kernels.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"machine: {machine_summary(device)}")
    peak = next((v for k, v in PEAKS.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    peak_flops = (args.peak_tflops or (peak[0] if peak else 0)) * 1e12
    peak_bw = (args.peak_tbps or (peak[1] if peak else 0)) * 1e12
    elt = torch.finfo(dtype).bits // 8

    shapes = {s: (SIZES[s].n_heads, SIZES[s].d_model // SIZES[s].n_heads) for s in args.sizes.split(",")}
    seq_lens = [int(t) for t in args.seq_lens.split(",")]
    print("\nfloors per call (one layer's sequence op; FLOPs, HBM bytes):")
    print("| size | T | batch | op | fwd GFLOP | fwd MB | fwd+bwd GFLOP | fwd+bwd MB |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for size, (heads, dim) in shapes.items():
        for seq in seq_lens:
            batch = max(1, args.tokens // seq)
            for kind in ("linear", "mlp", "attention", "scan"):
                f = floors(kind, batch, heads, seq, dim, elt)
                print(
                    f"| {size} | {seq} | {batch} | {kind} | {f['fwd'][0] / 1e9:.1f} | {f['fwd'][1] / 1e6:.1f} |"
                    f" {f['fwd+bwd'][0] / 1e9:.1f} | {f['fwd+bwd'][1] / 1e6:.1f} |"
                )

    if args.quick or device.type != "cuda":
        # Tiny checks: the kernels (interpreted on CPU) against ttt_dual, forward and backward.
        for kind, (heads, seq, dim) in [(k, s) for k in ("linear", "mlp") for s in ((2, 40, 16), (1, 29, 32))]:
            inp = ttt_inputs(kind, 1, heads, seq, dim, device, torch.float32)
            err = rel_error(ttt_call(ttt_triton, inp, True), ttt_call(ttt_dual, inp, True))
            verdict = "ok" if err <= 1e-4 else "FAILED"
            print(
                f"check:   ttt_{kind} triton vs dual, H={heads} T={seq} d={dim} b={MINI_BATCH}: "
                f"max relative error (y, dq, dk, dv, dlr) {err:.1e} [{verdict}]"
            )
        if device.type != "cuda":
            print("timing:  not run: needs a CUDA GPU (the Triton kernels ran under TRITON_INTERPRET=1 for the checks)")
        return

    print(
        f"\ntimes: q, k, v in {args.dtype}; median of {args.repeats} after a warm-up; "
        f"floor fraction vs {peak_flops / 1e12:.0f} TFLOP/s, {peak_bw / 1e12:.2f} TB/s"
    )
    print(
        "| size | T | implementation | check (rel err) | fwd ms | fwd+bwd ms | tokens/s fwd+bwd"
        " | this / ours (time) | floor fraction |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for size, (heads, dim) in shapes.items():
        for seq in seq_lens:
            batch = max(1, args.tokens // seq)
            impls = implementations((batch, heads, dim), seq, device, dtype, args.check_len)
            for line in time_rows(
                impls, size, seq, (batch, heads, dim), elt, args.repeats, device, (peak_flops, peak_bw)
            ):
                print(line)


def time_rows(impls, size, seq, shape, elt, repeats, device, peaks) -> Iterator[str]:
    """The table's rows for one size and length: each implementation checked, then timed.

    A row whose check failed or did not run (``call`` is ``None``) says why and is not timed; a
    timing that raises (e.g. out of shared memory) says so in its cell. The other rows go on.
    """
    batch, heads, dim = shape
    peak_flops, peak_bw = peaks
    ours = {}
    for name, kind, err, tol, call in impls:
        if call is None or isinstance(err, str) or not err <= tol:
            why = err if isinstance(err, str) else f"{err} (tol {tol})"
            yield f"| {size} | {seq} | {name} | FAILED: {why} | - | - | - | - | - |"
            continue
        fwd, why_fwd = attempt(lambda: median_time(call, False, repeats, device))
        both, why = attempt(lambda: median_time(call, True, repeats, device))
        fwd_ms = "-" if fwd is None else f"{fwd * 1e3:.2f}"
        if both is None:
            yield f"| {size} | {seq} | {name} | {err:.1e} | {fwd_ms} | {why or why_fwd} | - | - | - |"
            continue
        flops, nbytes = floors(kind, batch, heads, seq, dim, elt)["fwd+bwd"]
        floor = max(flops / peak_flops, nbytes / peak_bw) if peak_flops and peak_bw else float("nan")
        if name.endswith("triton"):
            ours[kind] = both
        slower = both / ours.get("mlp" if kind == "mlp" else "linear", float("nan"))  # TTT-MLP vs ours
        yield (
            f"| {size} | {seq} | {name} | {err:.1e} | {fwd_ms} | {both * 1e3:.2f} |"
            f" {batch * seq / both:,.0f} | {slower:.2f}x | {floor / both:.2f} |"
        )
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
