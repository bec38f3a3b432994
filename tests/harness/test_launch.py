"""Launchers through submitit: one job per cell, each landing once; the sbatch script; preemption and requeue.

No cluster here: Slurm is checked through the script submitit writes (a stand-in ``sbatch``
records it), and jobs really run through submitit's local executor, which starts, signals and
requeues them as Slurm would.
"""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
from rich.console import Console

from harness.cli import main
from harness.config.suite import SuiteError, load_suite
from harness.launch.job import CellJob
from harness.launch.submit import submit_suite
from harness.store.database import Store

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
