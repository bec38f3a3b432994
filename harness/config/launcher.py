"""A suite's ``launcher:`` section: what one cell's Slurm job asks for, and how one machine shares out cells.

```yaml
launcher: {nodes: 1, gpus_per_node: 8, cpus: 64, partition: gpu, time: "12:00:00", account: lab,
           sbatch: {qos: high, constraint: h100}}
launcher: {gpus_per_cell: 1}   # --launcher local: 8 cells at once on an 8-GPU box, one GPU each
launcher: {parallel: 2}        # --launcher local on CPU: 2 cells at once
```

It describes where cells run, never what they compute, so it is not part of any ``run_key``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d\d)(?::(\d\d))?$")  # Slurm's D-HH:MM:SS, HH:MM:SS, HH:MM


class LauncherSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)  # also the ranks per node (torchrun --nproc_per_node); 0: one CPU rank
    cpus: int = Field(8, gt=0)  # per node (one task per node runs torchrun)
    partition: str | None = None
    time: int | str = 60  # minutes, or Slurm's "D-HH:MM:SS" / "HH:MM:SS"
    account: str | None = None
    requeues: int = Field(3, ge=0)  # how many timeouts a job may be requeued after (preemptions are free)
    sbatch: dict[str, Any] = {}  # any further #SBATCH option, by its long name
    # --launcher local: each cell's GPUs (more than one: under torchrun), and how many cells run at once
    # (default: the visible GPUs over gpus_per_cell, else 1); either one makes local cells separate jobs
    gpus_per_cell: int = Field(0, ge=0)
    parallel: int | None = Field(None, gt=0)

    @field_validator("time")
    @classmethod
    def _time(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v <= 0 or isinstance(v, str) and not _TIME.match(v):
            raise ValueError(f"{v!r} is not a positive number of minutes or D-HH:MM:SS")
        return v

    @property
    def minutes(self) -> int:
        if isinstance(self.time, int):
            return self.time
        days, hours, minutes, seconds = (int(g or 0) for g in _TIME.match(self.time).groups())
        return max(1, days * 1440 + hours * 60 + minutes + (seconds > 0))

    @property
    def local_jobs(self) -> bool:
        """Whether ``--launcher local`` runs each cell as its own job (else: one after another in this process)."""
        return self.parallel is not None or self.gpus_per_cell > 0

    @property
    def ranks_per_node(self) -> int:
        return max(1, self.gpus_per_node)

    def slurm_parameters(self) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters: one task per node, which runs torchrun for all its GPUs."""
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "ntasks_per_node": 1,
            "cpus_per_task": self.cpus,
            "time": self.minutes,
            "additional_parameters": dict(self.sbatch),
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.partition:
            params["partition"] = self.partition
        if self.account:
            params["account"] = self.account
        return params
