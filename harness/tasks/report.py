"""Dashboard panels for task suites, and the best-of-learning-rate-grid rule they apply.

The rule: runs that differ only in their learning rate (same model, size, sequence length,
task and task parameters) form a group, and the group is shown by its best run: the highest
``task/accuracy`` on held-out sequences, ties broken by the lower ``val/loss``, then by the
smaller learning rate. It is applied here, at report time, because only then is every member
of a grid known; each panel says so in its subtitle and the task table marks the winners.

Panels (each point one group's best run): accuracy vs sequence length (one subplot per
difficulty, e.g. number of key-value pairs) and accuracy vs difficulty (one per sequence
length), each where the suite varies it, one line per mixer@backbone and size; and accuracy
vs the model's ``state_size`` on a log axis, one line per mixer@backbone through its sizes
(Zoology's plot: does recall track how much a model keeps between tokens?).
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.store import Run
from harness.tasks.base import get_task

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
Values = dict[tuple[str, str], float]


def is_task_run(run: Run) -> bool:
    return isinstance(run.config, dict) and "task" in run.config


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


def _group_key(run: Run) -> tuple[Any, ...]:
    task = run.config["task"]
    return (run.mixer, run.backbone, run.size, run.seq_len, task["name"], json.dumps(task["params"], sort_keys=True))


def best_of_grid(runs: list[Run], values: Values) -> dict[str, list[Run]]:
    """``{winner run_key: every run of its group, best first}`` over the done task runs."""
    groups: dict[tuple[Any, ...], list[Run]] = defaultdict(list)
    for run in runs:
        if run.status == "done" and is_task_run(run) and (run.run_key, "task/accuracy") in values:
            groups[_group_key(run)].append(run)

    def rank(run: Run) -> tuple[float, float, float]:
        loss = values.get((run.run_key, "val/loss"), float("inf"))
        return (-values[(run.run_key, "task/accuracy")], loss, _lr(run))

    return {members[0].run_key: members for members in (sorted(g, key=rank) for g in groups.values())}


def _rule_subtitle(groups: dict[str, list[Run]]) -> str:
    lrs = sorted({_lr(r) for members in groups.values() for r in members})
    sizes = sorted({len(m) for m in groups.values()})
    per_group = "/".join(str(s) for s in sizes)
    grid = ", ".join(f"{x:g}" for x in lrs)
    return (
        f"each point: the best of its learning-rate grid ({per_group} run(s) per point; lr {grid}): "
        "highest task/accuracy on held-out sequences, ties to the lower val/loss"
    )


def _varying(runs: list[Run]) -> set[str]:
    """Task parameters that take more than one value among ``runs``."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        for k, v in r.config["task"]["params"].items():
            seen[k].add(json.dumps(v))
    return {k for k, vs in seen.items() if len(vs) > 1}


def _line_figure(
    winners: list[Run], values: Values, x_of, facet_of, x_title: str, title: str, subtitle: str,
    log_x: bool = False, series_of=_series, label_of=None,  # noqa: ANN001 - Run -> str callables
) -> go.Figure:
    """One subplot per facet, one line per series (default: mixer@backbone and size), points labelled by ``label_of``."""
    facets = sorted({facet_of(r) for r in winners})
    series = sorted({series_of(r) for r in winners})
    fig = make_subplots(rows=1, cols=max(1, len(facets)), subplot_titles=[str(f[1]) for f in facets] or None)
    for col, facet in enumerate(facets, 1):
        for i, name in enumerate(series):
            points = sorted(
                ((x_of(r), values[(r.run_key, "task/accuracy")], r) for r in winners
                 if facet_of(r) == facet and series_of(r) == name),
                key=lambda p: (p[0], p[2].seq_len),  # a recurrent state is the same size at every seq_len
            )  # fmt: skip
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers+text" if label_of else "lines+markers",
                    text=[label_of(p[2]) for p in points] if label_of else None,
                    # below a point near the top, so that no label is cut off by the axis
                    textposition=["bottom center" if p[1] > 0.9 else "top center" for p in points],
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"color": _PALETTE[i % len(_PALETTE)]},
                    line={"color": _PALETTE[i % len(_PALETTE)]},
                    customdata=[
                        [p[2].run_key, p[2].seq_len, _lr(p[2]), values.get((p[2].run_key, "model/state_size"))]
                        for p in points
                    ],
                    hovertemplate=(
                        "%{fullData.name}<br>run %{customdata[0]}<br>seq_len %{customdata[1]}<br>lr %{customdata[2]:g}"
                        "<br>state size %{customdata[3]:,}<br>accuracy %{y:.4f}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=x_title, type="log" if log_x else "linear", row=1, col=col)
        fig.update_yaxes(title_text="accuracy" if col == 1 else None, range=[0, 1.02], row=1, col=col)
    fig.update_layout(title={"text": f"{title}<br><sub>{html.escape(subtitle)}</sub>"}, height=500, margin={"t": 110})
    return fig


def task_figures(runs: list[Run], values: Values) -> list[go.Figure]:
    """The task panels for the done task runs of one suite (none if there are none).

    Accuracy vs sequence length and vs difficulty appear only where the suite varies them;
    accuracy vs state size always does.
    """
    groups = best_of_grid(runs, values)
    if not groups:
        return []
    winners = [members[0] for members in groups.values()]
    subtitle = _rule_subtitle(groups)
    varying = _varying(winners)
    names = sorted({r.config["task"]["name"] for r in winners})
    difficulty = _difficulty(winners[0]) or "difficulty"

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
    many_lengths = len({r.seq_len for r in winners}) > 1

    def mixer_line(r: Run) -> str:
        return f"{r.mixer}@{r.backbone}" + (f" T{r.seq_len}" if many_lengths else "")

    title = " / ".join(names)
    figures = []
    if many_lengths:  # a single sequence length would make a panel of one column of dots
        figures.append(_line_figure(winners, values, lambda r: r.seq_len, by_level, "sequence length",
                                    f"{title}: accuracy vs sequence length", subtitle))  # fmt: skip
    if len({json.dumps(level(r)) for r in winners}) > 1:
        figures.append(_line_figure(winners, values, level, by_seq_len, difficulty,
                                    f"{title}: accuracy vs {difficulty}", subtitle))  # fmt: skip
    figures.append(_line_figure(winners, values, state_size, by_level, "state size (numbers kept between tokens)",
                                f"{title}: accuracy vs state size", subtitle, log_x=True, series_of=mixer_line,
                                label_of=lambda r: r.size))  # fmt: skip
    return figures


def task_table_html(runs: list[Run], values: Values) -> str:
    """Every task run with its parameters, learning rate and accuracy; the grid winners marked."""
    task_runs = [r for r in runs if is_task_run(r)]
    if not task_runs:
        return ""
    groups = best_of_grid(task_runs, values)
    header = ("run key", "model", "size", "seq", "task", "lr", "accuracy", "sequence acc.", "state size", "val loss",
              "status", "best of grid")  # fmt: skip
    rows = []
    for r in sorted(task_runs, key=lambda r: (_group_key(r), _lr(r))):
        t = r.config["task"]

        def v(name: str, spec: str) -> str:
            x = values.get((r.run_key, name))
            return "-" if x is None else format(x, spec)

        params = ", ".join(f"{k}={val}" for k, val in t["params"].items())
        best = "yes" if r.run_key in groups else ""
        cells = (r.run_key, f"{r.mixer}@{r.backbone}", r.size, str(r.seq_len), f"{t['name']}({params})", f"{_lr(r):g}",
                 v("task/accuracy", ".4f"), v("task/sequence_accuracy", ".4f"), v("model/state_size", ",.0f"),
                 v("val/loss", ".4f"), r.status, best)  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    ths = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in header)
    return (
        "<h2>Task runs</h2><p>Best of grid: among runs that differ only in learning rate, the one with the "
        "highest task/accuracy on held-out sequences (ties: lower val/loss, then smaller lr) is marked and plotted.</p>"
        f"<table id='task-results'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
