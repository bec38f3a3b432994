"""Mamba (v1) selective scan: the Triton kernels, the chunked PyTorch scan, mamba-ssm, the sequential loop.

    python benchmarks/mamba_scan.py                          # CPU: T = 2048 and 8192, d_inner 128, d_state 16
    python benchmarks/mamba_scan.py --chunk-sizes 32,64,128  # sweep the chunk size (default: auto)
    python benchmarks/mamba_scan.py --quick                  # seconds
    python benchmarks/mamba_scan.py --device cuda --widths 125m,1.3b --seq-lens 2048,8192,32768 --dtype bfloat16
        --no-loop --batch 8  # (one line) GPU: ours vs the chunked scan vs mamba-ssm's kernel where it is installed
    python benchmarks/mamba_scan.py --aot 90                 # no GPU: the kernels' registers, spills, shared memory
    python benchmarks/mamba_scan.py --device cuda --ssd 125m,1.3b --seq-lens 2048,8192,32768
                                                             # adds Mamba-2's SSD at those model widths

``--ssd SIZES`` adds a second table (``ssd_rows``): Mamba-2's SSD at each size's width (heads of 64,
d_state 128, one group), the chunked PyTorch path, our Triton kernel and mamba-ssm's Triton SSD where
each can run, in bfloat16 on CUDA (float32 on CPU), each checked against the float64 chunked path
first, with the fraction of the byte floor: the bytes a forward + backward must move at least (read
x, dt, B, C; write y; read dy and the inputs again; write their gradients) over the time, against
``--peak-gbs`` (H200: 4800 GB/s).

Each length first runs every implementation once on the same inputs and prints the largest
absolute difference to the baseline (the sequential loop,
``mixbench_kernels.selective_scan.selective_scan_reference``, or with ``--no-loop`` the chunked scan), output
and every input gradient; those runs are the warm-up. It then times the forward alone and
forward + backward ``--repeats`` times each and prints a table to paste: command, machine, median
[min-max], the baseline / implementation ratio, and the fraction of the byte floor reached.

The byte floor is the time to move the bytes no implementation can avoid at the copy bandwidth
measured on the device (a large ``copy_``): the forward reads ``u, delta, z, B, C`` and writes the
output; forward + backward also reads them and the output's gradient again and writes the
gradients of ``u, delta, z, B, C`` (saved states and the small ``A, D`` terms not counted).
``floor / time`` near 1 is a bandwidth-bound kernel. It never asserts a time. Inputs are laid
out as the Mamba mixer passes them: ``(batch, d, T)`` views of time-major ``(batch, T, d)`` tensors.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.measure.environment import machine_summary
from mixbench_kernels.selective_scan import (
    auto_chunk_size,
    selective_scan_chunked,
    selective_scan_cuda,
    selective_scan_reference,
    selective_scan_triton,
    triton_unavailable_reason,
)
from mixbench_kernels.ssd import ssd_chunked, ssd_chunked_triton, ssd_triton
from models.backbones import (
    SIZES,
    get_size,
)
from models.mixer import needs_cuda_module

INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
IN_DTYPE = ("u", "delta", "B", "C", "z")  # what the mixer passes in its compute dtype; A, D, bias are float32


def make_inputs(batch: int, d: int, n: int, seq_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Inputs shaped like a freshly initialised Mamba layer's: A = -(1..n), softplus(dt) ~ 0.001-0.1."""
    g = torch.Generator().manual_seed(0)

    def time_major(channels: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(batch, seq_len, channels, generator=g) * scale + shift).to(device).transpose(1, 2)

    return {
        "u": time_major(d),
        "delta": time_major(d, scale=0.5),
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).to(device),
        "B": time_major(n),
        "C": time_major(n),
        "D": torch.ones(d, device=device),
        "z": time_major(d),
        "delta_bias": torch.log(torch.expm1(torch.exp(torch.empty(d).uniform_(-6.9, -2.3, generator=g)))).to(device),
    }


def job(scan, inputs: dict[str, torch.Tensor], weight: torch.Tensor, backward: bool = True, **kwargs):
    """Forward (+ backward) of ``scan``; returns the output and the gradients of every input."""

    def run():
        leaves = {k: v.detach().requires_grad_(backward) for k, v in inputs.items()}
        y = scan(**leaves, delta_softplus=True, **kwargs)
        if not backward:
            return [y.detach()]
        grads = torch.autograd.grad((y * weight).sum(), list(leaves.values()))
        return [y.detach(), *grads]

    return run


def timed(run, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30) -> float:
    """Bytes per second of a large ``copy_`` (read + write), best of 5: the floor's bandwidth."""
    src = torch.empty(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    return 2 * n_bytes / min(timed(lambda: dst.copy_(src), device, 5))


def floor_bytes(batch: int, d: int, n: int, seq_len: int, item: int, backward: bool) -> int:
    """Bytes every implementation must move: see the module docstring."""
    per_d, per_n = batch * d * seq_len * item, batch * n * seq_len * item
    forward = 4 * per_d + 2 * per_n  # u, delta, z, out; B, C
    return forward + (7 * per_d + 4 * per_n if backward else 0)  # + u, delta, z, dout, du, ddelta, dz; B, C, dB, dC


def widths(args) -> list[tuple[str, int]]:
    """``(label, d_inner)`` pairs: the Mamba width (2 d_model) of each named size, else ``--d-inner``."""
    if not args.widths:
        return [(str(args.d_inner), args.d_inner)]
    return [(f"{name} ({2 * SIZES[name].d_model})", 2 * SIZES[name].d_model) for name in args.widths.split(",")]


def aot_report(args) -> None:
    """The Triton kernels compiled for ``sm_<arch>`` at each width and input dtype; nothing runs."""
    from benchmarks.triton_aot import TORCH_TO_TRITON, compile_for
    from mixbench_kernels.selective_scan.triton_scan import (
        _selective_scan_bwd,
        _selective_scan_fwd,
        block_sizes,
        pointer_dtypes,
    )

    print(f"command: python {shlex.join(['benchmarks/mamba_scan.py', *sys.argv[1:]])}")
    print(f"target:  sm_{args.aot}, d_state {args.d_state}; every flag on (D, z, bias, softplus, initial state)")
    print()
    print(
        "| kernel | d_inner | input | BLOCK_D x BLOCK_N x BLOCK_T | num_warps | registers | spill stores/loads (B) "
        "| shared memory (KB) |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for label, d in widths(args):
        for dtype in args.dtype.split(","):
            in_dtype = TORCH_TO_TRITON[dtype]
            for kernel in (_selective_scan_fwd, _selective_scan_bwd):
                backward = kernel is _selective_scan_bwd
                cfg = block_sizes(d, args.d_state, backward=backward)
                num_warps = cfg.pop("num_warps")
                flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True)
                flags.update(HAS_DHLAST=True) if backward else flags.update(HAS_H0=True, SAVE=True)
                used = compile_for(kernel, {**flags, **cfg}, pointer_dtypes(kernel, in_dtype), num_warps, args.aot)
                tile = f"{cfg['BLOCK_D']} x {cfg['BLOCK_N']} x {cfg['BLOCK_T']}"
                print(f"| {kernel.__name__} | {label} | {dtype} | {tile} | {num_warps} | {used.cells()} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq-lens", default="2048,8192", help="comma-separated lengths")
    p.add_argument("--d-inner", type=int, default=128)
    p.add_argument("--widths", default="", help="sizes whose Mamba width to use, e.g. 125m,1.3b (overrides --d-inner)")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", help="dtype of u, delta, B, C, z (--aot: comma-separated)")
    p.add_argument("--chunk-sizes", default="auto", help="chunk sizes of the chunked scan (comma-separated), or 'auto'")
    p.add_argument("--no-loop", action="store_true", help="no sequential loop; the chunked scan is the baseline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="T = 256 and 1024, 2 repeats")
    p.add_argument(
        "--aot",
        type=int,
        default=0,
        metavar="ARCH",
        help="compile the Triton kernels for sm_ARCH (e.g. 90), no GPU needed; print their resources",
    )
    p.add_argument("--ssd", default="", help="also time Mamba-2's SSD at these sizes' widths, e.g. 125m,1.3b")
    p.add_argument("--peak-gbs", type=float, default=4800.0, help="memory bandwidth of the byte floor (GB/s)")
    args = p.parse_args(argv)
    if args.aot:
        aot_report(args)
        return
    if args.quick:
        args.seq_lens, args.repeats = "256,1024", 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    kernel_reason = needs_cuda_module("mamba_ssm", "selective_scan_cuda")(device)
    triton_reason = triton_unavailable_reason(device)
    bandwidth = copy_bandwidth(device)

    rows, checks = [], []
    for label, d_inner in widths(args):
        for seq_len in seq_lens:
            inputs = make_inputs(args.batch, d_inner, args.d_state, seq_len, device)
            inputs = {k: v.to(dtype) if k in IN_DTYPE else v for k, v in inputs.items()}
            weight = torch.randn(args.batch, seq_len, d_inner, device=device).transpose(1, 2)
            auto = args.chunk_sizes == "auto"
            chunks = [auto_chunk_size(seq_len)] if auto else [int(c) for c in args.chunk_sizes.split(",")]
            scans = {} if args.no_loop else {"sequential loop": (selective_scan_reference, {})}
            for chunk in chunks:
                scans[f"chunked, chunk {chunk}"] = (selective_scan_chunked, dict(chunk_size=chunk))
            if triton_reason is None:
                scans["triton (ours)"] = (selective_scan_triton, {})
            if kernel_reason is None:
                scans["mamba-ssm CUDA kernel"] = (selective_scan_cuda, {})
            jobs = {name: job(scan, inputs, weight, **kw) for name, (scan, kw) in scans.items()}
            baseline_name = next(iter(jobs))
            # Correctness first (these runs are also the warm-up).
            baseline = jobs[baseline_name]()
            for name, run in jobs.items():
                if name != baseline_name:
                    errors = [(a.float() - b.float()).abs().max().item() for a, b in zip(run(), baseline)]
                    detail = ", ".join(f"{k} {e:.1e}" for k, e in zip(INPUTS, errors[1:]))
                    checks.append(
                        f"d_inner {d_inner} T={seq_len} {name}: max |diff| to the {baseline_name}: "
                        f"output {errors[0]:.1e}; grads {detail}"
                    )
            floors = [
                floor_bytes(args.batch, d_inner, args.d_state, seq_len, dtype.itemsize, b) / bandwidth
                for b in (False, True)
            ]
            for name, (scan, kw) in scans.items():
                forward = job(scan, inputs, weight, backward=False, **kw)
                with torch.no_grad():
                    forward()
                    t_fwd = timed(forward, device, args.repeats)
                t_both = timed(jobs[name], device, args.repeats)
                rows.append((label, seq_len, name, t_fwd, t_both, floors))
            del jobs, baseline

    def cell(ts: list[float]) -> str:
        return f"{statistics.median(ts) * 1e3:.2f} [{min(ts) * 1e3:.2f}-{max(ts) * 1e3:.2f}]"

    print(f"command: python {shlex.join(['benchmarks/mamba_scan.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"machine: {machine_summary(device)}")
    print(
        f"config:  batch {args.batch}, d_state {args.d_state}, {args.dtype} inputs on {device}; median [min-max] of"
        f" {args.repeats} runs after 1 warm-up; copy bandwidth {bandwidth / 1e9:.0f} GB/s"
    )
    for what, reason in (("mamba-ssm kernel", kernel_reason), ("triton kernels", triton_reason)):
        if reason is not None:
            print(f"note:    {what} not timed: {reason}")
    for line in checks:
        print(f"check:   {line}")
    print()
    print(
        "| d_inner | T | implementation | fwd ms | fwd+bwd ms | baseline / this (fwd+bwd) "
        "| byte floor / time (fwd, fwd+bwd) |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for label, seq_len, name, t_fwd, t_both, floors in rows:
        base = next(r[4] for r in rows if r[:2] == (label, seq_len))
        ratio = statistics.median(base) / statistics.median(t_both)
        frac = f"{floors[0] / statistics.median(t_fwd):.3g}, {floors[1] / statistics.median(t_both):.3g}"
        print(f"| {label} | {seq_len} | {name} | {cell(t_fwd)} | {cell(t_both)} | {ratio:.2f}x | {frac} |")
    # The issue-22 target: ours within 1.5x of mamba-ssm's kernel, forward + backward.
    medians = {(r[0], r[1], r[2]): statistics.median(r[4]) for r in rows}
    for (label, seq_len, name), t in medians.items():
        cuda = medians.get((label, seq_len, "mamba-ssm CUDA kernel"))
        if name == "triton (ours)" and cuda is not None:
            print(
                f"ratio:   d_inner {label}, T={seq_len}: triton / mamba-ssm fwd+bwd time = {t / cuda:.2f}"
                " (target <= 1.5)"
            )
    if args.ssd:
        ssd_rows(args, device, seq_lens)


SSD_INPUTS = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def ssd_inputs(
    batch: int, heads: int, seq_len: int, dtype: torch.dtype, device: torch.device
) -> dict[str, torch.Tensor]:
    """Mamba-2's SSD inputs at a fresh layer's scales: headdim 64, d_state 128, one group, A in [-16, -1]."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype)

    return {
        "x": rand(batch, seq_len, heads, 64),
        "dt": rand(batch, seq_len, heads, scale=0.5),
        "A": -torch.empty(heads).uniform_(1, 16, generator=g).to(device),
        "B": rand(batch, seq_len, 1, 128),
        "C": rand(batch, seq_len, 1, 128),
        "D": torch.ones(heads, device=device),
        "dt_bias": torch.log(torch.expm1(torch.exp(torch.empty(heads).uniform_(-6.9, -2.3, generator=g)))).to(device),
    }


def ssd_rows(args: argparse.Namespace, device: torch.device, seq_lens: list[int]) -> None:
    """Mamba-2's SSD, forward + backward: every implementation that runs here, checked, timed, against the byte floor."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    implementations = {
        "chunked PyTorch": (ssd_chunked, None),
        "ours (Triton)": (ssd_chunked_triton, triton_unavailable_reason(device)),
    }
    implementations["mamba-ssm Triton SSD"] = (
        ssd_triton,
        needs_cuda_module("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined")(device),
    )
    rows, notes = [], [f"{name} not timed: {why}" for name, (_, why) in implementations.items() if why]
    for size in args.ssd.split(","):
        heads = 2 * get_size(size).d_model // 64
        for seq_len in seq_lens:
            inputs = ssd_inputs(args.batch, heads, seq_len, dtype, device)
            weight = torch.randn(args.batch, seq_len, heads, 64, device=device, dtype=dtype)

            def run(scan, data=inputs, weight=weight):
                leaves = {k: v.detach().requires_grad_() for k, v in data.items()}
                y = scan(**leaves, dt_softplus=True)
                return [y.detach(), *torch.autograd.grad((y * weight).float().sum(), list(leaves.values()))]

            exact = run(ssd_chunked, {k: v.double() for k, v in inputs.items()}, weight.double())
            floor = (
                sum(inputs[k].numel() * inputs[k].element_size() for k in ("x", "dt", "B", "C")) * 3
                + 2 * inputs["x"].numel() * inputs["x"].element_size()
            )
            for name, (scan, why) in implementations.items():
                if why:
                    continue
                errors = [
                    ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                    for a, b in zip(run(scan), exact)
                ]
                notes.append(
                    f"{size} T={seq_len} {name}: max |diff| / max |float64| output {errors[0]:.1e}, grads "
                    + ", ".join(f"{k} {e:.1e}" for k, e in zip(SSD_INPUTS, errors[1:]))
                )
                t = statistics.median(timed(lambda s=scan: run(s), device, args.repeats))
                rows.append((size, heads, seq_len, name, t, floor / t / 1e9))
    print()
    print(
        f"Mamba-2 SSD: batch {args.batch}, headdim 64, d_state 128, 1 group, {str(dtype).removeprefix('torch.')} on {device},"
        f" forward + backward, median of {args.repeats} runs after 1 warm-up; byte floor at {args.peak_gbs:.0f} GB/s"
    )
    for line in notes:
        print(f"check:   {line}")
    print()
    print(
        "| size | heads | T | implementation | fwd+bwd ms | chunked / this | GB/s over the floor | fraction of the floor |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    base = {(size, seq_len): t for size, _, seq_len, name, t, _ in rows if name == "chunked PyTorch"}
    for size, heads, seq_len, name, t, gbs in rows:
        ratio = base[(size, seq_len)] / t
        print(
            f"| {size} | {heads} | {seq_len} | {name} | {t * 1e3:.1f} | {ratio:.2f}x | {gbs:.0f} | {gbs / args.peak_gbs:.3f} |"
        )


if __name__ == "__main__":
    main()
