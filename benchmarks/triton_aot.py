"""Compile a Triton kernel for a GPU architecture without a GPU, and read back its resources.

Shared by the kernel reports (``ttt_kernels_smem.py``, ``mamba_scan.py --aot``): Triton lowers
the kernel to PTX and runs ptxas for the target (both ship with triton), so registers per thread,
spills and shared memory are known on any machine. A kernel whose shared memory exceeds the block
limit of the target (227 KB on H100/H200, 163 KB on A100) compiles but cannot launch; registers
above 255 per thread spill to local memory, and registers x threads bound the blocks per SM.

The build is the one a real launch gets: Triton specialises every pointer argument (and every
integer argument divisible by 16) with ``tt.divisibility = 16``, which lets it vectorise loads;
without those attributes it compiles another kernel (16-bit scalar loads, about a third more
instructions). ``divisible`` names the integer arguments to give it. Triton's wheel ships
``nvdisasm`` beside ``ptxas``, so the SASS of the build is read too: ``loop_figures`` counts the
instructions, barriers and local-memory accesses in the body of the kernel's outermost loop (a
sequential walk's step).
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

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
    loop: "LoopFigures | None" = None  # the outermost loop's body in SASS; None for a kernel without a loop

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


@dataclass(frozen=True)
class LoopFigures:
    """Per thread, in one pass of a loop body: what a step of a sequential walk costs on the chain."""

    instructions: int  # SASS instructions from the loop's label to its backward branch (inner loops once)
    barriers: int  # BAR.SYNC and friends: every thread of the program waits at each
    local: int  # LDL/STL: spilled registers read or written through L1


_INSTRUCTION = re.compile(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*?`\((\.L_x_\d+)\)")


def loop_figures(sass: str) -> LoopFigures | None:
    """The body of the outermost loop of a kernel's SASS (``nvdisasm`` output): the widest span from a
    label back to a branch that jumps up to it."""
    text = sass[sass.index(".text.") :] if ".text." in sass else sass
    labels: dict[str, int] = {}
    instructions: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in text.splitlines():
        if label := _LABEL.match(line.strip()):
            pending.append(label.group(1))
        elif found := _INSTRUCTION.search(line):
            address, op = int(found.group(1), 16), found.group(2)
            if op.startswith("."):  # data (.byte, .word) in other sections
                continue
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, op))
    loops = [
        (labels[b.group(1)], address)
        for address, op in instructions
        if (b := _BRANCH.search(op)) and b.group(1) in labels and labels[b.group(1)] <= address
    ]
    if not loops:
        return None
    start, end = max(loops, key=lambda span: span[1] - span[0])
    body = [op for address, op in instructions if start <= address <= end]
    return LoopFigures(
        instructions=len(body),
        barriers=sum(bool(re.search(r"\bBAR\.", op)) for op in body),
        local=sum(bool(re.search(r"\b(LDL|STL)\b", op)) for op in body),
    )


def disassemble(cubin: bytes) -> str:
    """SASS of a cubin with the ``nvdisasm`` that ships with Triton's NVIDIA backend."""
    import triton.backends.nvidia as nvidia

    tool = Path(nvidia.__file__).parent / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), f.name], check=True, capture_output=True, text=True).stdout


def compile_for(
    kernel, constants: dict, pointers: dict[str, str], num_warps: int, arch: int, divisible: tuple[str, ...] = ()
) -> Resources:
    """Compile ``kernel`` for ``sm_<arch>`` as a launch would (pointers and ``divisible`` integers
    16-divisible); registers and spills from ptxas's own log of this very build, the loop from its SASS."""
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(kernel.arg_names)
        if name not in constants and (name in pointers or name in divisible)
    }
    log = io.StringIO()
    with knobs.compilation.scope(), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas, and its log
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            ASTSource(kernel, signature(kernel, constants, pointers), constexprs=constants, attrs=attrs),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=num_warps),
        )
    dots = len(re.findall(r"= tt\.dot |= ttng\.warp_group_dot ", compiled.asm["ttgir"]))
    loop = loop_figures(disassemble(compiled.asm["cubin"]))
    return Resources(shared=compiled.metadata.shared, dots=dots, loop=loop, **ptxas_figures(log.getvalue()))
