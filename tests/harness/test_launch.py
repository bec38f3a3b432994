"""Launchers through submitit: one job per cell, each landing once; the sbatch script; preemption and requeue.

No cluster here: Slurm is checked through the script submitit writes (a stand-in ``sbatch``
records it), and jobs really run through submitit's local executor, which starts, signals and
requeues them as Slurm would.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from processes import alive, descendants, needs_proc, wait_for
from rich.console import Console

from harness.cli import main
from harness.config.launcher import LauncherSection
from harness.config.suite import SuiteError, load_suite
from harness.launch.job import CellJob, cell_command
from harness.launch.local import slots
from harness.launch.submit import LaunchError, submit_suite
from harness.store.database import Store, StoreError

submitit = pytest.importorskip("submitit", reason="the [slurm] extra (submitit) is not installed")
REPO = Path(__file__).resolve().parents[2]

LAUNCHER = {
    "nodes": 2,
    "gpus_per_node": 4,
    "cpus": 16,
    "partition": "gpu",
    "time": "02:30:00",
    "account": "lab",
    "sbatch": {"qos": "high", "constraint": "h100"},
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # jobs import this worktree's harness


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """An ``sbatch`` that keeps each script it is given and answers with a new job id."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir(), kept.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(
        f'#!/bin/sh\nn=$(ls {kept} | wc -l)\ncp "$1" {kept}/$n.sh\necho "Submitted batch job $((4200 + n))"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (bin_dir / "srun").symlink_to("/bin/true")  # submitit checks that this is a Slurm machine
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


def test_slurm_jobs_carry_the_suite_resources_and_show_as_queued(write_suite, fake_sbatch, capsys):
    suite = write_suite(sizes=["micro", "tiny"], launcher=LAUNCHER)
    assert main(["run", str(suite), "--launcher", "slurm"]) == 0
    scripts = sorted(fake_sbatch.iterdir())
    assert len(scripts) == 2, "one job per cell"
    text = scripts[0].read_text()
    for line in [
        "--nodes=2",
        "--gpus-per-node=4",
        "--cpus-per-task=16",
        "--partition=gpu",
        "--time=150",
        "--account=lab",
        "--qos=high",
        "--constraint=h100",
        "--ntasks-per-node=1",
        "--job-name=mixbench-unit",
        "--signal=USR2@90",
    ]:
        assert f"#SBATCH {line}\n" in text, f"{line} missing from\n{text}"
    runs = Store().runs("unit")
    assert sorted((r.status, r.job_id) for r in runs) == [("queued", "4200"), ("queued", "4201")]
    capsys.readouterr()
    assert main(["results"]) == 0
    out = capsys.readouterr().out
    assert out.count("queued") == 2 and "4200" in out and "4201" in out
    assert main(["run", str(suite), "--launcher", "slurm", "--only", "*/micro/*"]) == 0  # queued again, resubmitted
    assert len(list(fake_sbatch.iterdir())) == 3


def test_the_job_runs_torchrun_with_one_rank_per_gpu_across_nodes(tmp_path):
    job = CellJob(
        suite=tmp_path / "s.yaml",
        label="attention@transformer/micro/T32",
        db="sqlite:///x.db",
        nodes=2,
        ranks_per_node=4,
        workdir=tmp_path,
    )
    command = job.command("node017")
    assert command[1:3] == ["-m", "harness.launch.torchrun"], "torchrun that exits 75 when its ranks are preempted"
    joined = " ".join(command)
    assert "--nnodes 2" in joined and "--nproc-per-node 4" in joined and "--rdzv-endpoint node017:29500" in joined
    assert joined.endswith(
        f"-m harness run {tmp_path / 's.yaml'} --launcher inline --only attention@transformer/micro/T32"
    )
    assert "sqlite" not in joined, "the store URL (perhaps with a password) stays off the command line"
    single = " ".join(CellJob(**{**job.__getstate__(), "nodes": 1, "ranks_per_node": 1}).command("localhost"))
    assert "--standalone" in single and "--nproc-per-node 1" in single


def test_slurm_without_a_cluster_is_one_line(write_suite, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["run", str(write_suite()), "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert "srun" in err and "login node" in err and err.count("\n") == 1
    assert Store().runs() == [], "nothing was queued"


def test_a_latency_only_suite_is_not_submitted(tmp_path, fake_sbatch, capsys):
    suite = tmp_path / "lat.yaml"
    suite.write_text("name: lat\nmodels: [attention@transformer]\nsizes: [micro]\nlatency: {contexts: [16]}\n")
    assert main(["run", str(suite), "--launcher", "slurm"]) == 2
    assert "only measures latency" in capsys.readouterr().err and list(fake_sbatch.iterdir()) == []


def test_a_bad_launcher_section_names_the_field(write_suite):
    with pytest.raises(SuiteError, match="time"):
        load_suite(write_suite(launcher={"time": "soon"}))
    with pytest.raises(SuiteError, match="gpus_per_nodes"):
        load_suite(write_suite(launcher={"gpus_per_nodes": 8}))


def local_executor(tmp_path: Path) -> "submitit.LocalExecutor":
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs", max_num_timeout=1)
    executor.update_parameters(timeout_min=20)
    return executor


def test_local_executor_runs_each_cell_as_its_own_job_exactly_once(write_suite, tmp_path):
    suite_path = write_suite(sizes=["micro", "tiny"])
    suite, store = load_suite(suite_path), Store()
    jobs = submit_suite(suite, suite_path, store, None, Console(), executor=local_executor(tmp_path))
    assert len(jobs) == 2 and len({j.job_id for j in jobs}) == 2
    labels = [j.result() for j in jobs]
    assert sorted(labels) == ["attention@transformer/micro/T32", "attention@transformer/tiny/T32"]
    runs = store.runs("unit")
    assert sorted((r.status, r.job_id) for r in runs) == sorted(("done", str(j.job_id)) for j in jobs)
    per_run = {}
    for key, _step, name, _v in store.metric_values("unit"):
        per_run.setdefault(key, []).append(name)
    assert all(names.count("val/ppl") == 1 for names in per_run.values()) and len(per_run) == 2
    assert submit_suite(suite, suite_path, store, None, Console(), executor=local_executor(tmp_path)) == []


def task_pid(job) -> int:
    """The job's own process (the one submitit signals), a child of the local executor's controller."""
    controller = job._process.pid
    children = Path(f"/proc/{controller}/task/{controller}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_preempted_job_checkpoints_is_requeued_and_the_rerun_completes_the_cell(write_suite, tmp_path, monkeypatch):
    """SIGUSR1 here (submitit's default is USR2; a cluster picks with SUBMITIT_PREEMPT_SIGNAL, read by the job)."""
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    suite_path = write_suite(train={"tokens": 60_000, "batch_tokens": 256, "lr": 3e-3, "log_every": 50})
    suite, store = load_suite(suite_path), Store()
    [job] = submit_suite(suite, suite_path, store, None, Console(), executor=local_executor(tmp_path))
    deadline = time.monotonic() + 240
    while (run := store.runs("unit")[0]).status != "running" or run.claimed_by is None:
        assert time.monotonic() < deadline and job.state == "RUNNING", f"the cell never started: {job.stderr()}"
        time.sleep(0.2)
    first_claim = run.claimed_by
    os.kill(task_pid(job), signal.SIGUSR1)  # what Slurm sends the job before preempting it
    assert job.result() == "attention@transformer/micro/T32"
    log = job.stderr() + (job.stdout() or "")
    assert "Requeued job" in log, log
    [run] = store.runs("unit")
    assert run.status == "done" and run.job_id == str(job.job_id) and run.claimed_by != first_claim
    pid = int(first_claim.rpartition(":")[2])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the first attempt's rank is gone: it stopped on the job's SIGTERM


def test_slurm_dry_run_prints_resources_script_and_commands_without_a_cluster(write_suite, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no srun, no sbatch
    suite = write_suite(sizes=["micro", "tiny"], launcher=LAUNCHER)
    assert main(["run", str(suite), "--launcher", "slurm", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in [
        "--nodes=2",
        "--gpus-per-node=4",
        "--cpus-per-task=16",
        "--partition=gpu",
        "--time=150",
        "--qos=high",
        "--signal=USR2@90",
    ]:
        assert f"#SBATCH {line}\n" in out, f"{line} missing from\n{out}"
    commands = [ln for ln in out.splitlines() if "-m harness.launch.torchrun" in ln]
    assert len(commands) == 2 and all("--nproc-per-node 4" in c and "--nnodes 2" in c for c in commands)
    assert not any(r.status == "queued" for r in Store().runs()), "nothing was submitted"


# --------------------------------------------------------------------------- --launcher local


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
