"""GPU-hour estimates checked against hand-computed numbers from stored measurements; bad input gives one line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from harness.cli import main
from harness.measure.cost import ASSUMED_MFU, CostError, duration, estimate, gpu_kind, measurements, predicted_gpu_hours
from harness.store.database import RunRecord, Store

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def throughput(
    store: Store, tokens_per_s: float, gpus: int = 1, gpu: str = "H100", when: datetime = T0, **cell
) -> None:
    row = {"mixer": "attention", "backbone": "transformer", "size": "125m", "seq_len": 2048, "backend": "flash-attn"}
    store.add_throughput(
        row | cell | {"gpu": gpu, "gpus": gpus, "tokens_per_s": tokens_per_s, "source": "test", "created_at": when}
    )


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "cost.db")


def test_a_measured_speed_gives_tokens_over_rate_per_gpu(store):
    throughput(store, 8 * 275_000.0, gpus=8)  # 275k tokens/s per GPU, measured on 8
    throughput(store, 1_000.0, gpu="A100")  # another kind: not used for H100
    e = estimate("attention", "transformer", "125m", 2048, 2_190_999_552, 1.94e18, "H100", 4, measurements(store))
    assert e.measured and e.gpu_hours == pytest.approx(2_190_999_552 / 275_000 / 3600)  # 2.213 GPU-hours
    assert e.wall_hours == pytest.approx(e.gpu_hours / 4)
    assert "275,000 tokens/s/GPU (flash-attn; test)" in e.basis


def test_the_newest_measurement_wins(store):
    throughput(store, 100_000.0, when=T0)
    throughput(store, 200_000.0, when=T0 + timedelta(days=1), backend="sdpa")
    e = estimate("attention", "transformer", "125m", 2048, 7_200_000_000, 0.0, "H100", 1, measurements(store))
    assert e.gpu_hours == pytest.approx(7.2e9 / 200_000 / 3600) == pytest.approx(10.0) and "sdpa" in e.basis


def test_without_a_measurement_the_flops_at_the_assumed_mfu(store):
    throughput(store, 275_000.0, size="350m")  # the same architecture at another size does not count
    e = estimate("attention", "transformer", "125m", 2048, 10**9, 1.94e18, "H200", 8, measurements(store))
    assert not e.measured and e.basis == f"assumed MFU {ASSUMED_MFU:.0%}"
    assert e.gpu_hours == pytest.approx(1.94e18 / (989e12 * 0.20) / 3600)  # 2.7245 GPU-hours


def test_a_finished_gpu_run_is_a_measurement_and_its_prediction_uses_only_earlier_ones(store):
    record = RunRecord("r1", "s", "ttt_linear", "transformer", "125m", 2048, "pile", {})
    store.claim(record)
    store.finish(
        "r1",
        metrics=[
            (1, "train/tokens_per_s", 294_000.0),
            (1, "train/world_size", 2.0),
            (1, "train/tokens", 2.2e9),
            (1, "flops/train", 1.48e18),
            (1, "train/seconds", 7483.0),
        ],
        position_loss=[],
        n_params=1,
        n_params_non_embedding=1,
        backend="triton",
        environment={"device": "NVIDIA H100 80GB HBM3"},
    )
    (m,) = [m for m in measurements(store) if m.mixer == "ttt_linear"]
    assert (m.gpu, m.tokens_per_s_per_gpu, m.backend, m.source) == ("H100", 147_000.0, "triton", "run r1")
    run = store.run("r1")
    values = {"train/tokens": 2.2e9, "flops/train": 1.48e18, "train/world_size": 2.0}
    before = predicted_gpu_hours(run, values, measurements(store))
    assert not before.measured, "its own speed is not a prediction of itself"
    assert before.gpu_hours == pytest.approx(1.48e18 / (989e12 * 0.2) / 3600)


def test_gpu_kinds_and_durations():
    assert gpu_kind("h100") == "H100" and gpu_kind("H100 pcie") == "H100 PCIe" and gpu_kind("h200") == "H200"
    with pytest.raises(CostError, match=r"^--gpu B300: unknown GPU kind; known kinds: H200, H100 PCIe, H100, A100$"):
        gpu_kind("B300")
    with pytest.raises(CostError, match="at least one GPU"):
        estimate("a", "b", "c", 1, 1, 1.0, "H100", 0, [])
    assert duration(3 * 3600 + 4 * 60 + 5) == "03:04:05" and duration(2 * 86400 + 3 * 3600 + 4 * 60) == "2d 03:04"


def test_dry_run_prints_gpu_hours_per_cell_and_in_total(write_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    store = Store(tmp_path / "c.db")
    throughput(store, 1_000.0, size="micro", seq_len=32, backend="sdpa")  # suite: 2048 tokens per cell
    suite = write_suite(models=["attention@transformer", "ttt_linear@transformer"])
    assert main(["run", str(suite), "--dry-run", "--gpu", "h100", "--gpus", "8", "--db", str(tmp_path / "c.db")]) == 0
    out = capsys.readouterr().out
    (attention,) = [line for line in out.splitlines() if "attention@transformer" in line]
    assert f"{2048 / 1000 / 3600:.3g}" in attention and "1,000 tokens/s/GPU (sdpa; test)" in attention
    (ttt,) = [line for line in out.splitlines() if "ttt_linear@transformer" in line]
    assert "assumed MFU 20%" in ttt and "wall on 8× H100" in out and "total " in out and "GPU-hours on H100" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--dry-run", "--gpu", "B300"],
            "error: --gpu B300: unknown GPU kind; known kinds: H200, H100 PCIe, H100, A100",
        ),
        (["--gpu", "H100"], "error: --gpu costs a suite before launching it: add --dry-run"),
    ],
)
def test_bad_cost_input_is_one_line(write_suite, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_suite()), *argv]) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
