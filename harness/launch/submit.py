"""``mixbench run SUITE --launcher slurm``: one submitit job per pending cell; no scheduler of our own.

Each pending cell (not done, not running) is marked ``queued`` in the store, then submitted
as a :class:`~harness.launch.job.CellJob`; the store records the job id, so ``mixbench
results`` shows queued, running, done and failed across jobs. The store's claim, not this
module, guarantees that a cell runs once however many jobs or launchers ask for it. With
``--dry-run`` nothing is submitted and no cluster is needed: the resources, the sbatch script
submitit would write and each cell's command are printed.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from harness.common.errors import one_line
from harness.config.cells import cell_label, run_record, select_cells
from harness.config.launcher import LauncherSection
from harness.config.suite import Suite
from harness.launch.job import CellJob
from harness.store.database import Store
from models.errors import MixbenchError

DEFAULT_JOB_DIR = Path("results") / "jobs"  # submitit's scripts, pickles and logs, one folder per suite


class LaunchError(MixbenchError):
    """Jobs that cannot be submitted; the message says why and what to install or set."""


def slurm_executor(launcher: LauncherSection, folder: Path, name: str) -> Any:
    try:
        import submitit
    except ImportError:
        raise LaunchError("--launcher slurm needs submitit: pip install 'mixbench[slurm]'") from None
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=launcher.requeues)
    except RuntimeError as exc:  # no srun: not a Slurm machine
        raise LaunchError(f"--launcher slurm: {exc} (submit from a login node of the cluster)") from None
    executor.update_parameters(job_name=name, **launcher.slurm_parameters())
    return executor


def sbatch_script(launcher: LauncherSection, folder: Path, name: str) -> str:
    """The script ``--launcher slurm`` would hand to sbatch for each job, written by submitit itself."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string
    except ImportError:
        raise LaunchError("--launcher slurm needs submitit: pip install 'mixbench[slurm]'") from None
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder, job_name=name, **launcher.slurm_parameters())


def print_slurm_plan(
    suite: Suite, suite_path: Path, only: str | None, console: Console, extra_args: tuple[str, ...] = ()
) -> None:
    """``--launcher slurm --dry-run``: the resources, the sbatch script and each cell's command; nothing submitted."""
    launcher = suite.spec.launcher
    name = f"mixbench-{suite.name}"
    table = Table(title=f"suite {suite.name}: one Slurm job per pending cell ({name})")
    for col in ("nodes", "GPUs per node", "CPUs per node", "partition", "time (min)", "account", "requeues", "sbatch"):
        table.add_column(col)
    table.add_row(
        str(launcher.nodes),
        str(launcher.gpus_per_node),
        str(launcher.cpus),
        launcher.partition or "-",
        str(launcher.minutes),
        launcher.account or "-",
        str(launcher.requeues),
        " ".join(f"--{k}={v}" for k, v in launcher.sbatch.items()) or "-",
    )
    console.print(table)
    console.print("sbatch script (each job unpickles its cell and runs the command below):", highlight=False)
    console.print(
        sbatch_script(launcher, (DEFAULT_JOB_DIR / suite.name).resolve(), name), markup=False, highlight=False
    )
    for cell in select_cells(suite, only):
        job = CellJob(
            suite=Path(suite_path).resolve(),
            label=cell_label(cell),
            db="",
            nodes=launcher.nodes,
            ranks_per_node=launcher.ranks_per_node,
            workdir=Path.cwd(),
            extra_args=extra_args,
        )
        console.print(shlex.join(job.command("$MASTER_HOST")), markup=False, highlight=False, soft_wrap=True)


def submit_suite(
    suite: Suite,
    suite_path: Path,
    store: Store,
    only: str | None,
    console: Console,
    executor: Any = None,
    extra_args: tuple[str, ...] = (),
) -> list[Any]:
    """Submit every pending cell as its own job; returns submitit's jobs (``executor`` default:
    Slurm, from the suite)."""
    if not suite.spec.trains:
        raise LaunchError(f"suite {suite.name} only measures latency; --launcher slurm runs training cells (use local)")
    launcher = suite.spec.launcher
    folder = (DEFAULT_JOB_DIR / suite.name).resolve()
    executor = executor if executor is not None else slurm_executor(launcher, folder, f"mixbench-{suite.name}")
    table = Table(title=f"suite {suite.name}: jobs")
    for col in ("cell", "run key", "job"):
        table.add_column(col)
    jobs = []
    for cell in select_cells(suite, only):
        record = run_record(cell)
        if not store.enqueue(record):
            table.add_row(cell_label(cell), cell.run_key, f"already {store.status(cell.run_key)}")
            continue
        try:
            job = executor.submit(
                CellJob(
                    suite=Path(suite_path).resolve(),
                    label=cell_label(cell),
                    db=store.url,
                    nodes=launcher.nodes,
                    ranks_per_node=launcher.ranks_per_node,
                    workdir=Path.cwd(),
                    extra_args=extra_args,
                )
            )
        except Exception as exc:
            store.fail(cell.run_key, f"job submission failed: {one_line(exc)}")
            raise LaunchError(f"submitting {cell_label(cell)} failed: {one_line(exc)}") from None
        store.note_job(cell.run_key, str(job.job_id))
        table.add_row(cell_label(cell), cell.run_key, str(job.job_id))
        jobs.append(job)
    console.print(table)
    console.print(f"{len(jobs)} jobs submitted; watch them with `mixbench results --suite {suite.name}`")
    return jobs
