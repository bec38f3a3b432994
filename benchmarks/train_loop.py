"""The harness training loop vs a bare PyTorch loop on the same model, data and batches.

    python benchmarks/train_loop.py                      # CPU: attention@transformer tiny, T=128, 20 steps
    python benchmarks/train_loop.py --quick              # seconds
    python benchmarks/train_loop.py --quick --arch ttt_linear@transformer --compile both   # CPU smoke of compile (minutes)
    python benchmarks/train_loop.py --device cuda --arch attention@transformer,ttt_linear@transformer,mamba@mamba_native \\
        --size 125m --seq-len 2048 --batch 8 --steps 20 --compile both   # GPU: tokens/s and MFU, bf16
    python benchmarks/train_loop.py --device cuda --size 125m --seq-len 2048 --batch 8 --store results/mixbench.db
                                                         # also record the speeds for `run --dry-run --gpu` estimates

Both loops build the model from the same seed, read the same batches (the harness sampler's
order, precomputed for the bare loop), use the same AdamW groups, learning-rate schedule and
clipping, and bf16 autocast on CUDA. First they train for ``--check-steps`` steps and the
final losses must agree (correctness before timing); then each loop trains ``--steps`` steps,
``--repeats`` times, interleaved, after one warm-up run each. The table gives the median
tokens/s [min-max], the overhead of the harness loop (target: at most 3 %) on the medians and
on the best runs (the least disturbed on a shared machine), on the process CPU time of each
whole call (which does not count waiting for a core), and on CUDA the
MFU (analytic training FLOPs / time / the device's peak, ``harness.measure.mfu``). With ``--compile
on|both`` (``train.compile``: each block compiled) it prints the graph breaks Dynamo met (each
block should be one graph; the TTT op is one custom op, ``mixbench_kernels.ttt.op``), and with ``both``
the harness loop's tokens/s with compile over without. It never asserts a time.
With ``--store DB`` on a GPU of ``harness.measure.mfu``'s table, the harness loop's median
tokens/s of each model is recorded in the store's ``throughput`` table, keyed by (architecture,
size, context, backend, GPU kind): ``mixbench run SUITE --dry-run --gpu KIND`` costs cells from it.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.config.suite import TrainSection
from harness.data import PackedData
from harness.engine.loss import cross_entropy
from harness.engine.parallel import autocast, compute_dtype, prepare
from harness.engine.sampler import BlockSampler
from harness.engine.train import learning_rate, make_optimizer, micro_batching, plan_training, train
from harness.measure.cost import kind_of_device
from harness.measure.environment import (
    device_name,
    environment,
    machine_summary,
)
from harness.measure.flops import training_flops
from harness.measure.mfu import mfu, peak_tflops
from harness.store.database import Store
from models import ModelSpec, build

VOCAB = 4096


def synthetic_data(n_blocks: int, seq_len: int) -> PackedData:
    """Random tokens in the cache's layout (blocks of seq_len + 1): speed does not depend on the text."""
    blocks = np.random.default_rng(0).integers(0, VOCAB, size=(n_blocks, seq_len + 1), dtype=np.uint16)
    return PackedData(train=blocks, val=blocks[:8], vocab_size=VOCAB, tokenizer=None, cache_key="synthetic")


def make_model(arch: str, size: str, device: torch.device, compile_: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(ModelSpec.parse(arch, size, VOCAB)).to(device)
    return prepare(model, "none", device, compile=compile_)


def harness_loop(arch, size, data, cfg, plan, device, compile_) -> tuple[float, float]:
    """(seconds, last loss) of ``harness.engine.train.train``."""
    model = make_model(arch, size, device, compile_)
    result = train(model, data, cfg, plan, device)
    return result.seconds, [v for _, n, v in result.metrics if n == "train/loss"][-1]


def bare_loop(arch, size, data, cfg, plan, device, compile_) -> tuple[float, float]:
    """The same steps written as a plain PyTorch loop: no sampler, no progress bar, no logging."""
    model = make_model(arch, size, device, compile_)
    sampler = BlockSampler(len(data.train), plan.batch_size, seed=cfg.seed)
    batches = [sampler.next_batch() for _ in range(plan.steps)]
    micro, accumulation = micro_batching(plan, 1)
    optimizer = make_optimizer(model, plan.lr, cfg.weight_decay, tuple(cfg.betas), fused=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step, indices in enumerate(batches):
        for g in optimizer.param_groups:
            g["lr"] = learning_rate(step, plan, cfg.min_lr_ratio)
        for i in range(accumulation):
            rows = torch.from_numpy(data.train[indices[i * micro : (i + 1) * micro]].astype(np.int64)).to(device)
            with autocast(device):
                logits = model(rows[:, :-1])
                loss = cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten())
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    last = loss.item()  # the one sync: the harness reads its losses at log steps only, too
    return time.perf_counter() - start, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="attention@transformer", help="comma-separated mixer@backbone")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--check-steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", choices=["off", "on", "both"], default="off")
    ap.add_argument("--quick", action="store_true", help="micro model, 5 steps, 1 repeat")
    ap.add_argument("--store", help="record the harness loop's tokens/s per model in this store (GPU kinds only)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.steps, args.repeats, args.seq_len, args.batch = "micro", 5, 1, 64, 8
    device = torch.device(args.device)
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {machine_summary(device)}")
    gpu = kind_of_device(device_name(device)) if device.type == "cuda" else None
    if args.store and gpu is None:
        raise SystemExit(
            f"--store records speeds for GPU cost estimates; {device_name(device)} is no GPU kind of harness/measure/mfu.py"
        )
    store = Store(args.store) if args.store else None
    data = synthetic_data(max(4 * args.batch, 256), args.seq_len)
    rows = []
    for arch in args.arch.split(","):
        harness_median: dict[bool, float] = {}  # tokens/s of the harness loop without and with compile
        for compile_ in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:

            def plan_for(steps: int):
                cfg = TrainSection(
                    tokens=steps * args.batch * args.seq_len,
                    batch_tokens=args.batch * args.seq_len,
                    micro_batch_size=args.micro_batch,
                    lr=1e-3,
                    warmup_fraction=0.1,
                    log_every=10,
                )
                return cfg, plan_training(cfg, 1, args.seq_len)

            cfg, plan = plan_for(args.check_steps)
            torch._dynamo.utils.counters.clear()
            _, loss_h = harness_loop(arch, args.size, data, cfg, plan, device, compile_)
            _, loss_b = bare_loop(arch, args.size, data, cfg, plan, device, compile_)
            if abs(loss_h - loss_b) > 1e-4 * abs(loss_b) + (2e-2 if device.type == "cuda" else 0):
                raise SystemExit(f"{arch}: the loops disagree after {args.check_steps} steps: {loss_h} vs {loss_b}")
            print(
                f"{arch} compile={compile_}: loss after {args.check_steps} steps, harness {loss_h:.6f} = bare {loss_b:.6f}"
            )
            if compile_:  # each block should be one graph: a break splits it and leaves a piece eager
                breaks = torch._dynamo.utils.counters["graph_break"]
                first = f" (first: {next(iter(breaks))[:120]})" if breaks else ""
                print(f"{arch} compile=True: {sum(breaks.values())} graph breaks while compiling{first}")
            cfg, plan = plan_for(args.steps)
            times: dict[str, list[float]] = {"harness": [], "bare": []}
            cpu: dict[str, list[float]] = {"harness": [], "bare": []}
            for r in range(args.repeats + 1):  # the first round warms up (and compiles)
                for name, loop in (("harness", harness_loop), ("bare", bare_loop)):
                    cpu_start = time.process_time()
                    seconds, _ = loop(arch, args.size, data, cfg, plan, device, compile_)
                    if r:
                        times[name].append(seconds)
                        cpu[name].append(time.process_time() - cpu_start)
            model = build(ModelSpec.parse(arch, args.size, VOCAB))
            flops = training_flops(model, args.seq_len, plan.tokens)["flops/train"]
            peak = peak_tflops(device)
            if store is not None:
                backend = ",".join(model.backends(device, compute_dtype(device))) + (",compile" if compile_ else "")
                mixer, backbone = arch.split("@")
                store.add_throughput(
                    {
                        "mixer": mixer,
                        "backbone": backbone,
                        "size": args.size,
                        "seq_len": args.seq_len,
                        "backend": backend,
                        "gpu": gpu,
                        "gpus": 1,
                        "tokens_per_s": plan.tokens / statistics.median(times["harness"]),
                        "source": "benchmarks/train_loop.py",
                        "environment": environment(device),
                    }
                )
                print(f"{arch} compile={compile_}: stored in {store.where} as {gpu} ({backend})")
            for name in ("bare", "harness"):
                med = statistics.median(times[name])
                util = mfu(flops, med, peak)
                if name == "harness":
                    harness_median[compile_] = plan.tokens / med
                rows.append(
                    (
                        arch,
                        args.size,
                        "yes" if compile_ else "no",
                        name,
                        plan.tokens / med,
                        plan.tokens / max(times[name]),
                        plan.tokens / min(times[name]),
                        f"{util:.1%}" if util is not None else "-",
                    )
                )
            median = statistics.median(times["harness"]) / statistics.median(times["bare"]) - 1
            best = min(times["harness"]) / min(times["bare"]) - 1  # the least disturbed run of each
            # CPU time of the whole call (model build included, the same for both): on a shared
            # machine it does not count the time spent waiting for a core, unlike wall time
            on_cpu = statistics.median(cpu["harness"]) / statistics.median(cpu["bare"]) - 1
            rows.append((arch, args.size, "yes" if compile_ else "no", "overhead", median, best, on_cpu, ""))
        if len(harness_median) == 2:
            rows.append((arch, args.size, "on/off", "speed-up", harness_median[True] / harness_median[False], 0, 0, ""))
    print(f"\n{'model':28} {'size':6} {'compile':7} {'loop':8} {'tokens/s median [min-max]':32} MFU")
    for arch, size, comp, name, value, lo, hi, util in rows:
        if name == "speed-up":
            print(f"{arch:28} {size:6} {comp:7} {name:8} harness tokens/s with compile / without: {value:.2f}x")
        elif name == "overhead":
            print(
                f"{arch:28} {size:6} {comp:7} {name:8} wall median {value:+.1%}, wall best {lo:+.1%}, "
                f"CPU time median {hi:+.1%} (harness / bare - 1; target <= +3%)"
            )
        else:
            print(f"{arch:28} {size:6} {comp:7} {name:8} {value:>10,.0f} [{lo:,.0f}-{hi:,.0f}]{'':8} {util}")


if __name__ == "__main__":
    main()
