"""Primal vs dual TTT: check they agree, then time forward + backward of one mixer layer.

    python benchmarks/ttt_forms.py                 # CPU: TTT-Linear at T=2048, TTT-MLP at T=512
    python benchmarks/ttt_forms.py --quick         # a few seconds, tiny sizes
    python benchmarks/ttt_forms.py --device cuda --dtype bf16

For each inner model it times the whole mixer layer (projections, RoPE, inner loop, norms,
output projection) and the inner loop alone (``mixbench_kernels.ttt``), forward + backward, on the same
input, and prints a table to paste: the command, the machine, the median of ``--repeats`` runs
with their range, and the primal / dual ratio. It never asserts a time. TTT-MLP runs at a
shorter length by default because the primal form keeps every token's weights for the
backward pass (about 6 MB per token at d_model 768: T=2048 would need ~13 GB).
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
from mixbench_kernels.ttt import FORMS, fresh_state
from models.ttt import TTTMLP, TTTLinear

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bf16": torch.bfloat16}
KINDS = {"ttt_linear": TTTLinear, "ttt_mlp": TTTMLP}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mixer_job(mixer, x, form):
    """Forward + backward of the whole layer; returns the output and the input gradient."""

    def job():
        mixer.zero_grad(set_to_none=True)
        mixer.backend = form
        xi = x.detach().requires_grad_()
        y, _ = mixer(xi)
        y.float().square().sum().backward()
        return y.detach(), xi.grad

    return job


def kernel_job(mixer, x, form):
    """Forward + backward of the inner loop alone, on the layer's own q, k, v and learning rates."""
    with torch.no_grad():
        q, k, v, _ = mixer._qkv(x, None)
        q, k = mixer._rope(q, k, 0)
        lr = mixer.inner_lr(x)
    shape = (mixer.n_heads, 1, mixer.head_dim)

    def job():
        mixer.zero_grad(set_to_none=True)
        leaves = [t.detach().requires_grad_() for t in (q, k, v, lr)]
        z, _ = FORMS[form](
            *leaves,
            fresh_state(mixer._initial_params(x.shape[0])),
            token_scale=mixer.token_scale(),
            ln_weight=mixer.ttt_norm_weight.reshape(shape),
            ln_bias=mixer.ttt_norm_bias.reshape(shape),
        )
        z.float().square().sum().backward()
        return z.detach(), leaves[0].grad

    return job


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def timed(jobs: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Seconds per run of each job; the jobs take turns, so a change in machine load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            sync(device)
            start = time.perf_counter()
            job()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--seq-len", type=int, default=2048, help="TTT-Linear sequence length")
    p.add_argument("--mlp-seq-len", type=int, default=512, help="TTT-MLP sequence length (0: skip TTT-MLP)")
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--n-heads", type=int, default=12)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--mini-batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_len, args.mlp_seq_len, args.d_model, args.n_heads, args.repeats = 128, 64, 64, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]

    runs = [("ttt_linear", args.seq_len)] + ([("ttt_mlp", args.mlp_seq_len)] if args.mlp_seq_len else [])
    rows, checks = [], []
    for kind, seq in runs:
        torch.manual_seed(0)
        mixer = KINDS[kind](args.d_model, n_heads=args.n_heads, mini_batch_size=args.mini_batch_size)
        mixer = mixer.to(device=device, dtype=dtype)
        x = torch.randn(args.batch, seq, args.d_model, device=device, dtype=dtype)
        for scope, make_job in (("mixer", mixer_job), ("inner loop", kernel_job)):
            jobs = {form: make_job(mixer, x, form) for form in ("dual", "primal")}
            # Correctness first (these runs are also the warm-up).
            (y_d, g_d), (y_p, g_p) = jobs["dual"](), jobs["primal"]()
            err_y, err_g = relative_error(y_d, y_p), relative_error(g_d, g_p)
            checks.append(
                f"{kind} {scope}, T={seq}: max |dual - primal| / max |primal|: output {err_y:.1e},"
                f" input gradient {err_g:.1e}"
            )
            times = timed(jobs, device, args.repeats)
            med = {form: statistics.median(t) for form, t in times.items()}
            rows.append((kind, scope, seq, times["dual"], times["primal"], med["primal"] / med["dual"]))

    def cell(ts: list[float]) -> str:
        return f"{statistics.median(ts) * 1e3:.1f} [{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f}]"

    print(f"command: python {shlex.join(['benchmarks/ttt_forms.py', *(sys.argv[1:] if argv is None else argv)])}")
    print(f"machine: {machine_summary(device)}")
    print(
        f"config:  d_model {args.d_model}, {args.n_heads} heads, batch {args.batch}, mini-batch {args.mini_batch_size},"
        f" {args.dtype} on {device}; forward + backward, median [min-max] of {args.repeats} runs"
        " (forms taking turns) after 1 warm-up"
    )
    for line in checks:
        print(f"check:   {line}")
    print()
    print("| model | scope | T | dual ms | primal ms | primal / dual |")
    print("|---|---|---:|---:|---:|---:|")
    for kind, scope, seq, t_dual, t_primal, ratio in rows:
        print(f"| {kind} | {scope} | {seq} | {cell(t_dual)} | {cell(t_primal)} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
