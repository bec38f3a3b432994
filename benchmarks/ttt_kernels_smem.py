"""Compile the TTT Triton kernels for a GPU architecture without a GPU; print shared memory, registers, spills.

    python benchmarks/ttt_kernels_smem.py                         # sm_90, TTT-Linear and TTT-MLP at d=64,128, bf16
    python benchmarks/ttt_kernels_smem.py --arch 80 --kinds linear --dims 64 --dtypes bf16,fp32 --acc 0,1
    python benchmarks/ttt_kernels_smem.py --device cuda --quick    # TTT-Linear at d=64 for this machine's GPU

A kernel whose shared memory exceeds the block limit of the target (227 KB on H100/H200, 163 KB
on A100) compiles but cannot launch: Triton raises "out of resource: shared memory". This is how
the figures in docs/design.md were obtained (Triton 3.9). Registers and spills come from the
log of Triton's own ``ptxas -v`` run (compiled afresh, ``benchmarks/triton_aot.py``) (``Used N registers``, ``bytes
spill stores``): a kernel at 255 registers with spills keeps part of its tiles in local memory, which
on a GPU is a round trip through L1/L2 on the sequential chain. Compiling takes seconds to minutes
per kernel on a small CPU; nothing runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.triton_aot import compile_for  # noqa: E402
from kernels.ttt.triton_common import _options  # noqa: E402
from kernels.ttt.triton_linear import LINEAR  # noqa: E402
from kernels.ttt.triton_mlp import MLP  # noqa: E402

PAIRS = {"linear": LINEAR, "mlp": MLP}
SCALARS = ("seq", "heads", "start_pos", "n_chunks")
IO = ("Q", "K", "V", "Y", "DQ", "DK", "DV")  # in the input dtype; every other pointer is float32


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=None, help="compute capability, e.g. 80, 90 (default: 90, or "
                   "this GPU's with --device cuda)")  # fmt: skip
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="nothing runs on it; cuda sets the "
                   "default --arch (scripts/gpu_check.py passes it)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="TTT-Linear at head_dim 64 only")
    p.add_argument("--kinds", default="linear,mlp")
    p.add_argument("--dims", default="64,128", help="head dims")
    p.add_argument("--dtypes", default="bf16", help="input dtypes: bf16, fp16, fp32")
    p.add_argument("--acc", default="0", help="0: start at a mini-batch boundary, 1: mid-mini-batch (decode state)")
    p.add_argument("--mini-batch", type=int, default=16)
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
    print(f"compiled for sm_{args.arch} with triton {triton.__version__}; nothing runs\n")
    print("| kernel | head_dim | input | mid-mini-batch start | num_warps | dots | shared memory (KB) | registers "
          "| stack (B) | spill stores / loads (B) |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for kind in args.kinds.split(","):
        pair = PAIRS[kind]
        for dim in (int(d) for d in args.dims.split(",")):
            widths = (dim, dim) if kind == "linear" else (dim, 4 * dim, dim)
            for in_dtype in args.dtypes.split(","):
                dtype = getattr(torch, torch_dtypes[in_dtype])
                for acc in (bool(int(a)) for a in args.acc.split(",")):
                    for kernel, extra in ((pair.fwd, dict(SAVE=True, HAS_PRE=True)), (pair.bwd, {})):
                        options = _options(pair, widths, args.mini_batch, dtype, backward=kernel is pair.bwd)
                        num_warps = options.pop("num_warps")
                        options.update(HAS_ACC=acc, **extra)
                        pointers = {a: in_dtype if a in IO else "fp32" for a in kernel.arg_names if a not in SCALARS}
                        f = compile_for(kernel, options, pointers, num_warps, args.arch)
                        row = (kernel.__name__, dim, in_dtype, acc, num_warps, f.dots, f"{f.shared / 1024:.0f}",
                               f.registers, f.stack, f"{f.spill_stores} / {f.spill_loads}")  # fmt: skip
                        print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
