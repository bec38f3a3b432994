"""``train.loggers``: TensorBoard event files and an offline W&B run mirror the store's curve (read back here,
no network); a tracker that is not installed stops the run with one line. The trackers are the
``[trackers]`` extra, which ``[dev]`` includes, so these tests run wherever the suite does."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.store.database import Store


def wandb_history(path: Path) -> dict[int, dict[str, float]]:
    """``step -> {name: value}`` from an offline run's ``.wandb`` file.

    Its layout is LevelDB's log format behind a 7-byte header (``:W&B``, magic, version):
    32 KiB blocks of records, each a 4-byte checksum, 2-byte length, 1-byte type (full, first,
    middle, last) and the bytes of one protobuf ``Record``, split across blocks when it must be.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    history: dict[int, dict[str, float]] = {}
    pieces: list[bytes] = []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pieces.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full, last: one record is complete
            record = pb.Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                history[record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
    return history


def test_tensorboard_and_offline_wandb_receive_the_stored_curve(write_suite, tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    suite = write_suite(
        train={
            "tokens": 6 * 256,
            "batch_tokens": 256,
            "lr": 3e-3,
            "log_every": 2,
            "device": "cpu",
            "loggers": ["tensorboard", "wandb"],
        }
    )
    assert main(["run", str(suite)]) == 0
    (run,) = Store().runs()
    stored = sorted((s, v) for k, s, n, v in Store().metric_values() if n == "train/loss")
    assert [s for s, _ in stored] == [1, 3, 5, 6]

    events = EventAccumulator(str(tmp_path / "results" / "logs" / "tensorboard" / "unit" / run.run_key))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [e.step for e in scalars] == [s for s, _ in stored]
    assert [e.value for e in scalars] == pytest.approx([v for _, v in stored], rel=1e-6)  # float32 in event files
    assert {"train/lr", "train/grad_norm", "tokens/s", "tokens/s/recent"} <= set(events.Tags()["scalars"])

    (offline,) = (tmp_path / "results" / "logs" / "wandb" / "wandb").glob(f"offline-run-*-{run.run_key}/run-*.wandb")
    history = wandb_history(offline)
    assert sorted(history) == [s for s, _ in stored]
    assert [history[s]["train/loss"] for s in sorted(history)] == [v for _, v in stored]


def test_a_tracker_that_is_not_installed_is_one_line(write_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, as where it is not installed
    suite = write_suite(train={"tokens": 2048, "batch_tokens": 256, "lr": 3e-3, "loggers": ["wandb"]})
    assert main(["run", str(suite)]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: train.loggers names wandb, but wandb is not installed (pip install 'mixbench[trackers]')"
    )
    assert not (tmp_path / "results" / "mixbench.db").exists() or not Store().runs(), "nothing was claimed"


def test_an_unknown_tracker_is_refused_by_the_suite(write_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = write_suite(train={"tokens": 2048, "batch_tokens": 256, "lr": 3e-3, "loggers": ["mlflow"]})
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.endswith("unit.yaml: train.loggers.0: Input should be 'tensorboard' or 'wandb'")
        and len(err.splitlines()) == 1
    )
