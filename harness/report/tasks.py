"""Dashboard panels for task suites, and the best-of-learning-rate-grid rule they apply.

The rule (``harness/report/seeds.py``): runs that differ only in their seed form a point, shown by
its median ``task/accuracy`` on held-out sequences over seeds, with bars from the worst seed
to the best; of the points that differ only in learning rate (same model, size, sequence
length, task and task parameters) the one with the highest median is shown, ties broken by
the lower median ``val/loss``, then by the smaller learning rate. It is applied here, at
report time, because only then is every member of a grid known; each panel says so in its
subtitle. A point where some seeds solve the task and some do not is drawn as an open
diamond and labelled with how many seeds solved it, so a median never hides a coin flip.

Panels (each point one grid's chosen point): accuracy vs sequence length (one subplot per
difficulty, e.g. number of key-value pairs) and accuracy vs difficulty (one per sequence
length), each where the suite varies it, one line per mixer@backbone and size; and accuracy
vs the model's ``state_size`` on a log axis, one line per mixer@backbone through its sizes
(Zoology's plot: does recall track how much a model keeps between tokens?).
"""

from __future__ import annotations

import html
import json
import math
import textwrap
from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.common.names import MetricName
from harness.report.palette import color
from harness.report.seeds import SOLVED, Choice, Point, Values, choose, is_task_run
from harness.store.database import Run
from harness.tasks.base import get_task


def _series(run: Run) -> str:
    return f"{run.mixer}@{run.backbone} {run.size}"


def _difficulty(run: Run) -> str:
    name = run.config["task"]["name"]
    try:
        return get_task(name).difficulty
    except LookupError:  # a task registered by a plugin this process did not import
        return ""


def _lr(run: Run) -> float:
    return float(run.config["train"]["lr"])


def best_of_grid(runs: list[Run], values: Values) -> list[Choice]:
    """The learning-rate grids of the done task runs, each with its points best median first."""
    return choose([r for r in runs if is_task_run(r)], values)


def split_label(point: Point, values: Values) -> str:
    """``2/3 seeds solve`` for a point some seeds solve and some do not, else empty."""
    spread = point.spread(values, MetricName.TASK_ACCURACY)
    return f"{spread.solved()}/{len(spread.values)} seeds solve" if spread.split() else ""


def _rule_subtitle(choices: list[Choice]) -> str:
    lrs = sorted({p.lr for c in choices for p in c.candidates})
    sizes = "/".join(str(s) for s in sorted({len(c.candidates) for c in choices}))
    seeds = "/".join(str(s) for s in sorted({len(p.runs) for c in choices for p in c.candidates}))
    grid = ", ".join(f"{x:g}" for x in lrs)
    return (
        f"each point: median task/accuracy over {seeds} seed(s), bars min-max, of the learning rate with the best "
        f"median ({sizes} per point; lr {grid}); open diamond: some seeds solve (>= {SOLVED:g}) and some do not"
    )


def _varying(runs: list[Run]) -> set[str]:
    """Task parameters that take more than one value among ``runs``."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.config["task"]["params"].items():
            seen[k].add(json.dumps(v))
    return {k for k, vs in seen.items() if len(vs) > 1}


# Label placement, in fractions of one subplot's plotting area (a 1200 x 500 figure with the
# legend beside it: about 900 / columns pixels wide, 310 high), so that two labels never print
# on top of each other (at one width two mixers' points can sit a few pixels apart).
_CHAR_PX, _LINE_PX, _GAP_PX, _PLOT_W_PX, _PLOT_H_PX = 6.5, 14.0, 6.0, 900.0, 310.0
_POSITIONS = (
    "bottom center",
    "top center",
    "bottom right",
    "top right",
    "bottom left",
    "top left",
    "middle right",
    "middle left",
)


def _label_box(x: float, y: float, text: str, position: str, n_cols: int) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` a label at ``position`` of a point at ``(x, y)`` covers, in plot fractions."""
    w = len(text) * _CHAR_PX * n_cols / _PLOT_W_PX
    h, gx, gy = _LINE_PX / _PLOT_H_PX, _GAP_PX * n_cols / _PLOT_W_PX, _GAP_PX / _PLOT_H_PX
    vertical, horizontal = position.split()
    y0 = {"top": y + gy, "bottom": y - gy - h, "middle": y - h / 2}[vertical]
    x0 = {"center": x - w / 2, "right": x + gx, "left": x - gx - w}[horizontal]
    return x0, x0 + w, y0, y0 + h


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[2], b[2]))


def label_positions(points: list[tuple[float, float, str]], log_x: bool, n_cols: int = 1) -> list[str]:
    """A ``textposition`` for each labelled point ``(x, y, text)`` of one subplot.

    Greedy, left to right: each label takes the first position (below a point near the top of
    the axis, above it otherwise, then beside it) that overlaps neither a label already placed
    nor another point's marker, and stays inside the plot; failing that, the one that
    overlaps least. Plotly places text only relative to its own point, so this is the whole
    of the layout.
    """
    if not points:
        return []
    xs = [math.log10(x) if log_x else x for x, _, _ in points]
    lo, hi = min(xs), max(xs)
    span = (hi - lo) or 1.0
    norm = [(0.05 + 0.9 * (x - lo) / span, y / 1.02) for x, (_, y, _) in zip(xs, points)]
    mx, my = 5 * n_cols / _PLOT_W_PX, 5 / _PLOT_H_PX  # half a marker, in plot fractions
    markers = [(x - mx, x + mx, y - my, y + my) for x, y in norm]
    placed: list[tuple[float, float, float, float]] = []
    chosen = [""] * len(points)
    for i in sorted(range(len(points)), key=lambda j: norm[j]):
        x, y = norm[i]
        text = points[i][2]
        order = _POSITIONS if y > 0.85 else (_POSITIONS[1], _POSITIONS[0], *_POSITIONS[2:])

        def cost(position: str) -> float:
            box = _label_box(x, y, text, position, n_cols)
            outside = max(0.0, -box[0]) + max(0.0, box[1] - 1) + max(0.0, -box[2]) + max(0.0, box[3] - 1)
            hits = sum(_overlap(box, other) for other in placed)
            hits += sum(_overlap(box, m) for j, m in enumerate(markers) if j != i)
            return hits + outside

        best = min(order, key=lambda pos: (cost(pos) > 0, cost(pos), order.index(pos)))
        chosen[i] = best
        placed.append(_label_box(x, y, text, best, n_cols))
    return chosen


def _line_figure(
    winners: list[Point],
    values: Values,
    x_of,
    facet_of,
    x_title: str,
    title: str,
    subtitle: str,
    log_x: bool = False,
    series_of=_series,
    label_of=None,
) -> go.Figure:
    """One subplot per facet, one line per series (default: mixer@backbone and size), points labelled by ``label_of``.

    Each point is its median over seeds with min-max bars; a split point is an open diamond
    whose label says how many seeds solved the task. Labels are placed by ``label_positions``.
    """
    facets = sorted({facet_of(p.run) for p in winners})
    series = sorted({series_of(p.run) for p in winners})
    n_cols = max(1, len(facets))
    fig = make_subplots(rows=1, cols=n_cols, subplot_titles=[str(f[1]) for f in facets] or None)
    for col, facet in enumerate(facets, 1):
        lines = {}
        for name in series:
            points = sorted(
                (
                    (x_of(p.run), p.spread(values, MetricName.TASK_ACCURACY), p)
                    for p in winners
                    if facet_of(p.run) == facet and series_of(p.run) == name
                ),
                key=lambda q: (q[0], q[2].run.seq_len),  # a recurrent state is the same size at every seq_len
            )
            labels = [
                " ".join(filter(None, (label_of(p.run) if label_of else "", split_label(p, values))))
                for _, _, p in points
            ]
            lines[name] = (points, labels)
        labelled = [(name, k) for name, (points, labels) in lines.items() for k, text in enumerate(labels) if text]
        where = dict(
            zip(
                labelled,
                label_positions(
                    [(lines[n][0][k][0], lines[n][0][k][1].median, lines[n][1][k]) for n, k in labelled], log_x, n_cols
                ),
            )
        )
        for i, name in enumerate(series):
            points, labels = lines[name]
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[q[0] for q in points],
                    y=[q[1].median for q in points],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [q[1].hi - q[1].median for q in points],
                        "arrayminus": [q[1].median - q[1].lo for q in points],
                        "thickness": 1.5,
                    },
                    mode="lines+markers+text" if any(labels) else "lines+markers",
                    text=labels if any(labels) else None,
                    textposition=[where.get((name, k), "top center") for k in range(len(points))],
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={
                        "color": color(i),
                        "size": 9,
                        "symbol": ["diamond-open" if q[1].split() else "circle" for q in points],
                    },
                    line={"color": color(i)},
                    customdata=[
                        [
                            q[2].run.run_key,
                            q[2].run.seq_len,
                            q[2].lr,
                            values.get((q[2].run.run_key, "model/state_size")),
                            ", ".join(f"seed {s}: {v:.4f}" for s, v in zip(q[2].seeds, q[1].values)),
                        ]
                        for q in points
                    ],
                    hovertemplate=(
                        "%{fullData.name}<br>run %{customdata[0]}<br>seq_len %{customdata[1]}<br>lr %{customdata[2]:g}"
                        "<br>state size %{customdata[3]:,}<br>median accuracy %{y:.4f}"
                        "<br>%{customdata[4]}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=x_title, type="log" if log_x else "linear", row=1, col=col)
        fig.update_yaxes(title_text="accuracy" if col == 1 else None, range=[0, 1.02], row=1, col=col)
    # A subtitle wider than the figure runs off its right edge: wrap it.
    sub_lines = textwrap.wrap(subtitle, 150)
    fig.update_layout(
        title={"text": "<br>".join([title, *(f"<sub>{html.escape(t)}</sub>" for t in sub_lines)])},
        height=500,
        margin={"t": 95 + 15 * len(sub_lines)},
    )
    return fig


def task_figures(runs: list[Run], values: Values) -> list[go.Figure]:
    """The task panels for the done task runs of one suite (none if there are none).

    Accuracy vs sequence length and vs difficulty appear only where the suite varies them;
    accuracy vs state size always does.
    """
    choices = best_of_grid(runs, values)
    if not choices:
        return []
    winners = [c.best for c in choices]
    subtitle = _rule_subtitle(choices)
    varying = _varying([p.run for p in winners])
    names = sorted({p.run.config["task"]["name"] for p in winners})
    difficulty = _difficulty(winners[0].run) or "difficulty"

    def level(r: Run) -> Any:
        return r.config["task"]["params"].get(difficulty, 0)

    def others(r: Run) -> str:
        """What else varies across the suite (so two facets never share a title)."""
        task = r.config["task"]
        extra = "".join(f", {k}={v}" for k, v in sorted(task["params"].items()) if k in varying and k != difficulty)
        return (f", {task['name']}" if len(names) > 1 else "") + extra

    # A facet is (sort key, subplot title): everything that varies and is not on the x axis.
    def by_level(r: Run) -> tuple[Any, str]:
        return ((level(r), others(r)), f"{difficulty}={level(r)}{others(r)}")

    def by_seq_len(r: Run) -> tuple[Any, str]:
        return ((r.seq_len, others(r)), f"seq_len {r.seq_len}{others(r)}")

    def state_size(r: Run) -> float:
        return values.get((r.run_key, "model/state_size"), float("nan"))

    # Zoology's plot: one line per mixer (and sequence length, when that varies) through its
    # widths, each point labelled by its size: does recall grow with the state a mixer keeps?
    many_lengths = len({p.run.seq_len for p in winners}) > 1

    def mixer_line(r: Run) -> str:
        return f"{r.mixer}@{r.backbone}" + (f" T{r.seq_len}" if many_lengths else "")

    title = " / ".join(names)
    figures = []
    if many_lengths:  # a single sequence length would make a panel of one column of dots
        figures.append(
            _line_figure(
                winners,
                values,
                lambda r: r.seq_len,
                by_level,
                "sequence length",
                f"{title}: accuracy vs sequence length",
                subtitle,
            )
        )
    if len({json.dumps(level(p.run)) for p in winners}) > 1:
        figures.append(
            _line_figure(winners, values, level, by_seq_len, difficulty, f"{title}: accuracy vs {difficulty}", subtitle)
        )
    figures.append(
        _line_figure(
            winners,
            values,
            state_size,
            by_level,
            "state size (numbers kept between tokens)",
            f"{title}: accuracy vs state size",
            subtitle,
            log_x=True,
            series_of=mixer_line,
            label_of=lambda r: r.size,
        )
    )
    return figures


def task_table_html(runs: list[Run], values: Values) -> str:
    """Every task run with its parameters, learning rate, seed and accuracy; the chosen points' runs marked."""
    task_runs = [r for r in runs if is_task_run(r)]
    if not task_runs:
        return ""
    chosen = {r.run_key for c in best_of_grid(task_runs, values) for r in c.best.runs}

    def order(r: Run) -> tuple[Any, ...]:
        task = r.config["task"]
        return (
            r.mixer,
            r.backbone,
            r.size,
            r.seq_len,
            task["name"],
            json.dumps(task["params"], sort_keys=True),
            _lr(r),
            r.config["train"].get("seed", 0),
        )

    header = (
        "run key",
        "model",
        "size",
        "seq",
        "task",
        "lr",
        "seed",
        "accuracy",
        "sequence acc.",
        "state size",
        "val loss",
        "status",
        "chosen",
    )
    rows = []
    for r in sorted(task_runs, key=order):
        t = r.config["task"]

        def v(name: str, spec: str) -> str:
            x = values.get((r.run_key, name))
            return "-" if x is None else format(x, spec)

        params = ", ".join(f"{k}={val}" for k, val in t["params"].items())
        cells = (
            r.run_key,
            f"{r.mixer}@{r.backbone}",
            r.size,
            str(r.seq_len),
            f"{t['name']}({params})",
            f"{_lr(r):g}",
            str(r.config["train"].get("seed", 0)),
            v(MetricName.TASK_ACCURACY, ".4f"),
            v("task/sequence_accuracy", ".4f"),
            v("model/state_size", ",.0f"),
            v(MetricName.VAL_LOSS, ".4f"),
            r.status,
            "yes" if r.run_key in chosen else "",
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    ths = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in header)
    return (
        "<h2>Task runs</h2><p>Chosen: among runs that differ only in learning rate, those of the learning rate with "
        "the highest median task/accuracy over seeds on held-out sequences (ties: lower median val/loss, then smaller "
        "lr) are marked, and their median and range plotted.</p>"
        f"<table id='task-results'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
