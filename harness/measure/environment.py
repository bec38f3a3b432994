"""Where a number came from: versions, device and the git commit, stored with every result."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

import harness

_PACKAGES = ("mixbench", "torch", "triton", "flash-attn", "mamba-ssm", "causal-conv1d", "datasets", "tokenizers")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the mixbench checkout, with ``+dirty`` if it has uncommitted changes."""
    root = Path(harness.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The processor's marketing name where Linux tells it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_math() -> dict[str, str | None]:
    """What decides a CPU run's rounding beyond the processor's name: the instruction set torch's
    kernels dispatch to (AVX2, AVX512, ...), and the BLAS and oneDNN builds torch was linked with.

    Two machines sold as the same "AMD EPYC" can differ here, and then a float32 run on them
    differs in its last digits; recorded with every run so such a difference can be explained.
    """
    config = torch.__config__.show()

    def line_with(text: str) -> str | None:
        return next((ln.strip(" -") for ln in config.splitlines() if text in ln), None)

    blas = re.search(r"\bBLAS_INFO=([^,\s]+)", config)
    return {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas and blas.group(1),
        "math_library": line_with("Math Kernel Library") or line_with("OpenBLAS"),
        "onednn": line_with("MKL-DNN") or line_with("oneDNN"),
    }


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def machine_summary(device: torch.device) -> str:
    """One line for a benchmark's header: processor, threads, torch, GPU, and the load average."""
    parts = [
        f"{cpu_model()} ({os.cpu_count()} cores), {torch.get_num_threads()} thread(s)",
        f"torch {torch.__version__}",
    ]
    if device.type == "cuda":
        parts.insert(0, f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}")
    if hasattr(os, "getloadavg"):
        parts.append("load average %.1f" % os.getloadavg()[0])  # other work on the machine skews CPU times
    return ", ".join(parts)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_name(device),
        "cpu": cpu_math(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
        "packages": {name: v for name in _PACKAGES if (v := _version(name)) is not None},
    }


def pick_device(requested: str) -> torch.device:
    """``auto`` means CUDA when present, else CPU; anything else is taken as written."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {requested!r} but no CUDA GPU is available")
    return device
