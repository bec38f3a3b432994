"""Helpers for tests that start, signal and kill processes: poll for a state, list a process's descendants.

Polling, not fixed sleeps: the machine that runs the tests may be loaded, and a wait that is
long enough on an idle laptop is not on a busy CI runner. Descendants are read from
``/proc/PID/task/*/children`` (Linux); a zombie counts as gone, since an orphan's new parent
may be slow to reap it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.data import ByteTokenizer

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="lists processes through Linux's /proc")


def wait_for(condition: Callable[[], object], within_s: float, what: str) -> None:
    """Poll until ``condition()`` is true, at most ``within_s`` seconds (then fail, saying ``what``)."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``: children, their children, and so on."""
    found, todo = set(), [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            new = {c for c in children - found if alive(c)}
            found |= new
            todo += new
    return found


class SlowBytes(ByteTokenizer):
    """The byte tokenizer, slowed down, so that a preparation is still running when a test stops it."""

    def encode_batch(self, texts):
        time.sleep(0.3)
        return super().encode_batch(texts)
