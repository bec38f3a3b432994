"""The colours the panels draw in, defined once so an architecture's colour is the same in
the language-model panels and the task panels."""

from __future__ import annotations

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def color(i: int) -> str:
    """The ``i``-th line's colour (cycling past the palette's end)."""
    return PALETTE[i % len(PALETTE)]
