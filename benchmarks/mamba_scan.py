"""Mamba (v1) selective scan: chunked PyTorch scan vs the sequential loop, forward + backward.

    python benchmarks/mamba_scan.py                          # CPU: T = 2048 and 8192, d_inner 128, d_state 16
    python benchmarks/mamba_scan.py --chunk-sizes 32,64,128  # sweep the chunk size (default: auto)
    python benchmarks/mamba_scan.py --device cuda            # adds mamba-ssm's CUDA kernel when installed
    python benchmarks/mamba_scan.py --quick                  # seconds
    python benchmarks/mamba_scan.py --device cuda --ssd 125m,1.3b --seq-lens 2048,8192,32768
                                                             # adds Mamba-2's SSD at those model widths

``--ssd SIZES`` adds a second table (``ssd_rows``): Mamba-2's SSD at each size's width (heads of 64,
d_state 128, one group), the chunked PyTorch path, our Triton kernel and mamba-ssm's Triton SSD where
each can run, in bfloat16 on CUDA (float32 on CPU), each checked against the float64 chunked path
first, with the fraction of the byte floor: the bytes a forward + backward must move at least (read
x, dt, B, C; write y; read dy and the inputs again; write their gradients) over the time, against
``--peak-gbs`` (H200: 4800 GB/s).

Each length first runs every implementation once on the same inputs and prints the largest
absolute difference to the sequential loop (``kernels.selective_scan.selective_scan_reference``),
output and every input gradient; those runs are the warm-up. It then times forward + backward
``--repeats`` times and prints a table to paste: command, machine, median [min-max] and the
loop / implementation ratio. It never asserts a time. Inputs are laid out as the Mamba mixer
passes them: ``(batch, d, T)`` views of time-major ``(batch, T, d)`` tensors.
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

from kernels.selective_scan import (  # noqa: E402
    auto_chunk_size,
    selective_scan_chunked,
    selective_scan_cuda,
    selective_scan_reference,
)
from harness.environment import machine_summary  # noqa: E402
from models.mixer import needs_cuda_module  # noqa: E402
from kernels.ssd import ssd_chunked, ssd_chunked_triton, ssd_triton  # noqa: E402
from kernels.ttt import triton_unavailable_reason  # noqa: E402
from models.backbones import get_size  # noqa: E402

INPUTS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")




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


def job(scan, inputs: dict[str, torch.Tensor], weight: torch.Tensor, **kwargs):
    """Forward + backward of ``scan``; returns the output and the gradients of every input."""

    def run():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        y = scan(**leaves, delta_softplus=True, **kwargs)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq-lens", default="2048,8192", help="comma-separated lengths")
    p.add_argument("--d-inner", type=int, default=128)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk-sizes", default="auto", help="comma-separated chunk sizes of the chunked scan, or 'auto'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="T = 256 and 1024, 2 repeats")
    p.add_argument("--ssd", default="", help="also time Mamba-2's SSD at these sizes' widths, e.g. 125m,1.3b")
    p.add_argument("--peak-gbs", type=float, default=4800.0, help="memory bandwidth of the byte floor (GB/s)")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_lens, args.repeats = "256,1024", 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    kernel_reason = needs_cuda_module("mamba_ssm", "selective_scan_cuda")(device)

    rows, checks = [], []
    for seq_len in seq_lens:
        inputs = make_inputs(args.batch, args.d_inner, args.d_state, seq_len, device)
        weight = torch.randn(args.batch, seq_len, args.d_inner, device=device).transpose(1, 2)
        auto = args.chunk_sizes == "auto"
        chunks = [auto_chunk_size(seq_len)] if auto else [int(c) for c in args.chunk_sizes.split(",")]
        jobs = {"sequential loop": job(selective_scan_reference, inputs, weight)}
        for chunk in chunks:
            jobs[f"chunked, chunk {chunk}"] = job(selective_scan_chunked, inputs, weight, chunk_size=chunk)
        if kernel_reason is None:
            jobs["mamba-ssm CUDA kernel"] = job(selective_scan_cuda, inputs, weight)
        # Correctness first (these runs are also the warm-up).
        reference = jobs["sequential loop"]()
        for name, run in jobs.items():
            if name != "sequential loop":
                errors = [(a - b).abs().max().item() for a, b in zip(run(), reference)]
                detail = ", ".join(f"{k} {e:.1e}" for k, e in zip(INPUTS, errors[1:]))
                checks.append(f"T={seq_len} {name}: max |diff| to the loop: output {errors[0]:.1e}; grads {detail}")
        times = {name: timed(run, device, args.repeats) for name, run in jobs.items()}
        loop = statistics.median(times["sequential loop"])
        rows += [(seq_len, name, t, loop / statistics.median(t)) for name, t in times.items()]

    def cell(ts: list[float]) -> str:
        return f"{statistics.median(ts) * 1e3:.1f} [{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f}]"

    print(f"command: python {shlex.join(['benchmarks/mamba_scan.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"machine: {machine_summary(device)}")
    print(f"config:  batch {args.batch}, d_inner {args.d_inner}, d_state {args.d_state}, float32 on {device},"
          f" forward + backward, median [min-max] of {args.repeats} runs after 1 warm-up")  # fmt: skip
    if kernel_reason is not None:
        print(f"note:    mamba-ssm kernel not timed: {kernel_reason}")
    for line in checks:
        print(f"check:   {line}")
    print()
    print("| T | implementation | fwd+bwd ms | loop / this |")
    print("|---:|---|---:|---:|")
    for seq_len, name, t, ratio in rows:
        print(f"| {seq_len} | {name} | {cell(t)} | {ratio:.1f}x |")
    if args.ssd:
        ssd_rows(args, device, seq_lens)


SSD_INPUTS = ("x", "dt", "A", "B", "C", "D", "dt_bias")


def ssd_inputs(batch: int, heads: int, seq_len: int, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
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
    implementations = {"chunked PyTorch": (ssd_chunked, None), "ours (Triton)": (ssd_chunked_triton, triton_unavailable_reason(device))}
    implementations["mamba-ssm Triton SSD"] = (ssd_triton, needs_cuda_module("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined")(device))
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
            floor = sum(inputs[k].numel() * inputs[k].element_size() for k in ("x", "dt", "B", "C")) * 3 + 2 * inputs["x"].numel() * inputs["x"].element_size()
            for name, (scan, why) in implementations.items():
                if why:
                    continue
                errors = [((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(run(scan), exact)]
                notes.append(f"{size} T={seq_len} {name}: max |diff| / max |float64| output {errors[0]:.1e}, grads "
                             + ", ".join(f"{k} {e:.1e}" for k, e in zip(SSD_INPUTS, errors[1:])))  # fmt: skip
                t = statistics.median(timed(lambda s=scan: run(s), device, args.repeats))
                rows.append((size, heads, seq_len, name, t, floor / t / 1e9))
    print()
    print(f"Mamba-2 SSD: batch {args.batch}, headdim 64, d_state 128, 1 group, {str(dtype).removeprefix('torch.')} on {device},"
          f" forward + backward, median of {args.repeats} runs after 1 warm-up; byte floor at {args.peak_gbs:.0f} GB/s")  # fmt: skip
    for line in notes:
        print(f"check:   {line}")
    print()
    print("| size | heads | T | implementation | fwd+bwd ms | chunked / this | GB/s over the floor | fraction of the floor |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    base = {(size, seq_len): t for size, _, seq_len, name, t, _ in rows if name == "chunked PyTorch"}
    for size, heads, seq_len, name, t, gbs in rows:
        ratio = base[(size, seq_len)] / t
        print(f"| {size} | {heads} | {seq_len} | {name} | {t * 1e3:.1f} | {ratio:.2f}x | {gbs:.0f} | {gbs / args.peak_gbs:.3f} |")


if __name__ == "__main__":
    main()
