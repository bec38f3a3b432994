"""The latency protocol: rows per mode and context, OOM and failures recorded, reruns, suites, report."""

from __future__ import annotations

import pytest
import torch
import yaml

from harness.cli import main
from harness.config.suite import SuiteError, load_suite
from harness.measure import latency as latency_module
from harness.store.database import Store

# device pinned: these tests assert CPU facts (sdpa, perf_counter, no peak memory); the GPU
# variant is tests/harness/test_gpu_paths.py
TINY = {"contexts": [16, 32], "warmup": 1, "repeats": 2, "decode_tokens": 4, "vocab_size": 256, "device": "cpu"}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/ (db, dashboards) land in the test's folder


@pytest.fixture
def latency_suite(tmp_path):
    """``latency_suite(**latency_fields)``: a latency-only suite (no train section) at size micro."""

    def write(name: str = "lat", models: list[str] | None = None, **fields) -> str:
        suite = {
            "name": name,
            "models": models or ["attention@transformer"],
            "sizes": ["micro"],
            "latency": {**TINY, **fields},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
        return str(path)

    return write


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sweep_stores_one_row_per_mode_and_context(latency_suite, capsys):
    code, out, _ = run_cli(capsys, "latency", latency_suite())
    assert code == 0, out
    rows = Store().latency_rows("lat")
    assert sorted((r.mode, r.context) for r in rows) == [
        ("decode", 16),
        ("decode", 32),
        ("prefill", 16),
        ("prefill", 32),
    ]
    for r in rows:
        assert (r.mixer, r.backbone, r.size, r.batch, r.dtype, r.status) == (
            "attention",
            "transformer",
            "micro",
            1,
            "float32",
            "ok",
        )
        assert 0 < r.p20_ms <= r.median_ms <= r.p80_ms
        assert r.tokens_per_s == pytest.approx((r.context if r.mode == "prefill" else 1) / (r.median_ms / 1e3))
        assert r.backend == "sdpa" and r.device.startswith("cpu") and r.peak_memory_bytes is None
        details = r.environment["latency"]
        assert len(details["samples_ms"]) == 2 and details["timer"] == "perf_counter" and details["n_params"] > 0
        assert details["protocol"]["decode_tokens"] == 4 and details["protocol"]["mixer_settings"]["backend"] == "auto"
    assert "latency of suite lat" in out and "prefill" in out and "sdpa" in out


def test_out_of_memory_at_one_context_is_recorded_and_the_sweep_goes_on(latency_suite, capsys, monkeypatch):
    real_prefill = latency_module.Sweep.prefill

    def prefill(self, context):
        if context == 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return real_prefill(self, context)

    monkeypatch.setattr(latency_module.Sweep, "prefill", prefill)
    code, out, _ = run_cli(capsys, "latency", latency_suite(contexts=[16, 32, 48]))
    assert code == 0, out  # running out of memory is a result, not a failure
    status = {(r.mode, r.context): r for r in Store().latency_rows("lat")}
    oom = status[("prefill", 32)]
    assert oom.status == "oom" and oom.median_ms is None and oom.tokens_per_s is None
    assert "out of memory" in oom.environment["latency"]["error"]
    assert all(r.status == "ok" and r.median_ms > 0 for key, r in status.items() if key != ("prefill", 32))
    assert "out of memory (recorded)" in out


def test_other_errors_are_failed_rows_and_the_exit_status_says_so(latency_suite, capsys, monkeypatch):
    def decode(self, context):
        raise ValueError("state shapes disagree\nsecond line")

    monkeypatch.setattr(latency_module.Sweep, "decode", decode)
    code, out, _ = run_cli(capsys, "latency", latency_suite())
    assert code == 1
    rows = Store().latency_rows("lat")
    assert {r.status for r in rows if r.mode == "prefill"} == {"ok"}
    failed = [r for r in rows if r.mode == "decode"]
    assert [r.status for r in failed] == ["failed", "failed"]
    assert failed[0].environment["latency"]["error"] == "ValueError: state shapes disagree"


def test_oom_is_recognised_on_every_device():
    assert latency_module.is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert latency_module.is_oom(MemoryError())
    assert latency_module.is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"))
    assert not latency_module.is_oom(RuntimeError("shape mismatch"))


def test_latency_rerun_replaces_rows_and_run_skips_measured_models(latency_suite, capsys):
    path = latency_suite()
    assert run_cli(capsys, "latency", path)[0] == 0
    first = Store().latency_rows("lat")
    assert run_cli(capsys, "latency", path)[0] == 0  # measures again, replaces
    second = Store().latency_rows("lat")
    assert len(second) == 4 and min(r.created_at for r in second) > max(r.created_at for r in first)

    code, out, _ = run_cli(capsys, "run", path)  # same settings: nothing to time, nothing to train
    assert code == 0 and "already measured" in out
    assert {r.id for r in Store().latency_rows("lat")} == {r.id for r in second}
    assert Store().runs() == []  # a latency-only suite trains nothing

    code, out, _ = run_cli(capsys, "run", latency_suite(repeats=3))  # new settings: measured again
    rows = Store().latency_rows("lat")
    assert code == 0 and len(rows) == 4 and all(len(r.environment["latency"]["samples_ms"]) == 3 for r in rows)


def test_only_selects_models(latency_suite, capsys):
    path = latency_suite(models=["attention@transformer", "attention@mamba"])
    assert run_cli(capsys, "latency", path, "--only", "attention@mamba")[0] == 0
    assert {r.backbone for r in Store().latency_rows("lat")} == {"mamba"}


def test_dry_run_prints_the_latency_plan(latency_suite, capsys):
    code, out, _ = run_cli(capsys, "run", latency_suite(), "--dry-run")
    assert code == 0 and "latency plan" in out and "16, 32" in out and "dry run" not in out
    assert Store().latency_rows() == []


def test_training_suite_with_a_latency_section_trains_and_measures(write_suite, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "run", str(write_suite(latency=TINY)))
    assert code == 0, out
    assert [r.status for r in Store().runs("unit")] == ["done"]
    assert len(Store().latency_rows("unit")) == 4
    page = (tmp_path / "results" / "dashboards" / "unit.html").read_text()
    for title in (
        "Validation perplexity vs training FLOPs",
        "Perplexity by token index",
        "Latency: prefill and decode",
        "Latency measurements",
        "Results",
    ):
        assert title in page


def test_latency_only_suite_gets_a_dashboard_with_oom_marked(latency_suite, capsys, monkeypatch, tmp_path):
    real_decode = latency_module.Sweep.decode

    def decode(self, context):
        if context == 32:
            raise MemoryError
        return real_decode(self, context)

    monkeypatch.setattr(latency_module.Sweep, "decode", decode)
    assert run_cli(capsys, "latency", latency_suite())[0] == 0
    page = (tmp_path / "results" / "dashboards" / "lat.html").read_text()
    assert "Latency: prefill and decode" in page and "decode time per token (ms)" in page
    assert "Validation perplexity" not in page and '"OOM"' in page
    code, out, _ = run_cli(capsys, "report")
    assert code == 0 and "lat.html" in out


def test_latency_command_needs_a_latency_section(write_suite, capsys):
    code, _, err = run_cli(capsys, "latency", str(write_suite()))
    assert code == 2 and "no latency section" in err and "unit.yaml" in err


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"contexts": [16, -1]}, "latency.contexts.1: Input should be greater than 0"),
        ({"contexts": []}, "latency.contexts"),
        ({"contexts": [16, 16]}, "latency.contexts: contexts [16, 16] repeat a length"),
        ({"repats": 3}, "latency.repats: unknown field"),
        ({"repeats": 0}, "latency.repeats"),
        ({"dtype": "float8"}, "latency.dtype"),
        ({"sizes": ["7b"]}, "latency.sizes: unknown size(s) ['7b']"),
        ({"device": "cpu", "cuda_graphs": True}, "latency: cuda_graphs needs a CUDA device"),
    ],
)
def test_bad_latency_sections_name_the_file_and_the_field(latency_suite, fields, message):
    path = latency_suite(**fields)
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_suite_trains_unless_it_is_latency_only(latency_suite, write_suite):
    assert not load_suite(latency_suite()).spec.trains
    assert load_suite(write_suite(latency=TINY)).spec.trains
    assert load_suite(write_suite()).spec.trains


def test_the_shipped_latency_suites_validate():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "suites"
    smoke = load_suite(root / "smoke.yaml").spec
    assert smoke.trains and smoke.latency.sizes == ["tiny"]
    paper = load_suite(root / "latency.yaml").spec  # an unknown mixer fails here: every one must be registered
    assert not paper.trains and paper.latency.batch == 16 and paper.latency.dtype == "bfloat16"
    assert paper.latency.contexts == [1024, 2048, 4096, 8192, 16384, 32768] and paper.sizes == ["1.3b"]
