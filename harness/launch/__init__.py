"""Launchers: where a suite's cells run. ``local`` is the plain runner; ``slurm`` submits one job per cell.

``resources`` (the suite's ``launcher:`` section), ``job`` (one cell as a requeueable job),
``submit`` (marking cells queued and submitting them through submitit).
"""
