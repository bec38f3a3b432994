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
    shared: int  # bytes per block

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


def compile_for(kernel, constants: dict, pointers: dict[str, str], num_warps: int, arch: int) -> Resources:
    """Compile ``kernel`` for ``sm_<arch>``; registers and spills from ptxas's own log of this build."""
    knobs.compilation.always_compile = True  # a cache hit would skip ptxas, and its log
    knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(kernel, signature(kernel, constants, pointers), constexprs=constants),
                target=GPUTarget("cuda", arch, 32),
                options=dict(num_warps=num_warps),
            )
    finally:
        knobs.compilation.always_compile = False
        knobs.nvidia.dump_ptxas_log = False

    def number(pattern: str) -> int:
        found = re.search(pattern, log.getvalue())
        return int(found.group(1)) if found else 0  # ptxas omits zero spills

    return Resources(
        registers=number(r"Used (\d+) registers"),
        spill_stores=number(r"(\d+) bytes spill stores"),
        spill_loads=number(r"(\d+) bytes spill loads"),
        shared=compiled.metadata.shared,
    )
