"""Compile the TTT Triton kernels for a GPU architecture without a GPU; print resources and the cost of a step.

    python benchmarks/ttt_kernels_smem.py                         # sm_90, TTT-Linear and TTT-MLP at d=64, bf16
    python benchmarks/ttt_kernels_smem.py --arch 80 --kinds linear --dims 64,128 --dtypes bf16,fp32 --acc 0,1
    python benchmarks/ttt_kernels_smem.py --warps 2,4,8           # every kernel at each num_warps
    python benchmarks/ttt_kernels_smem.py --device cuda --quick    # TTT-Linear at d=64 for this machine's GPU

Each kernel is built as a real launch builds it (``benchmarks/triton_aot.py``: pointers and the
16-divisible lengths carry ``tt.divisibility``), at T = 8192, mini-batch 16. Per kernel: registers,
spills and shared memory (from ptxas's log of this build), and for a sequential walk the body of its
loop over whole mini-batches in SASS, per thread: instructions, barriers (``BAR.*``, where every
warp of the program waits) and local loads/stores (spills read or written on the chain). A walk's
step is the unit of the chain's latency: T / b of them run one after another. The targets (issue
34) are per step, summed over a pass's sequential kernels, d=64 bf16: TTT-Linear forward <= 380
instructions and <= 16 barriers, backward <= 900 and <= 40, 0 spill bytes. Compiling takes seconds
to a minute per kernel on a small CPU; nothing runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.triton_aot import compile_for
from mixbench_kernels.ttt.triton_linear import LINEAR
from mixbench_kernels.ttt.triton_mlp import MLP

LAUNCHERS = {"linear": LINEAR, "mlp": MLP}
SCALARS = ("seq", "heads", "start_pos", "n_chunks")
DIVISIBLE = ("seq", "n_chunks", "start_pos")  # at T = 8192, b = 16, a state at a mini-batch boundary
IO = ("Q", "K", "V", "Y", "DQ", "DK", "DV")  # in the input dtype; every other pointer is float32
TARGETS = {  # (kind, pass) -> (instructions, barriers) per step, summed over the pass's sequential kernels
    ("linear", "forward"): (380, 16),
    ("linear", "backward"): (900, 40),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--arch",
        type=int,
        default=None,
        help="compute capability, e.g. 80, 90 (default: 90, or this GPU's with --device cuda)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="nothing runs on it; cuda sets the default --arch (scripts/gpu_check.py passes it)",
    )
    p.add_argument("--quick", action="store_true", help="TTT-Linear at head_dim 64 only")
    p.add_argument("--kinds", default="linear,mlp")
    p.add_argument("--dims", default="64", help="head dims")
    p.add_argument("--dtypes", default="bf16", help="input dtypes: bf16, fp16, fp32")
    p.add_argument("--acc", default="0", help="0: start at a mini-batch boundary, 1: mid-mini-batch (decode state)")
    p.add_argument("--mini-batch", type=int, default=16)
    p.add_argument("--warps", default=None, help="num_warps to build each kernel with (default: the launcher's)")
    args = p.parse_args(argv)
    torch_dtypes = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    import torch

    if args.quick:
        args.kinds, args.dims = "linear", "64"
    if args.arch is None:
        on_gpu = args.device == "cuda" and torch.cuda.is_available()
        major, minor = torch.cuda.get_device_capability() if on_gpu else (9, 0)
        args.arch = 10 * major + minor
    print(f"$ python {' '.join(sys.argv)}")
    print(
        f"compiled for sm_{args.arch} with triton {triton.__version__}; nothing runs. Per step: the body of a "
        "walk's loop over whole mini-batches, per thread (parallel kernels: -)\n"
    )
    print(
        "| kernel | head_dim | input | mid-mini-batch start | num_warps | dots | shared memory (KB) | registers "
        "| spill stores / loads (B) | SASS per step | barriers per step | local ld/st per step |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    sums: dict[tuple, list[int]] = {}
    for kind in args.kinds.split(","):
        launcher = LAUNCHERS[kind]
        for dim in (int(d) for d in args.dims.split(",")):
            widths = (dim, dim) if kind == "linear" else (dim, 4 * dim, dim)
            for in_dtype in args.dtypes.split(","):
                dtype = getattr(torch, torch_dtypes[in_dtype])
                for acc in (bool(int(a)) for a in args.acc.split(",")):
                    for spec in launcher.specs(widths, args.mini_batch, dtype, acc):
                        for warps in [int(w) for w in args.warps.split(",")] if args.warps else [spec.num_warps]:
                            kernel = spec.kernel
                            pointers = {
                                a: in_dtype if a in IO else "fp32"
                                for a in kernel.arg_names
                                if a not in SCALARS and a not in spec.constants
                            }
                            f = compile_for(kernel, spec.constants, pointers, warps, args.arch, divisible=DIVISIBLE)
                            loop = f.loop if spec.sequential else None
                            step = (loop.instructions, loop.barriers, loop.local) if loop else ("-", "-", "-")
                            row = (
                                f"{kind} {spec.name}",
                                dim,
                                in_dtype,
                                acc,
                                warps,
                                f.dots,
                                f"{f.shared / 1024:.0f}",
                                f.registers,
                                f"{f.spill_stores} / {f.spill_loads}",
                                *step,
                            )
                            print("| " + " | ".join(map(str, row)) + " |", flush=True)
                            if loop and spec.name != "decode step":
                                pass_name = "forward" if spec.name.startswith("forward") else "backward"
                                key = (kind, pass_name, dim, in_dtype, acc, warps)
                                total = sums.setdefault(key, [0, 0, 0])
                                for i, value in enumerate((loop.instructions, loop.barriers, f.spill_stores)):
                                    total[i] += value
    print("\nPer step, summed over each pass's sequential kernels, against issue 34's targets:\n")
    print(
        "| kind | pass | head_dim | input | mid-mini-batch start | num_warps | SASS per step | barriers per step "
        "| spill stores (B) | target |"
    )
    print("|---|---|---:|---|---|---:|---:|---:|---:|---|")
    for (kind, pass_name, dim, in_dtype, acc, warps), (n, bars, spills) in sums.items():
        target = TARGETS.get((kind, pass_name))
        verdict = "-"
        if target and dim == 64:
            ok = n <= target[0] and bars <= target[1] and spills == 0
            verdict = f"<= {target[0]}, <= {target[1]}, 0: {'✓' if ok else '✗'}"
        print(f"| {kind} | {pass_name} | {dim} | {in_dtype} | {acc} | {warps} | {n} | {bars} | {spills} | {verdict} |")


if __name__ == "__main__":
    main()
