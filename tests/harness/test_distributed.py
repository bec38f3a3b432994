"""Many processes, one loop (CPU, gloo): DDP and FSDP2 match one process; checkpoints resume across
world sizes and kills; a preemption saves and says how to resume; a failure on one rank ends all.

Tolerance: a 2-rank run sums the same per-sequence gradients as one process but in another
order (per-rank means, then an all-reduce), so the float32 loss curves agree to ~1e-6; we allow
1e-4 relative. Resuming in one process from a one-process checkpoint is bit-for-bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from dist_worker import train_micro, weight_norms, worker
from processes import wait_for

from harness.data import DataConfig, load_packed
from harness.engine.distributed import TIMEOUT_ENV, Group
from harness.engine.resume import PREEMPTED_EXIT_CODE
from harness.store.database import Store, StoreError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CURVE_RTOL = 1e-4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """DDP and FSDP2 runs on 2 processes (losses + their checkpoint folders), and the 1-process curve."""
    out = tmp_path_factory.mktemp("two_ranks")
    corpus = out / "corpus.txt"
    kjv = ROOT / "harness" / "corpus" / "kjv.txt"
    corpus.write_text("\n".join(kjv.read_text().splitlines()[:40]) + "\n")
    load_packed(
        DataConfig(source=str(corpus), tokenizer="bytes", seq_len=32), out / "cache"
    )  # before the ranks read it
    mp.start_processes(worker, args=(2, free_port(), str(corpus), str(out)), nprocs=2, start_method="spawn")
    single, model = train_micro(corpus, out / "cache", None, Group())
    return out, corpus, single, weight_norms(model)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_the_single_process_loss_curve(two_rank_runs, mode):
    out, _, single, single_norms = two_rank_runs
    run = json.loads((out / f"{mode}.json").read_text())
    assert len(run["losses"]) == len(single) == 8
    assert run["losses"] == pytest.approx(single, rel=CURVE_RTOL)
    assert single[-1] < single[0] - 0.5, "the run learns, so the comparison means something"
    assert run["norms"] == pytest.approx(single_norms, rel=CURVE_RTOL), "rank 0's full model has every trained weight"


def test_a_two_rank_fsdp_checkpoint_resumes_in_one_process(two_rank_runs):
    out, corpus, single, _ = two_rank_runs
    folder = out / "fsdp"
    assert sorted(p.name for p in folder.iterdir()) == ["step-000004", "step-000008"]
    torch.manual_seed(123)  # the checkpoint restores the RNG too; the model's init must not matter
    (folder / "step-000008").rename(folder / "step-000008.partial")  # a save that never completed
    resumed, _ = train_micro(corpus, out / "cache", folder, Group())
    assert resumed[:4] == pytest.approx(single[:4], rel=CURVE_RTOL), "the losses before the checkpoint come back"
    assert resumed[4:] == pytest.approx(single[4:], rel=CURVE_RTOL)


def cli(args: list[str], tmp_path: Path, fault: str | None = None, timeout: float = 120, **env: str):
    environment = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1", **env}
    environment.pop("MIXBENCH_TEST_FAULT", None)
    if fault:
        environment["MIXBENCH_TEST_FAULT"] = fault
    return subprocess.run(
        args, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=timeout, start_new_session=True
    )


def progress_step(db: Path) -> float:
    """The latest stored training step of any cell (0 before the runner created its store)."""
    if not db.exists():
        return 0
    try:
        return max((v for _, _, n, v in Store(db).metric_values() if n == "progress/step"), default=0)
    except StoreError:  # the runner is creating the schema right now
        return 0


def losses_and_val(store: Store, run_key: str) -> tuple[list[tuple[int, float]], float]:
    rows = [(k, s, n, v) for k, s, n, v in store.metric_values() if k == run_key]
    curve = sorted((s, v) for _, s, n, v in rows if n == "train/loss")
    return curve, next(v for _, _, n, v in rows if n == "val/loss")


def test_killed_then_preempted_cell_resumes_to_the_uninterrupted_result(write_suite, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    suite = write_suite(
        models=["faults:FaultyAttention@transformer"],
        train={"tokens": 12 * 256, "batch_tokens": 256, "lr": 3e-3, "log_every": 2, "checkpoint_every": 3},
    )
    run = [sys.executable, "-m", "harness", "run", str(suite), "--db", "killed.db"]
    killed = cli(run, tmp_path, fault="sigkill_group:8")  # the whole process group, in step 8
    assert killed.returncode == -signal.SIGKILL
    steps = next((tmp_path / "results" / "checkpoints").iterdir()) / "steps"
    assert sorted(p.name for p in steps.iterdir()) == ["step-000003", "step-000006"]

    preempted = cli(run, tmp_path, fault="sigterm:2")  # resumed after step 6: its 2nd step is step 8
    assert preempted.returncode == PREEMPTED_EXIT_CODE, preempted.stderr
    line = [ln for ln in preempted.stdout.splitlines() if "resume with:" in ln]
    assert len(line) == 1 and "SIGTERM at step 8 of 12" in line[0]
    assert f"python -m harness run {suite} --db killed.db" in line[0]
    assert sorted(p.name for p in steps.iterdir()) == ["step-000006", "step-000008"]

    finished = cli(run, tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resumed from the checkpoint of step 8 of 12" in finished.stdout
    assert not steps.exists(), "the step checkpoints go once the final weights are stored"

    monkeypatch.chdir(tmp_path)  # the uninterrupted run, in this process, same code path
    from harness.cli import main

    assert main(["run", str(suite), "--db", "clean.db", "--checkpoint-dir", "clean"]) == 0
    (key,) = [r.run_key for r in Store(tmp_path / "clean.db").runs()]
    clean_curve, clean_val = losses_and_val(Store(tmp_path / "clean.db"), key)
    curve, val = losses_and_val(Store(tmp_path / "killed.db"), key)
    assert [s for s, _ in curve] == [s for s, _ in clean_curve] == [1, 3, 5, 7, 9, 11, 12]
    assert [v for _, v in curve] == pytest.approx([v for _, v in clean_curve], rel=1e-6)
    assert val == pytest.approx(clean_val, rel=1e-6)


def torchrun(suite: Path, db: str, *args: str) -> list[str]:
    """``python -m harness.launch.torchrun`` (torchrun with the harness's exit statuses) on 2 CPU ranks."""
    return [
        sys.executable,
        "-m",
        "harness.launch.torchrun",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        *args,
        "-m",
        "harness",
        "run",
        str(suite),
        "--db",
        db,
    ]


def test_an_exception_on_rank_one_ends_the_launch_within_seconds_and_is_recorded_once(
    write_suite, tmp_path, monkeypatch
):
    """At the default 600 s collective timeout: rank 1 records its own failure and exits; rank 0, blocked in
    the gradient all-reduce, fails as its peer's connection closes, and torchrun ends the launch."""
    suite = write_suite(
        models=["attention@transformer", "faults:FaultyAttention@transformer"],
        train={"tokens": 4 * 256, "batch_tokens": 256, "lr": 3e-3, "log_every": 2},
    )
    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    result = cli(torchrun(suite, "two.db"), tmp_path, fault="raise:3:1", timeout=300)
    ended = datetime.now(timezone.utc)
    assert result.returncode == 1, result.stdout + result.stderr
    runs = {r.mixer: r for r in Store(tmp_path / "two.db").runs()}
    assert runs["attention"].status == "done", "the first cell trained on both ranks, rank 0 wrote it"
    values = {n: v for k, _, n, v in Store(tmp_path / "two.db").metric_values() if k == runs["attention"].run_key}
    assert values["train/world_size"] == 2 and values["progress/step"] == 4
    faulty = runs["faults:FaultyAttention"]
    assert (faulty.status, faulty.error) == ("failed", "rank 1: RuntimeError: injected fault")
    assert result.stdout.count("failed: rank 1: RuntimeError: injected fault") == 1
    after_failure = (ended - faulty.finished_at.replace(tzinfo=timezone.utc)).total_seconds()
    print(f"the launch ended {after_failure:.1f} s after the failure was recorded")
    assert after_failure < 30, f"the launch outlived the failure by {after_failure:.0f} s"
    assert "Traceback" not in result.stderr.split("injected fault")[-1], "no torchrun error summary after the failure"


def test_sigterm_to_torchrun_saves_prints_one_resume_line_and_exits_75(write_suite, tmp_path):
    suite = write_suite(
        models=["attention@transformer"],
        train={"tokens": 4000 * 256, "batch_tokens": 256, "lr": 3e-3, "log_every": 1, "checkpoint_every": 1000},
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen(
        torchrun(suite, "two.db"),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(lambda: progress_step(tmp_path / "two.db") >= 2, 240, "the cell never trained two steps")
        launch.send_signal(signal.SIGTERM)
        out, err = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    assert launch.returncode == PREEMPTED_EXIT_CODE, out + err
    assert out.count("resume with:") == 1 and "Traceback" not in err, out + err
    [run] = Store(tmp_path / "two.db").runs()
    assert run.status == "failed" and "stopped by SIGTERM" in run.error
    steps = next((tmp_path / "results" / "checkpoints").iterdir()) / "steps"
    assert [p.name for p in steps.iterdir()] and all(p.name.startswith("step-") for p in steps.iterdir())
