"""Dashboards: one self-contained Plotly HTML per suite, built from the store alone.

Runs are read as points over seeds (``harness/report/seeds.py``): each point of a panel is the
median over its seeds, with min-max bars (a band for the position curves), at the learning
rate with the best median. Panels: validation perplexity vs training FLOPs (log-log, one
line per architecture across sizes, one panel per context length: the paper's Figure 1
left), perplexity by token position (Figure 1 right), latency (prefill time and decode time per token vs context length,
one line per architecture and size; out-of-memory points marked, not drawn), and sortable
tables of the results and the latency measurements with backend and environment, and of the points over seeds (median,
range, ties, split points). A suite with latency rows and no training runs gets a dashboard too.
"""

from __future__ import annotations

import html
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from harness.common.atomic_file import write_text_atomic
from harness.common.names import FINISHED, MetricName, PointStatus
from harness.measure.cost import (
    Measurement,
    actual_gpu_hours,
    measurements,
    predicted_gpu_hours,
)
from harness.monitor.health import flags_by_run
from harness.report.live_panels import refresh_tag, running_curves_figure
from harness.report.palette import color
from harness.report.seeds import Point, choose, is_task_run, ties
from harness.report.tasks import split_label, task_figures, task_table_html
from harness.store.database import Latency, Run, Store
from models.errors import MixbenchError

DEFAULT_REPORT_DIR = Path("results") / "dashboards"
IMAGE_FORMATS = ("png", "svg")


class ReportError(MixbenchError, RuntimeError):
    """A dashboard or figure that cannot be written, said in one line."""


def sizes_by_params(runs: list[Run]) -> list[str]:
    """The sizes among ``runs``, smallest model first (size names do not sort by size)."""
    return sorted({r.size for r in runs}, key=lambda s: min(r.n_params or 0 for r in runs if r.size == s))


def flops_figure(points: list[Point], values: dict[tuple[str, str], float]) -> go.Figure:
    """Median validation perplexity over seeds (bars: min-max) vs training FLOPs, one line per architecture."""
    seq_lens = sorted({p.run.seq_len for p in points})
    fig = make_subplots(rows=1, cols=len(seq_lens), subplot_titles=[f"context {t}" for t in seq_lens])
    archs = sorted({p.run.arch_label for p in points})
    for col, seq_len in enumerate(seq_lens, 1):
        for i, arch in enumerate(archs):
            rows = sorted(
                (
                    (values[(p.run.run_key, MetricName.TRAIN_FLOPS)], p.spread(values, MetricName.VAL_PPL), p)
                    for p in points
                    if p.run.arch_label == arch and p.run.seq_len == seq_len
                ),
                key=lambda q: q[0],
            )
            if not rows:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[q[0] for q in rows],
                    y=[q[1].median for q in rows],
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [q[1].hi - q[1].median for q in rows],
                        "arrayminus": [q[1].median - q[1].lo for q in rows],
                        "thickness": 1.5,
                    },
                    mode="lines+markers+text",
                    text=[q[2].run.size for q in rows],
                    textposition="top center",
                    name=arch,
                    legendgroup=arch,
                    showlegend=col == 1,
                    marker={"color": color(i)},
                    line={"color": color(i)},
                    customdata=[
                        [
                            q[2].run.run_key,
                            q[2].run.n_params,
                            values.get((q[2].run.run_key, "train/tokens"), float("nan")),
                            q[2].lr,
                            ", ".join(f"seed {s}: {v:.3f}" for s, v in zip(q[2].seeds, q[1].values)),
                        ]
                        for q in rows
                    ],
                    hovertemplate=(
                        "%{fullData.name} %{text}<br>run %{customdata[0]}<br>params %{customdata[1]:,}"
                        "<br>tokens %{customdata[2]:,.0f}<br>lr %{customdata[3]:g}<br>train FLOPs %{x:.3g}"
                        "<br>median val ppl %{y:.3f}<br>%{customdata[4]}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title_text="training FLOPs", row=1, col=col)
        fig.update_yaxes(type="log", title_text="validation perplexity" if col == 1 else None, row=1, col=col)
    fig.update_layout(
        title=f"Validation perplexity vs training FLOPs<br><sub>{html.escape(_seeds_note(points))}</sub>",
        height=480,
        margin={"t": 100},
    )
    return fig


def _seeds_note(points: list[Point]) -> str:
    seeds = "/".join(str(n) for n in sorted({len(p.runs) for p in points}))
    return f"median over {seeds} seed(s), bars or band min-max, at the learning rate with the best median val/loss"


def position_figure(points: list[Point], position_rows: list[tuple[str, int, int, int, float]]) -> go.Figure:
    """Perplexity by token index: each point's median over seeds per stretch, its min-max as a band."""
    by_run: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    for key, _bucket, lo, hi, loss in position_rows:
        by_run[key][(lo, hi)] = loss
    fig = go.Figure()
    archs = sorted({p.run.arch_label for p in points})
    sizes = sizes_by_params([p.run for p in points])
    for point in points:
        curves = [by_run[r.run_key] for r in point.runs if by_run.get(r.run_key)]
        if not curves:
            continue
        stretches = sorted(set.intersection(*(set(c) for c in curves)))
        x = [(lo + hi - 1) / 2 for lo, hi in stretches]
        ppl = [[math.exp(min(c[s], 700.0)) for c in curves] for s in stretches]
        name = f"{point.run.arch_label} {point.run.size} T{point.run.seq_len}"
        line_color = color(archs.index(point.run.arch_label))
        if len(curves) > 1:  # the band: up along the best seed, back along the worst
            fig.add_trace(
                go.Scatter(
                    x=x + x[::-1],
                    y=[min(v) for v in ppl] + [max(v) for v in ppl][::-1],
                    fill="toself",
                    fillcolor=line_color,
                    opacity=0.15,
                    line={"width": 0},
                    hoverinfo="skip",
                    legendgroup=name,
                    showlegend=False,
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=[statistics.median(v) for v in ppl],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": line_color, "dash": _DASHES[sizes.index(point.run.size) % len(_DASHES)]},
                hovertemplate="positions %{customdata[0]}-%{customdata[1]}<br>median ppl %{y:.3f} (%{customdata[2]})"
                "<extra>%{fullData.name}</extra>",
                customdata=[
                    [lo, hi - 1, f"{min(v):.3f}-{max(v):.3f} over {len(v)} seed(s)"]
                    for (lo, hi), v in zip(stretches, ppl)
                ],
            )
        )
    fig.update_xaxes(title_text="token index (bucket centre)")
    fig.update_yaxes(type="log", title_text="perplexity")
    # one legend row per line: tall enough that a static image (which cannot scroll) shows them all
    lines = sum(1 for trace in fig.data if trace.showlegend is not False)
    fig.update_layout(
        title=f"Perplexity by token index (validation)<br><sub>{html.escape(_seeds_note(points))}</sub>",
        height=max(480, 160 + 22 * lines),
        margin={"t": 100},
    )
    return fig


def results_table_html(
    runs: list[Run],
    values: dict[tuple[str, str], float],
    flags: dict[str, list[str]] | None = None,
    known: list[Measurement] | None = None,
) -> str:
    """The results as a plain HTML table, sortable by clicking a column header; with each run's health
    flags, and the GPU-hours a dry run would have predicted (from ``known`` speeds measured before it) beside
    those it took."""

    def metric(run: Run, name: str, spec: str) -> tuple[str, str]:
        v = values.get((run.run_key, name))
        return ("-", "") if v is None else (format(v, spec), repr(v))

    header = (
        "run key",
        "model",
        "size",
        "seq",
        "lr",
        "seed",
        "params",
        "status",
        "val ppl",
        "train FLOPs",
        "tokens/s",
        "GPU-h predicted",
        "GPU-h actual",
        "backend",
        "device",
        "commit",
        "error",
        "flags",
    )
    by_run: dict[str, dict[str, float]] = defaultdict(dict)
    for (key, name), v in values.items():
        by_run[key][name] = v
    rows = []
    for r in runs:
        env = r.environment or {}
        train = r.config.get("train", {}) if isinstance(r.config, dict) else {}
        own = by_run[r.run_key]
        predicted = predicted_gpu_hours(r, own, known or [])
        actual = actual_gpu_hours(own) if predicted is not None else None  # a CPU run's hours are not GPU-hours
        cells = [
            (r.run_key, ""),
            (r.arch_label, ""),
            (r.size, ""),
            (str(r.seq_len), str(r.seq_len)),
            (f"{train.get('lr', '-'):g}" if "lr" in train else "-", str(train.get("lr", ""))),
            (str(train.get("seed", "-")), ""),
            (f"{r.n_params:,}" if r.n_params else "-", str(r.n_params or "")),
            (r.status, ""),
            metric(r, MetricName.VAL_PPL, ".3f"),
            metric(r, MetricName.TRAIN_FLOPS, ".3g"),
            metric(r, MetricName.TOKENS_PER_S, ",.0f"),
            ("-", "")
            if predicted is None
            else (
                f"{predicted.gpu_hours:.3g} ({'measured' if predicted.measured else 'assumed MFU'})",
                repr(predicted.gpu_hours),
            ),
            ("-", "") if actual is None else (f"{actual:.3g}", repr(actual)),
            (r.backend or "-", ""),
            (str(env.get("device", "-")), ""),
            (str(env.get("git_commit") or "-")[:12], ""),
            (r.error or "", ""),
            ("; ".join((flags or {}).get(r.run_key, [])), ""),
        ]
        rows.append(cells)
    return _sortable_table("Results", "results", header, rows)


def spread_rows(runs: list[Run], values: dict[tuple[str, str], float]) -> list[dict[str, str]]:
    """One row per point over seeds, for the dashboard and ``mixbench results``: its median and
    range, whether it is its grid's chosen learning rate, whether its seeds split on solving the
    task, and which chosen points of its comparison it ties with (ranges overlap). None when every
    point is one seed and its grid's only point: then the results table already says it all."""
    choices = choose(runs, values)
    if all(len(c.candidates) == 1 and len(c.best.runs) == 1 for c in choices):
        return []
    best = [c.best for c in choices]
    tied = ties([p for p in best if is_task_run(p.run)], values, MetricName.TASK_ACCURACY)
    tied |= ties([p for p in best if not is_task_run(p.run)], values, MetricName.VAL_PPL)
    rows = []
    for choice in choices:
        for point in choice.candidates:
            run = point.run
            task = is_task_run(run)
            metric = MetricName.TASK_ACCURACY if task else MetricName.VAL_PPL
            spread = point.spread(values, metric)
            if spread is None:
                continue
            chosen = point is choice.best
            others = [p.run.arch_label for p in tied.get(run.run_key, [])]
            rows.append(
                {
                    "model": run.arch_label,
                    "size": run.size,
                    "seq": str(run.seq_len),
                    "task": _task_text(run) if task else "-",
                    "lr": f"{point.lr:g}",
                    "seeds": ", ".join(str(s) for s in point.seeds),
                    "metric": "accuracy" if task else "val ppl",
                    "median": f"{spread.median:.4g}",
                    "min": f"{spread.lo:.4g}",
                    "max": f"{spread.hi:.4g}",
                    "chosen": "yes" if chosen else "",
                    "split": split_label(point, values) if task else "",
                    "ties with": ", ".join(others) if chosen else "",
                }
            )
    return rows


def _task_text(run: Run) -> str:
    task = run.config["task"]
    return f"{task['name']}(" + ", ".join(f"{k}={v}" for k, v in task["params"].items()) + ")"


def spread_table_html(runs: list[Run], values: dict[tuple[str, str], float]) -> str:
    rows = spread_rows(runs, values)
    if not rows:
        return ""
    header = tuple(rows[0])
    table = _sortable_table("Over seeds", "seeds", header, [[(row[h], "") for h in header] for row in rows])
    return table.replace(
        "<p>Click a column header to sort.</p>",
        "<p>One row per point (every run of a setting but its seed): the median and range over seeds. Chosen: the "
        "learning rate with the best median. Ties with: chosen points of the same size, sequence length and task "
        "whose ranges overlap this one's, so neither ranks above the other. Split: some seeds solve the task and "
        "some do not. Click a column header to sort.</p>",
    )


def _sortable_table(title: str, table_id: str, header: tuple[str, ...], rows: list[list[tuple[str, str]]]) -> str:
    """``rows`` of ``(text, sort key)`` cells (an empty key sorts by the text) as a sortable HTML table."""
    trs = []
    for cells in rows:
        tds = "".join(
            f'<td data-sort="{html.escape(sort_key)}">{html.escape(text)}</td>'
            if sort_key
            else f"<td>{html.escape(text)}</td>"
            for text, sort_key in cells
        )
        trs.append(f"<tr>{tds}</tr>")
    ths = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in header)
    return (
        f"<h2>{html.escape(title)}</h2><p>Click a column header to sort.</p>"
        f"<table id='{table_id}'><thead><tr>{ths}</tr></thead><tbody>{''.join(trs)}</tbody></table>"
    )


_SORT_SCRIPT = """<script>
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const ascending = th.dataset.order !== 'asc';
  th.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => {
    const td = row.children[col];
    return td.dataset.sort !== undefined ? td.dataset.sort : td.textContent;
  };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? cmp : -cmp;
  });
  rows.forEach(r => body.appendChild(r));
}
</script>"""


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def dashboard_html(suite: str, figures: list[go.Figure], table: str, head: str = "") -> str:
    """One HTML page; plotly.js is inlined once so the file opens offline. ``head``: extra tags (a reload)."""
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"responsive": True})
        for i, fig in enumerate(figures)
    ]
    body = "\n".join(f'<section class="panel">{p}</section>' for p in parts)
    title = html.escape(f"mixbench: {suite}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'>{head}<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}.panel{margin-bottom:2em}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{cursor:pointer;background:#eef}</style></head>"
        f"<body><h1>{title}</h1>\n{body}\n{table}\n{_SORT_SCRIPT}\n</body></html>\n"
    )


def _latency_series(row: Latency) -> tuple[str, str, str, str, int]:
    return (f"{row.mixer}@{row.backbone}", row.size, row.device, row.dtype, row.batch)


def latency_figure(rows: list[Latency]) -> go.Figure:
    """Prefill ms and decode ms per token vs context (log-log): a line per architecture and size.

    Points that ran out of memory (or failed) have no time: they are left out of the lines and
    marked with a cross along the top of their panel.
    """
    modes = (("prefill", "prefill time (ms)"), ("decode", "decode time per token (ms)"))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[title for _, title in modes])
    series = sorted({_latency_series(r) for r in rows})
    archs = sorted({key[0] for key in series})
    sizes = sorted({key[1] for key in series})
    several_settings = len({key[2:] for key in series}) > 1
    for col, (mode, title) in enumerate(modes, 1):
        in_mode = [r for r in rows if r.mode == mode]
        top = max((r.median_ms for r in in_mode if r.status == PointStatus.OK), default=1.0)
        for key in series:
            arch, size, device, dtype, batch = key
            name = f"{arch} {size}" + (f" · {dtype} b{batch} {device}" if several_settings else "")
            style = {"color": color(archs.index(arch))}
            points = sorted((r for r in in_mode if _latency_series(r) == key), key=lambda r: r.context)
            ok = [r for r in points if r.status == PointStatus.OK]
            if ok:
                fig.add_trace(
                    go.Scatter(
                        x=[r.context for r in ok],
                        y=[r.median_ms for r in ok],
                        error_y={
                            "type": "data",
                            "symmetric": False,
                            "array": [r.p80_ms - r.median_ms for r in ok],
                            "arrayminus": [r.median_ms - r.p20_ms for r in ok],
                            "thickness": 1,
                        },
                        mode="lines+markers",
                        name=name,
                        legendgroup=name,
                        showlegend=col == 1,
                        line={**style, "dash": _DASHES[sizes.index(size) % len(_DASHES)]},
                        marker=style,
                        customdata=[_latency_hover(r) for r in ok],
                        hovertemplate=(
                            "%{fullData.name}<br>context %{x:,}<br>median %{y:.4g} ms (p20-p80 %{customdata[0]})"
                            "<br>tokens/s %{customdata[1]}<br>peak memory %{customdata[2]}<br>params %{customdata[3]}"
                            "<br>backend %{customdata[4]}<br>%{customdata[5]}<extra></extra>"
                        ),
                    ),
                    row=1,
                    col=col,
                )
            missing = [r for r in points if r.status != PointStatus.OK]
            if missing:
                fig.add_trace(
                    go.Scatter(
                        x=[r.context for r in missing],
                        y=[top] * len(missing),
                        mode="markers+text",
                        text=[r.status.upper() for r in missing],
                        textposition="bottom center",
                        name=f"{name} (no time)",
                        legendgroup=name,
                        showlegend=False,
                        marker={**style, "symbol": "x", "size": 11},
                        customdata=[
                            [r.status, (r.environment or {}).get("latency", {}).get("error") or ""] for r in missing
                        ],
                        hovertemplate=(
                            "%{fullData.name}<br>context %{x:,}: %{customdata[0]}<br>%{customdata[1]}<extra></extra>"
                        ),
                    ),
                    row=1,
                    col=col,
                )
        contexts = sorted({r.context for r in rows})
        fig.update_xaxes(type="log", title_text="context length (tokens)", tickvals=contexts, row=1, col=col)
        fig.update_yaxes(type="log", title_text=title, row=1, col=col)
    fig.update_layout(title="Latency: prefill and decode vs context length (median, bars p20-p80)", height=480)
    return fig


def _latency_hover(r: Latency) -> list[str]:
    details = (r.environment or {}).get("latency", {})
    params = details.get("n_params")
    return [
        f"{r.p20_ms:.4g}-{r.p80_ms:.4g} ms",
        f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-",
        "-" if r.peak_memory_bytes is None else f"{r.peak_memory_bytes / 2**20:,.0f} MiB",
        f"{params:,}" if params else "-",
        r.backend,
        f"batch {r.batch}, {r.dtype}, {r.device}",
    ]


def latency_table_html(rows: list[Latency]) -> str:
    header = (
        "model",
        "size",
        "mode",
        "context",
        "batch",
        "dtype",
        "status",
        "median ms",
        "p20 ms",
        "p80 ms",
        "tokens/s",
        "peak MiB",
        "params",
        "backend",
        "device",
        "commit",
        "measured",
        "error",
    )

    def number(v: float | None, spec: str) -> tuple[str, str]:
        return ("-", "") if v is None else (format(v, spec), repr(v))

    cells = []
    for r in rows:
        env = r.environment or {}
        details = env.get("latency", {})
        cells.append(
            [
                (f"{r.mixer}@{r.backbone}", ""),
                (r.size, ""),
                (r.mode, ""),
                (str(r.context), str(r.context)),
                (str(r.batch), str(r.batch)),
                (r.dtype, ""),
                (r.status, ""),
                number(r.median_ms, ".4g"),
                number(r.p20_ms, ".4g"),
                number(r.p80_ms, ".4g"),
                number(r.tokens_per_s, ",.0f"),
                number(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, ",.0f"),
                number(details.get("n_params"), ","),
                (r.backend, ""),
                (r.device, ""),
                (str(env.get("git_commit") or "-")[:12], ""),
                (f"{r.created_at:%Y-%m-%d %H:%M}", ""),
                (details.get("error") or "", ""),
            ]
        )
    return _sortable_table("Latency measurements", "latency", header, cells)


def panel_name(fig: go.Figure) -> str:
    """A file name from the panel's title ("Validation perplexity vs training FLOPs" ->
    ``validation-perplexity-vs-training-flops``), so image names stay stable across reruns."""
    title = (fig.layout.title.text or "panel").split("<br>")[0]
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "panel"


def write_panel_images(figures: list[go.Figure], out_dir: Path, image_format: str) -> list[Path]:
    """Each panel as a static image in ``out_dir``, for READMEs and papers.

    All panels go through one call, so kaleido starts its headless Chromium once per suite.
    """
    if image_format not in IMAGE_FORMATS:
        raise ReportError(f"unknown image format {image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    names = [panel_name(fig) for fig in figures]
    paths = [
        out_dir / f"{name}-{i + 1}.{image_format}" if names.count(name) > 1 else out_dir / f"{name}.{image_format}"
        for i, name in enumerate(names)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        heights = [fig.layout.height or 480 for fig in figures]  # each panel at the height the dashboard gives it
        pio.write_images(figures, paths, format=image_format, width=1200, height=heights)
    except (RuntimeError, ValueError) as exc:  # kaleido missing, or no Chromium for it to drive
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportError(
            f"cannot write {image_format} figures ({first_line}); install the [figures] extra (kaleido) and Chromium"
        ) from exc
    return paths


def write_reports(store: Store, out_dir: Path, suite: str | None = None, image_format: str | None = None) -> list[Path]:
    """Write ``<out_dir>/<suite>.html`` for each suite with finished runs or latency rows; returns the paths.

    With ``image_format`` (png or svg) each panel is also written to ``<out_dir>/<suite>/<panel>.<format>``.
    """
    runs = store.runs(suite)
    latency = store.latency_rows(suite)
    suites = sorted({r.suite for r in runs} | {r.suite for r in latency})
    metric_rows = store.metric_values(suite)
    values = {(key, name): v for key, _step, name, v in metric_rows}
    flags, known = flags_by_run(runs, metric_rows), measurements(store)
    positions = store.position_losses(suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in suites:
        suite_runs = [r for r in runs if r.suite == name]
        done = [r for r in suite_runs if r.status in FINISHED]
        suite_latency = [r for r in latency if r.suite == name]
        live = running_curves_figure(suite_runs, metric_rows)
        if not done and not suite_latency and live is None:
            continue
        # task runs get their own panels (accuracy); text points are each grid's chosen learning rate
        text_points = [c.best for c in choose([r for r in done if not is_task_run(r)], values)]
        trained = [
            p for p in text_points if (p.run.run_key, MetricName.TRAIN_FLOPS) in values
        ]  # a model scored here has no FLOPs here
        figures = [flops_figure(trained, values)] if trained else []
        curves = {key for key, *_ in positions}  # an imported model's own row has no curve until it is scored
        figures += (
            [position_figure(text_points, positions)] if any(p.run.run_key in curves for p in text_points) else []
        )
        figures += task_figures(done, values)
        figures += [live] if live is not None else []
        tables = ""
        if suite_runs:
            tables = results_table_html(suite_runs, values, flags, known) + spread_table_html(suite_runs, values)
            tables += task_table_html(suite_runs, values)
        if suite_latency:
            figures.append(latency_figure(suite_latency))
            tables += latency_table_html(suite_latency)
        path = out_dir / f"{name}.html"
        write_text_atomic(path, dashboard_html(name, figures, tables, refresh_tag() if live is not None else ""))
        written.append(path)
        if image_format is not None and figures:
            written += write_panel_images(figures, out_dir / name, image_format)
    return written
