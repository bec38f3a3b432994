"""Launchers: where a suite's cells run. ``local`` is this machine; ``slurm`` submits one job per cell.

Owns: ``job`` (one cell's command, and a cell as a requeueable submitit job), ``submit``
(marking cells queued and submitting them through submitit, or printing the sbatch script),
``local`` (cells as parallel jobs on one machine, sharing out its GPUs), ``torchrun`` (torchrun
with exit status 75 on preemption). The ``launcher:`` section itself is ``config.launcher``.
May import: ``common``, ``config``, ``engine`` (the preemption exit status), ``store``. Never
the runner: a launched job runs the runner in its own process, through the command line.
"""
