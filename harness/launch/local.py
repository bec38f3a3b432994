"""``--launcher local`` with ``launcher: {parallel: N}`` or ``{gpus_per_cell: G}``: pending cells at
once on one machine.

The same job machinery as ``--launcher slurm``, with plain subprocesses for jobs: each pending
cell is marked ``queued`` in the store, then runs as its own process,
:func:`~harness.launch.job.cell_command` (``python -m harness run SUITE --launcher inline --only
CELL``, under ``python -m harness.launch.torchrun --standalone`` when it has more than one
GPU), with its share of the GPUs in ``CUDA_VISIBLE_DEVICES``. The job claims its cell in the
store as any runner does, so a cell runs once however many launchers ask, and a rerun resumes
a killed cell from its checkpoint. The token cache is safe to share: the first job to need a
cold cache prepares it under its file lock while the others wait (``harness.data.cache``).

Each job writes its output to ``results/jobs/SUITE/local/``; this process prints one line
when a job starts and one when it ends. Jobs run in their own sessions: Ctrl-C reaches this
process alone, which hands it on once to every job (each records itself interrupted), and
SIGTERM/SIGUSR1 are handed on as SIGTERM (each job saves a checkpoint and exits 75). A job
ends with this process even after a kill -9 (``harness.common.lifeline``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from harness.common.lifeline import child_environment
from harness.config.cells import Summary, cell_label, run_record, select_cells
from harness.config.launcher import LauncherSection
from harness.config.suite import Suite
from harness.engine.resume import PREEMPT_SIGNALS, PREEMPTED_EXIT_CODE
from harness.launch.job import cell_command
from harness.launch.submit import DEFAULT_JOB_DIR, LaunchError
from harness.store.database import Store

POLL_S = 0.2
STOP_GRACE_S = 120  # how long a stopped job may take to save its checkpoint before it is killed


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` if set, else every device CUDA counts."""
    if (visible := os.environ.get("CUDA_VISIBLE_DEVICES")) is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slots(launcher: LauncherSection, gpus: list[str]) -> list[tuple[str, ...]]:
    """One entry per cell that may run at once: the GPUs it gets (none on CPU)."""
    per_cell = launcher.gpus_per_cell
    if per_cell == 0:
        return [()] * (launcher.parallel or 1)
    if len(gpus) < per_cell:
        raise LaunchError(
            f"launcher.gpus_per_cell is {per_cell} but {len(gpus)} GPUs are visible here"
            + ("; on CPU set launcher.parallel instead" if not gpus else "")
        )
    shares = [tuple(gpus[i * per_cell : (i + 1) * per_cell]) for i in range(len(gpus) // per_cell)]
    return shares[: launcher.parallel or len(shares)]


@dataclass
class _Job:
    number: int
    label: str
    run_key: str
    gpus: tuple[str, ...]
    process: subprocess.Popen
    log: Path
    started: float


def _log_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=@-]+", "_", label) + ".log"


class LocalLauncher:
    """Runs a suite's pending cells as parallel jobs on this machine; :meth:`run` returns what became of them."""

    def __init__(
        self, suite: Suite, suite_path: Path, store: Store, console: Console, extra_args: tuple[str, ...] = ()
    ) -> None:
        self.suite, self.suite_path, self.store, self.console = suite, Path(suite_path).resolve(), store, console
        self.extra_args = extra_args
        self.log_dir = (DEFAULT_JOB_DIR / suite.name / "local").resolve()
        self.stopped_by: str | None = None  # the signal that stopped this launch (its jobs then checkpoint)

    def run(self, only: str | None = None) -> Summary:
        launcher = self.suite.spec.launcher
        free = slots(launcher, visible_gpus() if launcher.gpus_per_cell else [])
        summary, pending = Summary(), []
        for cell in select_cells(self.suite, only):
            if self.store.enqueue(run_record(cell)):
                pending.append(cell)
            else:
                summary.skipped.append(cell_label(cell))
                self.console.print(f"[dim]{cell_label(cell)}: already {self.store.status(cell.run_key)}, skipped[/]")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        threads = max(1, (os.cpu_count() or 1) // len(free)) if not launcher.gpus_per_cell else None
        self.console.print(
            f"{len(pending)} cells, {len(free)} at once"
            + (f", {launcher.gpus_per_cell} GPU(s) each" if launcher.gpus_per_cell else " on CPU")
            + f"; logs in {self.log_dir}"
        )
        running: list[_Job] = []
        previous = {s: signal.signal(s, self._stop) for s in PREEMPT_SIGNALS}
        try:
            total, forwarded = len(pending), False
            while pending and self.stopped_by is None or running:
                while pending and free and self.stopped_by is None:
                    running.append(self._start(total - len(pending) + 1, total, pending.pop(0), free.pop(0), threads))
                if self.stopped_by is not None and not forwarded:  # once: the running jobs checkpoint and exit 75
                    forwarded = True
                    self._signal_all(running, signal.SIGTERM)
                    self._wait_all(running)
                for job in [j for j in running if j.process.poll() is not None]:
                    running.remove(job)
                    free.append(job.gpus)
                    self._ended(job, summary)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._signal_all(running, signal.SIGINT)
            self._wait_all(running)
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return summary

    def _stop(self, signum: int, _frame: Any) -> None:
        self.stopped_by = signal.Signals(signum).name

    def _start(self, number: int, total: int, cell: Any, gpus: tuple[str, ...], threads: int | None) -> _Job:
        label = cell_label(cell)
        ranks = len(gpus)
        torchrun = ["--standalone", "--nproc-per-node", str(ranks)] if ranks > 1 else None
        command = cell_command(self.suite_path, label, ("--train-only", *self.extra_args), torchrun)
        env = child_environment({**os.environ, "MIXBENCH_DB": self.store.url})
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        if threads is not None:
            env.setdefault("OMP_NUM_THREADS", str(threads))  # CPU cells share the cores
        log = self.log_dir / _log_name(label)
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.store.note_job(cell.run_key, f"local:{process.pid}")
        where = f"GPU {','.join(gpus)}" if gpus else "CPU"
        self.console.print(f"[bold][{number}/{total}] {label}[/]: started on {where} (pid {process.pid})")
        return _Job(number, label, cell.run_key, gpus, process, log, time.monotonic())

    def _ended(self, job: _Job, summary: Summary) -> None:
        code, seconds = job.process.returncode, time.monotonic() - job.started
        if code == 0:
            summary.done.append(job.label)
            self.console.print(f"[green]{job.label}: done in {seconds:.1f}s[/]")
        elif code == PREEMPTED_EXIT_CODE:
            summary.stopped.append(job.label)
            self.console.print(
                f"[yellow]{job.label}: stopped after {seconds:.1f}s, checkpoint saved; a rerun resumes[/]"
            )
        else:
            error = self.store.run(job.run_key).error or f"exit status {code} before it recorded anything"
            summary.failed.append((job.label, error))
            self.console.print(f"[red]{job.label}: failed: {error} (log: {job.log})[/]", soft_wrap=True)

    @staticmethod
    def _signal_all(jobs: list[_Job], signum: int) -> None:
        for job in jobs:
            if job.process.poll() is None:
                job.process.send_signal(signum)

    def _wait_all(self, jobs: list[_Job]) -> None:
        """After a stop: each job records it and exits (after its checkpoint); one that does not is killed."""
        deadline = time.monotonic() + STOP_GRACE_S
        for job in jobs:
            try:
                job.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
