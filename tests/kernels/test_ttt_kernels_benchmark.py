"""benchmarks/ttt_kernels.py on CPU: a peer that fails is one row that says why, and the table goes on."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ttt_kernels.py"


@pytest.fixture()
def bench(monkeypatch):
    # The script turns the Triton interpreter on where there is no GPU; keep it off in this process.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    spec = importlib.util.spec_from_file_location("ttt_kernels_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ttt_kernels_bench", module)
    spec.loader.exec_module(module)
    return module


def test_a_failing_peer_is_one_row_with_the_first_line_of_its_error_and_the_others_are_timed(bench):
    def fails_to_compile():
        raise RuntimeError(
            "Loop-carried variable b_w has initial type fp32 but is re-assigned to bf16\n  (traceback...)"
        )

    def works():
        return 0.0, lambda backward: [torch.ones(4)]

    impls = [
        bench.peer("fla chunk_ttt_linear (bf16)", "linear", 3e-2, fails_to_compile),
        bench.peer("wrong peer", "linear", 1e-4, lambda: (0.5, lambda backward: [])),
        bench.peer("ttt_linear triton", "linear", 1e-4, works),
        bench.peer("attention sdpa", "attention", 1e-4, works),
    ]
    assert impls[0][4] is None and impls[2][4] is not None
    rows = list(bench.time_rows(impls, "125m", 64, (1, 2, 16), 4, 1, torch.device("cpu"), (1e12, 1e12)))
    assert len(rows) == 4
    assert rows[0] == (
        "| 125m | 64 | fla chunk_ttt_linear (bf16) | FAILED: RuntimeError: Loop-carried variable b_w has "
        "initial type fp32 but is re-assigned to bf16 | - | - | - | - | - |"
    )
    assert rows[1].startswith("| 125m | 64 | wrong peer | FAILED: 0.5 (tol 0.0001) |")
    for row, name in zip(rows[2:], ("ttt_linear triton", "attention sdpa")):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == name and cells[3] == "0.0e+00" and float(cells[5]) >= 0 and cells[7].endswith("x")
