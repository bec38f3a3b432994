"""Launchers: where a suite's cells run. ``local`` is this machine; ``slurm`` submits one job per cell.

``resources`` (the suite's ``launcher:`` section), ``job`` (one cell's command, and a cell as a
requeueable submitit job), ``submit`` (marking cells queued and submitting them through
submitit, or printing the sbatch script), ``local`` (cells as parallel jobs on one machine,
sharing out its GPUs), ``torchrun`` (torchrun with exit status 75 on preemption).
"""
