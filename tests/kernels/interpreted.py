"""Run a file of Triton kernel tests under ``TRITON_INTERPRET=1`` in a subprocess, and judge it.

The interpreter must be switched on before Triton is imported, so the interpreted cases live in
their own files (``*_interpreted.py``) and each ``test_*`` module that owns kernels calls
:func:`run_interpreted` once. One runner for every kernel family keeps the rules the same: every
case must pass, none may be deselected, and a skip is allowed only where the caller allows it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None


def run_interpreted(filename: str, *, skips_allowed: bool = False, timeout: int = 900) -> None:
    """Run ``tests/kernels/<filename>`` under the interpreter; fail with its report if any case fails."""
    if not HAS_TRITON:
        if os.environ.get("MIXBENCH_REQUIRE_TRITON"):
            pytest.fail("MIXBENCH_REQUIRE_TRITON is set but triton is not installed")
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    inner = Path(__file__).with_name(filename)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(inner)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "deselected" not in summary, summary
    assert skips_allowed or "skipped" not in summary, summary
