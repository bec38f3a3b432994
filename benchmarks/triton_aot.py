"""Compile a Triton kernel for a GPU architecture without a GPU, and read back its resources.

Shared by the kernel reports (``ttt_kernels_smem.py``, ``mamba_scan.py --aot``): Triton lowers
the kernel to PTX and runs ptxas for the target (both ship with triton), so registers per thread,
spills and shared memory are known on any machine. A kernel whose shared memory exceeds the block
limit of the target (227 KB on H100/H200, 163 KB on A100) compiles but cannot launch; registers
above 255 per thread spill to local memory, and registers x threads bound the blocks per SM.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TORCH_TO_TRITON = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}  # torch dtype name -> Triton's


@dataclass(frozen=True)
class Resources:
    """What one compiled kernel needs per block of ``num_warps`` warps."""

    registers: int  # per thread
    spill_stores: int  # bytes per thread
    spill_loads: int
    stack: int  # bytes of stack frame per thread
    shared: int  # bytes per block
    dots: int  # matrix products in the TTGIR (loops over blocks counted once): the chain's dots per step

    def cells(self) -> str:
        """``registers | spill stores/loads (bytes) | shared (KB)`` table cells."""
        return f"{self.registers} | {self.spill_stores}/{self.spill_loads} | {self.shared / 1024:.1f}"


def signature(kernel, constants: dict, pointers: dict[str, str], scalar: str = "i32") -> dict[str, str]:
    """Every argument of ``kernel``: ``constexpr`` for ``constants``, ``*dtype`` for ``pointers``
    (name -> element type, e.g. ``bf16``), ``scalar`` for the rest."""
    return {
        name: "constexpr" if name in constants else f"*{pointers[name]}" if name in pointers else scalar
        for name in kernel.arg_names
    }


def ptxas_figures(log: str) -> dict[str, int]:
    """Registers, stack frame and spills from a ``ptxas -v`` log; one clear line if it has no registers
    (ptxas failed, e.g. a PTX version it does not know). ptxas omits a zero stack or spill line."""
    registers = re.search(r"Used (\d+) registers", log)
    if registers is None:
        raise RuntimeError(f"triton_aot: no 'Used (\\d+) registers' in the ptxas log: {log[-2000:]!r}")

    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return dict(
        registers=int(registers.group(1)),
        stack=number(r"(\d+) bytes stack frame"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
    )


def compile_for(kernel, constants: dict, pointers: dict[str, str], num_warps: int, arch: int) -> Resources:
    """Compile ``kernel`` for ``sm_<arch>``; registers and spills from ptxas's own log of this very build."""
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas, and its log
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            ASTSource(kernel, signature(kernel, constants, pointers), constexprs=constants),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=num_warps),
        )
    dots = len(re.findall(r"= tt\.dot |= ttng\.warp_group_dot ", compiled.asm["ttgir"]))
    return Resources(shared=compiled.metadata.shared, dots=dots, **ptxas_figures(log.getvalue()))
