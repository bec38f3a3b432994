"""The training loss, plain vs chunked: time and peak memory of one forward+backward of the loss.

    python benchmarks/cross_entropy.py                                   # CPU: 2k tokens x 50k vocabulary
    python benchmarks/cross_entropy.py --quick                           # seconds
    python benchmarks/cross_entropy.py --device cuda --tokens 16384 --vocab 50304   # GPU: a 125m step's logits

``plain`` is ``F.cross_entropy(logits.float(), targets)``, what the training loop ran before;
``chunked`` is ``harness.engine.loss.cross_entropy`` (row chunks of ``CHUNK_ELEMENTS``; the backward
recomputes each chunk's log-softmax). Logits in bf16 on CUDA (as autocast makes them), float32
on CPU. Each is first checked: gradients equal to the plain path's, loss to float32 rounding.
Then the median of ``--repeats`` after a warm-up, and on CUDA the peak memory the loss adds
above the logits. It never asserts a time.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engine.loss import CHUNK_ELEMENTS, cross_entropy
from harness.measure.environment import machine_summary

LOSSES = {"plain": lambda x, t: F.cross_entropy(x.float(), t), "chunked": cross_entropy}


def run(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = logits.detach().requires_grad_()
    loss = loss_fn(x, targets)
    loss.backward()
    return loss.detach(), x.grad


def measure(loss_fn, logits, targets, repeats: int, device: torch.device) -> tuple[float, int | None]:
    """(median seconds, peak bytes above the logits on CUDA) of one forward+backward."""
    run(loss_fn, logits, targets)  # warm-up
    times, peak = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        run(loss_fn, logits, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tokens", type=int, default=2048, help="rows of the logits (batch x sequence)")
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="two chunks and a partial one, 2 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.tokens, args.repeats = 2 * max(1, CHUNK_ELEMENTS // args.vocab) + 1, 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"command: python {shlex.join(['benchmarks/cross_entropy.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"machine: {machine_summary(device)}")
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(args.tokens, args.vocab, generator=g) * 2).to(device, dtype)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=g).to(device)
    chunks = -(-args.tokens // max(1, CHUNK_ELEMENTS // args.vocab))
    print(
        f"logits: {args.tokens} x {args.vocab} {str(dtype).removeprefix('torch.')} ({chunks} chunk(s) of "
        f"{CHUNK_ELEMENTS:,} elements)"
    )
    (loss_p, grad_p), (loss_c, grad_c) = (run(f, logits, targets) for f in LOSSES.values())
    grads_equal = torch.equal(grad_p, grad_c)
    print(
        f"check: loss plain {loss_p.item():.7f}, chunked {loss_c.item():.7f} (relative difference "
        f"{abs(loss_c.item() / loss_p.item() - 1):.1e}); gradients {'equal' if grads_equal else 'DIFFER'}"
    )
    del grad_p, grad_c
    print("\n| loss | ms (fwd+bwd) | peak MB above the logits |\n|---|---:|---:|")
    results = {name: measure(f, logits, targets, args.repeats, device) for name, f in LOSSES.items()}
    for name, (seconds, peak) in results.items():
        print(f"| {name} | {seconds * 1e3:.2f} | {'-' if peak is None else f'{peak / 2**20:,.0f}'} |")
    print(f"\nchunked / plain time: {results['chunked'][0] / results['plain'][0]:.2f}x")


if __name__ == "__main__":
    main()
