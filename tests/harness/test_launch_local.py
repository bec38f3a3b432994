"""The local launcher: cells as parallel jobs on one machine, sharing out its GPUs; a killed
launcher or Ctrl-C never leaves a job running. No submitit here (it is the Slurm extra), so
these run wherever mixbench does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from processes import alive, descendants, needs_proc, wait_for

from harness.cli import main
from harness.config.launcher import LauncherSection
from harness.launch.job import cell_command
from harness.launch.local import slots
from harness.launch.submit import LaunchError
from harness.store.database import Store, StoreError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # jobs import this worktree's harness


def test_cells_get_their_share_of_the_gpus():
    eight = [str(i) for i in range(8)]
    assert slots(LauncherSection(gpus_per_cell=1), eight) == [(g,) for g in eight]
    assert slots(LauncherSection(gpus_per_cell=4), eight) == [tuple(eight[:4]), tuple(eight[4:])]
    assert slots(LauncherSection(gpus_per_cell=3), eight) == [("0", "1", "2"), ("3", "4", "5")]
    assert slots(LauncherSection(gpus_per_cell=1, parallel=2), ["4", "6", "7"]) == [("4",), ("6",)]
    assert slots(LauncherSection(parallel=3), []) == [(), (), ()]
    assert not LauncherSection().local_jobs and LauncherSection(parallel=1).local_jobs
    with pytest.raises(
        LaunchError, match="gpus_per_cell is 2 but 0 GPUs are visible here; on CPU set launcher.parallel"
    ):
        slots(LauncherSection(gpus_per_cell=2), [])
    multi = cell_command(Path("s.yaml"), "a@b/micro/T32", (), ["--standalone", "--nproc-per-node", "4"])
    assert multi[1:5] == ["-m", "harness.launch.torchrun", "--standalone", "--nproc-per-node"]
    assert cell_command(Path("s.yaml"), "a@b/micro/T32")[1:4] == ["-m", "harness", "run"], "one GPU: no torchrun"


def test_gpus_per_cell_without_gpus_is_one_line(write_suite, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["run", str(write_suite(launcher={"gpus_per_cell": 2}))]) == 2
    err = capsys.readouterr().err
    assert "gpus_per_cell is 2 but 0 GPUs" in err and err.count("\n") == 1


def steps_by_cell(db: Path) -> dict[str, float]:
    """The latest stored training step of each running cell (none before the store exists)."""
    if not db.exists():
        return {}
    try:
        return {k: v for k, _, n, v in Store(db).metric_values() if n == "progress/step"}
    except StoreError:  # a job is creating the schema right now
        return {}


def stored_numbers(db: str) -> dict[tuple[str, float, str, int], float]:
    """Every stored metric but the timings, by (size, learning rate, name, step): the same cell in another suite."""
    timed = ("seconds", "tokens/s", "tokens_per_s", "mfu", "health/slow")  # a slow flag is a timing too
    cells = {r.run_key: (r.size, r.config["train"]["lr"]) for r in Store(db).runs()}
    return {(*cells[k], n, s): v for k, s, n, v in Store(db).metric_values() if not any(t in n for t in timed)}


@pytest.fixture
def one_thread(monkeypatch):
    """This process and the jobs it starts compute with one thread each (the same float sums)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def start_launcher(suite: Path, db: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(suite), "--db", db],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def stop_mid_training(launch: subprocess.Popen, db: str, stop: Callable[[int], None]) -> str:
    """Once both jobs train, ``stop(launcher pid)``; then every process it started must end. Returns its output."""
    try:
        wait_for(lambda: len(steps_by_cell(Path(db))) == 2 or launch.poll() is not None, 240, "the jobs never trained")
        assert launch.poll() is None, launch.stdout.read()
        started = descendants(launch.pid)
        assert len(started) >= 2, "two jobs"
        stop(launch.pid)
        out, _ = launch.communicate(timeout=120)
        wait_for(lambda: not any(alive(p) for p in started), 120, f"left running: {[p for p in started if alive(p)]}")
    finally:
        if launch.poll() is None:
            os.killpg(launch.pid, signal.SIGKILL)
    return out


# Two micro cells (a grid of two learning rates), long enough to be stopped: on a quiet machine one job can
# train a few hundred steps while the other is still importing, so a shorter budget lets a cell finish first.
TWO_CELLS = {
    "tokens": 1000 * 256,
    "batch_tokens": 256,
    "lr": [3e-3, 1e-3],
    "log_every": 10,
    "checkpoint_every": 10,
    "device": "cpu",
}


@needs_proc
def test_local_jobs_survive_a_killed_launcher_and_end_with_the_serial_numbers(write_suite, one_thread, capsys):
    """Two cells at once; kill -9 of the launcher mid-training: each job sees it gone, saves a checkpoint and exits,
    leaving no process behind; the rerun resumes both, each done once, with the numbers of a serial run."""
    parallel = write_suite(train=TWO_CELLS, launcher={"parallel": 2})
    serial = write_suite("serial", train=TWO_CELLS)
    stop_mid_training(start_launcher(parallel, "parallel.db"), "parallel.db", lambda pid: os.kill(pid, signal.SIGKILL))
    errors = [r.error for r in Store("parallel.db").runs()]
    assert len(errors) == 2 and all(e.startswith("stopped by SIGTERM at step") for e in errors), errors
    assert main(["run", str(parallel), "--db", "parallel.db"]) == 0
    out = capsys.readouterr().out
    assert "2 cells, 2 at once on CPU" in out and out.count("started on CPU") == 2 and out.count(": done in") == 2
    runs = Store("parallel.db").runs()
    assert sorted(r.status for r in runs) == ["done", "done"] and all(r.job_id.startswith("local:") for r in runs)
    logs = [p.read_text() for p in Path("results/jobs/unit/local").glob("*.log")]
    assert len(logs) == 2 and all("resumed from the checkpoint of step" in log for log in logs)
    assert main(["run", str(parallel), "--db", "parallel.db"]) == 0  # a rerun starts nothing
    assert "started" not in capsys.readouterr().out
    assert main(["run", str(serial), "--db", "serial.db"]) == 0
    ours, theirs = stored_numbers("parallel.db"), stored_numbers("serial.db")
    assert len(ours) > 40 and ours == theirs


@needs_proc
def test_ctrl_c_to_the_local_launcher_mid_training_leaves_no_job_running(write_suite):
    """SIGINT to the launcher's process group, as a terminal sends it: each job records itself interrupted."""
    suite = write_suite(train=TWO_CELLS, launcher={"parallel": 2})
    out = stop_mid_training(start_launcher(suite, "l.db"), "l.db", lambda pid: os.killpg(pid, signal.SIGINT))
    errors = [r.error for r in Store("l.db").runs()]
    assert len(errors) == 2 and all("interrupted by the user" in e for e in errors), out
