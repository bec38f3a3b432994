"""Compile our Mamba Triton kernels for a GPU architecture without a GPU; print registers, shared memory, spills.

    python benchmarks/mamba_kernels_resources.py                  # sm_90: SSD forward + backward at Mamba-2's sizes, the decode kernels
    python benchmarks/mamba_kernels_resources.py --arch 80 --dtypes bf16,fp32 --chunks 64,128 --bwd-chunks 16,32

Each kernel is compiled by Triton for ``sm_<arch>`` (``triton.compile`` on an ``ASTSource``, as
``ttt_kernels_smem.py`` does); shared memory comes from Triton's metadata, registers per thread and
spill stores/loads from the log of Triton's own ``ptxas -v`` run (``benchmarks/triton_aot.py``). A kernel above
255 registers spills; above the block's shared memory (227 KB on H100/H200) it cannot launch.
Nothing runs; compiling takes seconds to minutes per kernel on a small CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.triton_aot import compile_for
from mixbench_kernels.causal_conv.triton_update import _conv_update
from mixbench_kernels.ssd.triton_chunked import _TORCH_TO_DOT, _ssd_backward, _ssd_forward, ssd_blocks
from mixbench_kernels.ssm_step.triton_step import _state_update

TYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtypes", default="bf16,fp32", help="input dtypes: bf16, fp16, fp32")
    p.add_argument("--chunks", default="64", help="SSD chunk lengths")
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--d-state", type=int, default=128)
    p.add_argument("--block-p", type=int, default=0, help="SSD head channels per program (0: the kernel's choice)")
    p.add_argument("--bwd-chunks", default="16", help="SSD backward chunk lengths")
    p.add_argument(
        "--bwd-block-p", type=int, default=0, help="SSD backward head channels per program (0: the kernel's choice)"
    )
    p.add_argument("--bwd-warps", type=int, default=0, help="SSD backward num_warps (0: the kernel's choice)")
    args = p.parse_args(argv)
    import torch

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    print(f"command: python benchmarks/mamba_kernels_resources.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"triton {triton.__version__}, sm_{args.arch}, the ptxas Triton runs for it")
    print()
    print("| kernel | config | input | num_warps | registers/thread | spill stores/loads (B) | shared memory (KB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    block_p, block_n, warps = ssd_blocks(args.headdim, args.d_state, args.block_p or None)
    for dtype in args.dtypes.split(","):
        io = TYPES[dtype]
        # the forward at its chunks, then its rerun in the backward (entry states only) at the backward's
        runs = [(int(c), False) for c in args.chunks.split(",")] + [(int(c), True) for c in args.bwd_chunks.split(",")]
        for chunk, states_only in runs:
            constants = dict(
                HAS_BIAS=True,
                SOFTPLUS=True,
                HAS_D=True,
                HAS_Z=False,
                HAS_H0=False,
                STATES_ONLY=states_only,
                DOT=_TORCH_TO_DOT[torch_dtype[dtype]],
                L=chunk,
                BLOCK_P=block_p,
                BLOCK_N=block_n,
            )
            pointers = {n: io for n in ("X", "DT", "B", "C", "Z", "Y")} | {
                n: "fp32" for n in ("DT_BIAS", "A", "D", "H0", "HT", "HS")
            }
            r = compile_for(_ssd_forward, constants, pointers, warps, args.arch)
            config = f"chunk {chunk}, headdim block {block_p}, d_state {args.d_state}" + (
                ", STATES_ONLY" if states_only else ""
            )
            print(
                f"| _ssd_forward | {config} | {dtype} | {warps} | {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared / 1024:.1f} |",
                flush=True,
            )
        bwd_p, _, bwd_warps = ssd_blocks(args.headdim, args.d_state, args.bwd_block_p or None, backward=True)
        bwd_warps = args.bwd_warps or bwd_warps
        for chunk in (int(c) for c in args.bwd_chunks.split(",")):
            constants = dict(
                HAS_BIAS=True,
                SOFTPLUS=True,
                HAS_D=True,
                HAS_Z=True,
                HAS_DHT=True,
                DOT=_TORCH_TO_DOT[torch_dtype[dtype]],
                L=chunk,
                BLOCK_P=bwd_p,
                BLOCK_N=block_n,
            )
            in_dtype = ("X", "DT", "B", "C", "Z", "DY", "DX", "DZ")
            pointers = {n: io if n in in_dtype else "fp32" for n in _ssd_backward.arg_names if n.isupper() and n != "T"}
            r = compile_for(_ssd_backward, constants, pointers, bwd_warps, args.arch)
            config = f"chunk {chunk}, headdim block {bwd_p}, d_state {args.d_state}, z"
            print(
                f"| _ssd_backward | {config} | {dtype} | {bwd_warps} | {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared / 1024:.1f} |",
                flush=True,
            )
        pointers = {n: io for n in ("X", "Y", "W", "BIAS")} | {"STATE": io}
        r = compile_for(
            _conv_update, dict(WIDTH=4, WIDTH_P=4, HAS_BIAS=True, SILU=True, BLOCK_C=256), pointers, 4, args.arch
        )
        print(
            f"| _conv_update | width 4, 256 channels | {dtype} | 4 | {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared / 1024:.1f} |",
            flush=True,
        )
        bp = max(1, min(triton.next_power_of_2(args.headdim), 4096 // block_n))
        pointers = {n: io for n in ("X", "DT", "B", "C", "Z", "Y")} | {n: "fp32" for n in ("STATE", "A", "D", "BIAS")}
        constants = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, BLOCK_P=bp, BLOCK_N=block_n)
        r = compile_for(_state_update, constants, pointers, 4, args.arch)
        print(
            f"| _state_update | block {bp} x {block_n} | {dtype} | 4 | {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.shared / 1024:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
