"""Dashboards: one self-contained Plotly HTML per suite, built from the store alone.

Panels: validation perplexity vs training FLOPs (log-log, one line per architecture across
sizes, one panel per context length: the paper's Figure 1 left), perplexity by token
position (Figure 1 right), and a sortable results table with backend and environment.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness.store import Run, Store

DEFAULT_REPORT_DIR = Path("results") / "dashboards"


def _arch(run: Run) -> str:
    return f"{run.mixer}@{run.backbone}"


def flops_figure(runs: list[Run], values: dict[tuple[str, str], float]) -> go.Figure:
    seq_lens = sorted({r.seq_len for r in runs})
    fig = make_subplots(rows=1, cols=len(seq_lens), subplot_titles=[f"context {t}" for t in seq_lens])
    archs = sorted({_arch(r) for r in runs})
    for col, seq_len in enumerate(seq_lens, 1):
        for i, arch in enumerate(archs):
            points = sorted(
                (values[(r.run_key, "flops/train")], values[(r.run_key, "val/ppl")], r)
                for r in runs
                if _arch(r) == arch and r.seq_len == seq_len
            )
            if not points:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in points],
                    y=[p[1] for p in points],
                    mode="lines+markers+text",
                    text=[p[2].size for p in points],
                    textposition="top center",
                    name=arch,
                    legendgroup=arch,
                    showlegend=col == 1,
                    marker={"color": _color(i)},
                    line={"color": _color(i)},
                    customdata=[
                        [p[2].run_key, p[2].n_params, values.get((p[2].run_key, "train/tokens"), float("nan"))]
                        for p in points
                    ],
                    hovertemplate=(
                        "%{fullData.name} %{text}<br>run %{customdata[0]}<br>params %{customdata[1]:,}"
                        "<br>tokens %{customdata[2]:,.0f}<br>train FLOPs %{x:.3g}<br>val ppl %{y:.3f}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(type="log", title_text="training FLOPs", row=1, col=col)
        fig.update_yaxes(type="log", title_text="validation perplexity" if col == 1 else None, row=1, col=col)
    fig.update_layout(title="Validation perplexity vs training FLOPs", height=480)
    return fig


def position_figure(runs: list[Run], position_rows: list[tuple[str, int, int, int, float]]) -> go.Figure:
    by_run: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for key, _bucket, lo, hi, loss in position_rows:
        by_run[key].append((lo, hi, loss))
    fig = go.Figure()
    archs = sorted({_arch(r) for r in runs})
    sizes = sorted({r.size for r in runs}, key=lambda s: min(r.n_params or 0 for r in runs if r.size == s))
    for run in runs:
        rows = by_run.get(run.run_key)
        if not rows:
            continue
        fig.add_trace(
            go.Scatter(
                x=[(lo + hi - 1) / 2 for lo, hi, _ in rows],
                y=[math.exp(min(loss, 700.0)) for _, _, loss in rows],
                mode="lines+markers",
                name=f"{_arch(run)} {run.size} T{run.seq_len}",
                line={"color": _color(archs.index(_arch(run))), "dash": _DASHES[sizes.index(run.size) % len(_DASHES)]},
                hovertemplate="positions %{customdata[0]}-%{customdata[1]}<br>ppl %{y:.3f}<extra>%{fullData.name}</extra>",
                customdata=[[lo, hi - 1] for lo, hi, _ in rows],
            )
        )
    fig.update_xaxes(title_text="token index (bucket centre)")
    fig.update_yaxes(type="log", title_text="perplexity")
    fig.update_layout(title="Perplexity by token index (validation)", height=480)
    return fig


def results_table_html(runs: list[Run], values: dict[tuple[str, str], float]) -> str:
    """The results as a plain HTML table, sortable by clicking a column header."""

    def metric(run: Run, name: str, spec: str) -> tuple[str, str]:
        v = values.get((run.run_key, name))
        return ("-", "") if v is None else (format(v, spec), repr(v))

    header = ("run key", "model", "size", "seq", "params", "status", "val ppl", "train FLOPs", "tokens/s",
              "backend", "device", "commit", "error")  # fmt: skip
    rows = []
    for r in runs:
        env = r.environment or {}
        cells = [
            (r.run_key, ""), (_arch(r), ""), (r.size, ""), (str(r.seq_len), str(r.seq_len)),
            (f"{r.n_params:,}" if r.n_params else "-", str(r.n_params or "")), (r.status, ""),
            metric(r, "val/ppl", ".3f"), metric(r, "flops/train", ".3g"), metric(r, "train/tokens_per_s", ",.0f"),
            (r.backend or "-", ""), (str(env.get("device", "-")), ""), (str(env.get("git_commit") or "-")[:12], ""),
            (r.error or "", ""),
        ]  # fmt: skip
        tds = "".join(
            f'<td data-sort="{html.escape(sort_key)}">{html.escape(text)}</td>' if sort_key else f"<td>{html.escape(text)}</td>"
            for text, sort_key in cells
        )
        rows.append(f"<tr>{tds}</tr>")
    ths = "".join(f"<th onclick='sortTable(this)'>{html.escape(h)}</th>" for h in header)
    return (
        "<h2>Results</h2><p>Click a column header to sort.</p>"
        f"<table id='results'><thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


_SORT_SCRIPT = """<script>
function sortTable(th) {
  const table = th.closest('table'), body = table.tBodies[0];
  const col = Array.from(th.parentNode.children).indexOf(th);
  const ascending = th.dataset.order !== 'asc';
  th.dataset.order = ascending ? 'asc' : 'desc';
  const key = row => { const td = row.children[col]; return td.dataset.sort !== undefined ? td.dataset.sort : td.textContent; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return ascending ? cmp : -cmp;
  });
  rows.forEach(r => body.appendChild(r));
}
</script>"""


_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _color(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def dashboard_html(suite: str, figures: list[go.Figure], table: str) -> str:
    """One HTML page; plotly.js is inlined once so the file opens offline."""
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"responsive": True})
        for i, fig in enumerate(figures)
    ]
    body = "\n".join(f'<section class="panel">{p}</section>' for p in parts)
    title = html.escape(f"mixbench: {suite}")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}.panel{margin-bottom:2em}"
        "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "th{cursor:pointer;background:#eef}</style></head>"
        f"<body><h1>{title}</h1>\n{body}\n{table}\n{_SORT_SCRIPT}\n</body></html>\n"
    )


def write_reports(store: Store, out_dir: Path, suite: str | None = None) -> list[Path]:
    """Write ``<out_dir>/<suite>.html`` for each suite with finished runs; returns the paths."""
    runs = store.runs(suite)
    suites = sorted({r.suite for r in runs})
    values = {(key, name): v for key, _step, name, v in store.metric_values(suite)}
    positions = store.position_losses(suite)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in suites:
        suite_runs = [r for r in runs if r.suite == name]
        done = [r for r in suite_runs if r.status == "done"]
        if not done:
            continue
        figures = [flops_figure(done, values), position_figure(done, positions)]
        path = out_dir / f"{name}.html"
        path.write_text(dashboard_html(name, figures, results_table_html(suite_runs, values)))
        written.append(path)
    return written
