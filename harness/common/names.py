"""The names the store holds and every part compares against: run statuses, latency point
statuses and the headline metric names, spelled once.

They are ``StrEnum`` members, so they are the strings stored in the database and written in
JSON, and compare equal to the strings read back from a store written before them.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """The ``runs.status`` column: where a run is in its life."""

    QUEUED = "queued"  # a launcher submitted it; no process has claimed it yet
    RUNNING = "running"  # claimed; its heartbeat says whether the process is still alive
    DONE = "done"  # trained and evaluated on its suite
    FAILED = "failed"  # ended with a one-line error; a rerun tries it again
    IMPORTED = "imported"  # a published checkpoint brought in, and its evaluations
    EVALUATED = "evaluated"  # a trained run scored on another suite's data


# Results that are final: never trained again, and what reports and evaluations read.
FINISHED = (RunStatus.DONE, RunStatus.IMPORTED, RunStatus.EVALUATED)
# Nothing more will be written to these runs: what ``watch`` waits for.
ENDED = (*FINISHED, RunStatus.FAILED)
# Models not trained on the suite they are shown in (marked so in every panel and table).
NOT_TRAINED_HERE = (RunStatus.IMPORTED, RunStatus.EVALUATED)


class PointStatus(StrEnum):
    """The ``latency.status`` column: how one measured point ended."""

    OK = "ok"
    OOM = "oom"  # out of memory: a result (the model does not fit there), not a failure
    FAILED = "failed"


class MetricName(StrEnum):
    """The headline metrics: what the tables, panels, learning-rate selection and costs read."""

    VAL_LOSS = "val/loss"
    VAL_PPL = "val/ppl"
    TRAIN_FLOPS = "flops/train"
    TASK_ACCURACY = "task/accuracy"
    TOKENS_PER_S = "train/tokens_per_s"
