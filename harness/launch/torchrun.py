"""``python -m harness.launch.torchrun``: torchrun, with the exit status the harness promises.

torchrun itself ends a SIGTERM (Slurm's preemption, a user's ``kill``) by raising
``SignalException`` after its ranks have stopped, and so exits 1 with a traceback, although
every rank saved its checkpoint, printed the one "resume with: ..." line and exited 75. This
entry point runs the same launcher (same arguments, ``torch.distributed.run``'s own parser)
and maps how it ended:

- stopped by SIGTERM or SIGUSR1: 75 (EX_TEMPFAIL, a rerun resumes), no traceback;
- stopped by another signal (SIGINT: 130): 128 + its number;
- a rank failed: that rank's exit status (75 too if the ranks stopped themselves on a signal);
  the failing rank has already printed and recorded its error, so no torchrun summary follows.

SIGUSR1 is added to the signals handed on to the ranks unless ``--signals-to-handle`` is
given. The ranks end with this process even after a kill -9 (``harness.common.lifeline``), and this
process ends with the launcher that started it, if one asked.
"""

from __future__ import annotations

import os
import signal
import sys

from harness.common.lifeline import PARENT_ENV, follow_from_environment
from harness.engine.resume import PREEMPT_SIGNALS, PREEMPTED_EXIT_CODE

SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def exit_status(stopped_by: int | None, rank_status: int | None) -> int:
    """The launch's status: a stopping signal's, else the first failed rank's (0: every rank succeeded)."""
    if stopped_by is not None:
        return PREEMPTED_EXIT_CODE if stopped_by in PREEMPT_SIGNALS else 128 + stopped_by
    return rank_status or 0


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    argv = sys.argv[1:] if argv is None else argv
    if not any(a.replace("_", "-").startswith("--signals-to-handle") for a in argv):
        argv = ["--signals-to-handle", SIGNALS_TO_HANDLE, *argv]
    args = parse_args(argv)
    follow_from_environment(signal.SIGTERM)  # our own launcher gone: stop the ranks as on preemption
    os.environ[PARENT_ENV] = str(os.getpid())  # each rank ends with this process (torchrun starts them)
    try:
        run(args)
    except SignalException as stop:
        return exit_status(int(stop.sigval), None)
    except ChildFailedError as failed:
        _, first = failed.get_first_failure()
        return exit_status(None, first.exitcode if first.exitcode > 0 else 128 - first.exitcode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
