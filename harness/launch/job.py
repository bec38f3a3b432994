"""One cell as one submitit job: ``torchrun ... -m harness run SUITE --only CELL``, requeued when preempted.

torchrun here is ``python -m harness.launch.torchrun``, which exits 75 when its ranks stop on a signal.

The job's own process only starts torchrun and waits. When Slurm is about to preempt or time
out the job, submitit calls ``checkpoint()``: it sends SIGTERM to torchrun, which passes it to
every rank; the harness saves a mid-cell checkpoint and exits (the distributed engine's
contract), and the job is requeued with a fresh copy of itself. The rerun claims the cell again
(its earlier claim carries the same job id, so it is known to be dead) and resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.common.lifeline import child_environment

GRACE_S = 60  # how long a rank may take to write its checkpoint after SIGTERM (Slurm's warning is 90 s)


def _running(pid: int) -> bool:
    """Reaps the child if it exited. Not through Popen: its lock may be held by the frame this signal interrupted."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:  # already reaped
        return False


def cell_command(
    suite: Path, label: str, extra_args: tuple[str, ...] = (), torchrun: list[str] | None = None
) -> list[str]:
    """The command a job runs for one cell: the harness in this job's process(es), never a launcher again.

    With ``torchrun`` arguments, under ``python -m harness.launch.torchrun`` (torchrun with exit
    status 75 on preemption); else one plain process.
    """
    harness = ["-m", "harness", "run", str(suite), "--launcher", "inline", "--only", label, *extra_args]
    return [sys.executable, *([] if torchrun is None else ["-m", "harness.launch.torchrun", *torchrun]), *harness]


@dataclass
class CellJob:
    suite: Path  # absolute
    label: str  # the cell, for --only (its exact label)
    db: str  # the store URL, handed over in MIXBENCH_DB rather than on a command line others can read
    nodes: int
    ranks_per_node: int
    workdir: Path  # where results/ (caches, checkpoints, dashboards) lives
    extra_args: tuple[str, ...] = ()  # e.g. --cache-dir, --checkpoint-dir

    def command(self, master: str) -> list[str]:
        if self.nodes == 1:
            rendezvous = ["--standalone"]
        else:
            job = os.environ.get("SLURM_JOB_ID", "mixbench")
            rendezvous = [
                "--nnodes",
                str(self.nodes),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"{master}:29500",
                "--rdzv-id",
                job,
            ]
        torchrun = [*rendezvous, "--nproc-per-node", str(self.ranks_per_node)]
        return cell_command(self.suite, self.label, self.extra_args, torchrun)

    def __call__(self) -> str:
        import submitit

        hosts = submitit.JobEnvironment().hostnames
        env = child_environment({**os.environ, "MIXBENCH_DB": self.db})  # torchrun ends with this job's process
        self._process = subprocess.Popen(self.command(hosts[0]), cwd=self.workdir, env=env)
        # Polled, not wait()ed: Popen.wait holds a lock that would keep checkpoint(), which runs
        # in a signal handler on this thread, from ever seeing torchrun exit.
        while (code := self._process.poll()) is None:
            time.sleep(0.5)
        if code != 0:
            raise RuntimeError(f"{self.label}: torchrun exited with status {code} (the store says why)")
        return self.label

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Stop the ranks so that they checkpoint, then requeue a fresh copy of this job."""
        import submitit

        process = getattr(self, "_process", None)
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + GRACE_S
            while _running(process.pid):
                if time.monotonic() > deadline:
                    process.kill()
                    break
                time.sleep(0.2)
        return submitit.helpers.DelayedSubmission(CellJob(**self.__getstate__()))

    def __getstate__(self) -> dict[str, Any]:  # the running process stays behind when the job is pickled
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
