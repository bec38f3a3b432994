"""A child process that ends with its parent, so that no kill -9 or lost launcher leaves orphans.

A process killed with SIGKILL cannot stop its children: they are reparented (to PID 1 or a
subreaper) and keep computing, holding GPUs and files. Every child mixbench starts therefore
watches its parent: a daemon thread polls ``os.getppid()`` and, once the parent is no longer
the one it started under, sends this process a signal. Preparation workers take SIGKILL
(their shard files are written aside and renamed, so nothing half-written remains); a cell's
process takes SIGTERM, the preemption signal, so that it saves a checkpoint and its rerun
resumes. Polling ``getppid`` works on Linux and macOS alike (``PR_SET_PDEATHSIG`` is Linux's
only, and fires on the death of the parent's *thread*).

A launcher names itself in ``MIXBENCH_PARENT_PID`` for the children it starts
(:func:`child_environment`); a child that finds its parent named there follows it
(:func:`follow_from_environment`). The variable is removed on reading, so grandchildren follow
only if their own parent asks. A plain ``mixbench run`` started from a shell follows nothing:
``nohup`` must keep working.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping

PARENT_ENV = "MIXBENCH_PARENT_PID"
POLL_S = 0.2


def follow(parent: int, signum: int = signal.SIGKILL) -> None:
    """Send this process ``signum`` once ``parent`` is no longer its parent (at once if it is already gone)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_S)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="mixbench-lifeline", daemon=True).start()


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a child that should end when this process does."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def follow_from_environment(signum: int = signal.SIGTERM) -> None:
    """Follow the parent that ``MIXBENCH_PARENT_PID`` names, if a launcher set it; the variable is not passed on."""
    raw = os.environ.pop(PARENT_ENV, "")
    if raw:
        follow(int(raw), signum)
