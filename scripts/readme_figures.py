"""Regenerate the README's result figures and tables from the store, so that none is edited by hand.

    python scripts/readme_figures.py                    # suites mqar and miniature, results/mixbench.db
    python scripts/readme_figures.py --db URL --suite mqar

For each suite it refuses to draw anything unless every cell of the suite file is done in the
store (a half-finished grid would draw a misleading figure). Then it

* writes every dashboard panel as a PNG into ``docs/figures/<suite>/`` (``mixbench report
  --format png``, through kaleido and Chromium);
* writes the suite's table (MQAR: accuracy per mixer and width at the learning rate with the
  best median, with the state size; a text suite: validation perplexity per architecture and
  size, and the perplexity at the start, middle and end of the context), the number of seeds,
  the suite's wall time (first cell started to last cell finished, from the store) and the
  figure links between the README's markers ``<!-- results:<suite> -->`` and
  ``<!-- /results:<suite> -->``.

Every figure of a table is the median over seeds with its range (``harness/report/seeds.py``): a
cell whose range overlaps another model's at the same size is marked as a tie with it, and a
task point where some seeds solve the task and some do not says so, so that a reading written
from the table claims only what holds across seeds.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.common.names import MetricName  # noqa: E402
from harness.config.suite import Suite, SuiteError, load_suite  # noqa: E402
from harness.report.dashboard import ReportError, sizes_by_params, write_reports  # noqa: E402 - after the path: run as a script from anywhere
from harness.report.seeds import Point, choose, ties  # noqa: E402
from harness.report.tasks import split_label  # noqa: E402
from harness.store.database import Run, Store, StoreError  # noqa: E402

DEFAULT_SUITES = ("mqar", "miniature")
Values = dict[tuple[str, str], float]


class FiguresError(RuntimeError):
    """Something that stops the refresh; the message is one line for the user."""


def done_runs(store: Store, suite: Suite) -> list[Run]:
    """The stored runs of every cell of ``suite``; refuses while any is missing or not done."""
    runs = {r.run_key: r for r in store.runs(suite.name)}
    cells = suite.cells()
    missing = [c for c in cells if c.run_key not in runs or runs[c.run_key].status != "done"]
    if missing:
        shown = suite.path.relative_to(ROOT) if suite.path.is_relative_to(ROOT) else suite.path
        raise FiguresError(
            f"suite {suite.name}: {len(missing)} of {len(cells)} cells are not done in the store; "
            f"run `python -m harness run {shown}` first"
        )
    return [runs[c.run_key] for c in cells]


def wall_time(runs: list[Run]) -> str:
    """First cell started to last cell finished, as stored: the suite's wall time if run in one go."""
    starts = [r.started_at for r in runs if r.started_at is not None]
    ends = [r.finished_at for r in runs if r.finished_at is not None]
    if not starts or not ends:
        return "unknown"
    minutes = (max(ends) - min(starts)).total_seconds() / 60
    return f"{minutes:.0f} minutes"


def measured_on(runs: list[Run]) -> str:
    """The processors and torch builds the runs recorded, so a reader rerunning the suite can tell
    whether a difference may come from another machine (another BLAS path rounds differently)."""
    machines = sorted(
        {
            f"{env.get('device', 'unknown device')}, torch {env.get('packages', {}).get('torch', 'unknown')}"
            for env in (r.environment or {} for r in runs)
        }
    )
    return "; ".join(machines)


def _tie_note(point: Point, tied: dict[str, list[Point]]) -> str:
    others = [p.run.arch_label for p in tied.get(point.run.run_key, [])]
    return f"; tie: {', '.join(others)}" if others else ""


def task_table(runs: list[Run], values: Values) -> list[str]:
    """Markdown: per mixer and width, the median accuracy over seeds [min-max] at the learning rate
    with the best median, that learning rate and the state size; ties and split points marked."""
    best = [c.best for c in choose(runs, values)]
    tied = ties(best, values, MetricName.TASK_ACCURACY)
    sizes = sizes_by_params(runs)
    cells: dict[str, dict[str, Point]] = defaultdict(dict)
    for point in best:
        cells[point.run.arch_label][point.run.size] = point

    def mean_median(arch: str) -> float:
        return sum(p.spread(values, MetricName.TASK_ACCURACY).median for p in cells[arch].values()) / len(cells[arch])

    lines = [
        "| model | " + " | ".join(f"{s}: accuracy, median [min-max] (lr, state size)" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for arch in sorted(cells, key=mean_median, reverse=True):
        row = []
        for size in sizes:
            point = cells[arch].get(size)
            if point is None:
                row.append("")
                continue
            state = values[(point.run.run_key, "model/state_size")]
            split = f" **split: {split_label(point, values)}**" if split_label(point, values) else ""
            row.append(
                f"{point.spread(values, MetricName.TASK_ACCURACY).text('.3f')} "
                f"({point.lr:g}, {state:,.0f}{_tie_note(point, tied)})" + split
            )
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    return lines


def text_table(runs: list[Run], values: Values, positions: list[tuple[str, int, int, int, float]]) -> list[str]:
    """Markdown: median validation perplexity [min-max] over seeds per architecture and size (ties
    marked), then the largest size's median by token index."""
    best = [c.best for c in choose(runs, values)]
    tied = ties(best, values, "val/ppl")
    sizes = sizes_by_params(runs)
    by_arch: dict[str, dict[str, Point]] = defaultdict(dict)
    for point in best:
        by_arch[point.run.arch_label][point.run.size] = point
    largest = sizes[-1]
    buckets: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    for key, _bucket, lo, hi, loss in positions:
        buckets[key][(lo, hi)] = loss
    probe = sorted(buckets[by_arch[next(iter(by_arch))][largest].runs[0].run_key])
    picks = [probe[0], probe[len(probe) // 2 - 1], probe[-1]] if len(probe) >= 3 else probe
    header = [f"{s} ppl" for s in sizes] + [f"{largest} ppl at tokens {lo}-{hi - 1}" for lo, hi in picks]
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for arch in sorted(by_arch, key=lambda a: by_arch[a][largest].spread(values, "val/ppl").median):
        row = [
            by_arch[arch][s].spread(values, "val/ppl").text(".1f")
            + _tie_note(by_arch[arch][s], tied).replace("; ", " ")
            for s in sizes
        ]
        seeds = by_arch[arch][largest].runs
        row += [f"{statistics.median(math.exp(buckets[r.run_key][stretch]) for r in seeds):.1f}" for stretch in picks]
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    return lines


def results_block(
    suite: Suite, runs: list[Run], values: Values, positions, figures: list[Path], readme_dir: Path
) -> str:
    """What goes between the README's markers for ``suite``: the table, the wall time, the figures."""
    table = task_table(runs, values) if suite.spec.task is not None else text_table(runs, values, positions)
    epochs = sorted(
        {round(values[(r.run_key, "data/epochs")], 2) for r in runs if (r.run_key, "data/epochs") in values}
    )
    lines = ["<!-- generated by scripts/readme_figures.py from the store; do not edit by hand -->", "", *table, ""]
    seeds = sorted({len(p.runs) for p in (c.best for c in choose(runs, values))})
    facts = (
        f"{len(runs)} cells, {'/'.join(map(str, seeds))} seed(s) per point, wall time {wall_time(runs)} "
        f"(first cell started to last finished), measured on {measured_on(runs)}"
    )
    if epochs and max(epochs) > 1:
        facts += f"; passes over the training text: {epochs[0]:g}-{epochs[-1]:g}"
    lines += [facts + ".", ""]
    if max(seeds) > 1:
        lines += [
            "Each figure: the median over seeds [min-max]. A tie: the ranges of two models at one size "
            "overlap, so neither ranks above the other; split: some seeds solve the task and some do not.",
            "",
        ]
    lines += [f"![{path.stem}]({Path(os.path.relpath(path, readme_dir)).as_posix()})" for path in figures]
    return "\n".join(lines)


def replace_block(readme: str, name: str, block: str) -> str:
    """``readme`` with the text between ``<!-- results:name -->`` and its closing marker replaced."""
    pattern = re.compile(
        rf"(<!-- results:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /results:{re.escape(name)} -->)", re.DOTALL
    )
    if not pattern.search(readme):
        raise FiguresError(f"README has no '<!-- results:{name} -->' ... '<!-- /results:{name} -->' markers")
    return pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), readme, count=1)


def refresh(store: Store, suite_paths: list[Path], figures_dir: Path, readme: Path) -> list[Path]:
    """Write every suite's PNG panels and README block; returns the figures written."""
    text = readme.read_text()
    written: list[Path] = []
    for path in suite_paths:
        suite = load_suite(path)
        runs = done_runs(store, suite)
        values = {(key, name): v for key, _step, name, v in store.metric_values(suite.name)}
        keys = {r.run_key for r in runs}
        positions = [row for row in store.position_losses(suite.name) if row[0] in keys]
        out = figures_dir / suite.name
        with tempfile.TemporaryDirectory() as tmp:
            images = [
                p for p in write_reports(store, Path(tmp), suite=suite.name, image_format="png") if p.suffix == ".png"
            ]
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            figures = [Path(shutil.copy(p, out / p.name)) for p in images]
        text = replace_block(text, suite.name, results_block(suite, runs, values, positions, figures, readme.parent))
        written += figures
    readme.write_text(text)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="results/mixbench.db", help="the store (SQLite path or SQLAlchemy URL)")
    parser.add_argument(
        "--suite", action="append", help="suite name under suites/ (repeatable; default: mqar, miniature)"
    )
    parser.add_argument("--figures-dir", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    paths = [ROOT / "suites" / f"{name}.yaml" for name in args.suite or DEFAULT_SUITES]
    try:
        written = refresh(Store(args.db), paths, args.figures_dir, args.readme)
    except (FiguresError, SuiteError, StoreError, ReportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"figure: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
