"""Errors as people read them: one line naming what failed."""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception as one line a person can act on: its type and first message line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"
