"""The dashboard's view of cells still training: their live loss curves, and a page that reloads itself.

A running cell writes its curve every ``log_every`` steps (``harness.monitor.live``); a dashboard written
while any cell of its suite runs draws those curves (a diverging run is seen on day one, not
when it ends) and reloads every :data:`REFRESH_SECONDS`. Rewriting the file with ``mixbench
report`` (e.g. from cron) then shows the newer points.
"""

from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

from harness.common.names import RunStatus
from harness.monitor.health import SPIKE
from harness.store.database import Run

REFRESH_SECONDS = 60


def refresh_tag(seconds: int = REFRESH_SECONDS) -> str:
    return f"<meta http-equiv='refresh' content='{seconds}'>"


def running_curves_figure(runs: list[Run], metric_rows: list[tuple[str, int, str, float]]) -> go.Figure | None:
    """Training loss vs step of every running cell, its loss spikes marked; None when none runs."""
    running = {r.run_key: r for r in runs if r.status == RunStatus.RUNNING}
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    spikes: dict[str, list[int]] = defaultdict(list)
    for key, step, name, value in metric_rows:
        if key in running and name == "train/loss":
            curves[key].append((step, value))
        elif key in running and name == SPIKE:
            spikes[key].append(step)
    if not curves:
        return None
    fig = go.Figure()
    for key, points in sorted(curves.items()):
        run, points = running[key], sorted(points)
        label = f"{run.mixer}@{run.backbone} {run.size} T{run.seq_len}"
        fig.add_trace(
            go.Scatter(
                x=[s for s, _ in points],
                y=[v for _, v in points],
                mode="lines",
                name=label,
                hovertemplate=f"run {key}<br>step %{{x}}<br>loss %{{y:.4f}}<extra>{label}</extra>",
            )
        )
        if marked := [(s, v) for s, v in points if s in set(spikes[key])]:
            fig.add_trace(
                go.Scatter(
                    x=[s for s, _ in marked],
                    y=[v for _, v in marked],
                    mode="markers",
                    marker={"symbol": "x", "size": 10, "color": "red"},
                    name=f"{label}: loss spike",
                )
            )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="training loss")
    fig.update_layout(title="Training loss of running cells (live)", height=420)
    return fig
