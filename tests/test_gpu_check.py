"""scripts/gpu_check.py's logic on CPU: the no-GPU exit, the checks it would run, running and
judging them, the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.config.suite import load_suite
from harness.store.database import Store

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_without_a_gpu_it_says_so_in_one_line_and_exits_with_its_own_code(gpu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "out")]) == gpu_check.EXIT_NO_GPU
    out = capsys.readouterr().out
    assert gpu_check.EXIT_NO_GPU not in (0, 1, 2) and len(out.strip().splitlines()) == 1 and "no CUDA GPU" in out
    assert not (tmp_path / "out").exists()  # nothing was run or written


def test_the_checks_cover_gpu_tests_smoke_latency_variants_and_every_benchmark(gpu_check, tmp_path):
    checks = gpu_check.build_checks(tmp_path, python="python", workers=12)
    names = [c.name for c in checks]
    assert names[0] == "GPU-only tests (pytest -m gpu)" and checks[0].command[:8] == [
        "python",
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu",
        "-n",
        "12",
    ]
    serial = gpu_check.build_checks(tmp_path, python="python", workers=0)[0].command
    assert serial[6:8] == ["-p", "no:cacheprovider"] and "-n" not in serial
    assert names[1] == "smoke micro, CUDA bf16"
    assert names[2:6] == [f"latency tiny, {d}, {g}" for d in ("float32", "bfloat16") for g in ("eager", "CUDA graphs")]
    benchmarks = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
    assert names[6:] == [f"benchmarks/{b} --device cuda --quick" for b in benchmarks] and benchmarks
    assert all(c.command[-3:] == ["--device", "cuda", "--quick"] for c in checks[6:])
    smoke = load_suite(tmp_path / "smoke_micro_cuda.yaml").spec
    assert smoke.sizes == ["micro"] and smoke.train.device == "cuda" and smoke.latency is None
    models = gpu_check.smoke_models()
    assert set(smoke.models) == set(models) and set(load_suite(ROOT / "suites" / "smoke.yaml").spec.models) <= set(
        models
    )
    graphs = load_suite(tmp_path / "gpu_check_latency_bfloat16_graphs.yaml").spec.latency
    assert (graphs.sizes, graphs.dtype, graphs.cuda_graphs, graphs.device) == (["tiny"], "bfloat16", True, "cuda")


def test_checks_run_in_turn_with_timeouts_and_a_budget_and_make_one_table(gpu_check, tmp_path):
    py = sys.executable
    Check = gpu_check.Check
    checks = [
        Check("passes", [py, "-c", "print('fine')"], timeout_s=60),
        Check("fails", [py, "-c", "import sys; print('assertion: 3 != 4'); sys.exit(1)"], timeout_s=60),
        Check("hangs", [py, "-c", "import time; time.sleep(30)"], timeout_s=1),
        Check(
            "judged",
            [py, "-c", "pass"],
            timeout_s=60,
            judge=lambda code, log: [
                gpu_check.Result("row a", True, 0.0),
                gpu_check.Result("row b", False, 2.5, "bad"),
            ],
        ),
    ]
    results = gpu_check.run_checks(checks, tmp_path, echo=lambda line: None)
    assert [(r.check, r.passed) for r in results] == [
        ("passes", True),
        ("fails", False),
        ("hangs", False),
        ("row a", True),
        ("row b", False),
    ]
    assert results[1].detail == "exit 1: assertion: 3 != 4" and results[2].detail.startswith("timed out")
    assert results[4].seconds == 2.5 and results[3].seconds > 0  # a row's own time, or the process's share
    assert (tmp_path / "01_passes.log").read_text().strip() == "fine"
    late = gpu_check.run_checks(
        [Check("late", [py, "-c", "pass"], timeout_s=60)], tmp_path, budget_s=0, echo=lambda line: None
    )
    assert not late[0].passed and "budget" in late[0].detail
    table = gpu_check.table_markdown(results, "# header")
    assert "| check | result | seconds |" in table and "| fails | FAIL: exit 1: assertion: 3 != 4 |" in table
    assert "| passes | pass |" in table and table.rstrip().endswith("2 of 5 checks passed.")


def test_the_gpu_tests_use_xdist_where_it_is_installed_and_run_serially_otherwise(gpu_check, monkeypatch):
    monkeypatch.setattr(gpu_check.os, "cpu_count", lambda: 16)
    find_spec = gpu_check.importlib.util.find_spec
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda name: object() if name == "xdist" else find_spec(name)
    )
    assert gpu_check.pytest_workers() == gpu_check.XDIST_WORKERS == 12
    monkeypatch.setattr(gpu_check.os, "cpu_count", lambda: 4)
    assert gpu_check.pytest_workers() == 4
    monkeypatch.setattr(
        gpu_check.importlib.util, "find_spec", lambda name: None if name == "xdist" else find_spec(name)
    )
    assert gpu_check.pytest_workers() == 0


def test_pytest_skips_on_the_gpu_machine_fail_the_row(gpu_check, tmp_path):
    junit = tmp_path / "pytest.xml"
    junit.write_text('<testsuites><testsuite tests="5" failures="0" errors="0" skipped="1"/></testsuites>')
    row = gpu_check.judge_pytest(junit, 0)
    assert not row.passed and "1 skipped" in row.detail
    junit.write_text('<testsuites><testsuite tests="5" failures="0" errors="0" skipped="0"/></testsuites>')
    assert gpu_check.judge_pytest(junit, 0).passed and not gpu_check.judge_pytest(tmp_path / "none.xml", 4).passed
    assert gpu_check.judge_pytest(junit, 0, workers=12).detail == "5 passed, 12 xdist workers"
    assert gpu_check.judge_pytest(junit, 0).detail == "5 passed, serially (pytest-xdist is not installed)"


def latency_row(mixer: str, mode: str, backend: str, graph: str | None = None, status: str = "ok") -> dict:
    return {
        "suite": "s",
        "mixer": mixer,
        "backbone": "transformer",
        "size": "tiny",
        "mode": mode,
        "context": 128,
        "batch": 1,
        "dtype": "float32",
        "device": "gpu",
        "backend": backend,
        "status": status,
        "median_ms": 1.0,
        "p20_ms": 1.0,
        "p80_ms": 1.0,
        "tokens_per_s": 1.0,
        "peak_memory_bytes": 1,
        "environment": {"latency": {"cuda_graph": graph, "error": None if status == "ok" else "OOM"}},
    }


def test_latency_rows_are_judged_on_status_attention_backend_and_graph_replay(gpu_check, tmp_path):
    db = str(tmp_path / "l.db")
    Store(db).replace_latency(
        [
            latency_row("attention", "prefill", "sdpa"),
            latency_row("attention", "decode", "sdpa+cuda-graph", "used"),
            latency_row("mamba", "decode", "torch", "unsupported, ran eagerly: RuntimeError: sync"),
        ]
    )
    eager = gpu_check.judge_latency(db, "s", "float32", False, 0)
    assert eager.passed and "attention: decode sdpa+cuda-graph, prefill sdpa" in eager.detail
    graphs = gpu_check.judge_latency(db, "s", "float32", True, 0)
    assert not graphs.passed and "mamba@transformer decode T128: graph unsupported" in graphs.detail
    Store(db).replace_latency([latency_row("attention", "prefill", "flash-attn")])  # flash-attn cannot take float32
    assert "attention prefill: backend 'flash-attn'" in gpu_check.judge_latency(db, "s", "float32", False, 0).detail
    assert not gpu_check.judge_latency(db, "s", "float32", False, 1).passed  # the harness's own exit status counts
    assert not gpu_check.judge_latency(str(tmp_path / "empty.db"), "s", "float32", False, 0).passed
