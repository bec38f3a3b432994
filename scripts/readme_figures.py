"""Regenerate the README's result figures and tables from the store, so that none is edited by hand.

    python scripts/readme_figures.py                    # suites mqar and miniature, results/mixbench.db
    python scripts/readme_figures.py --db URL --suite mqar

For each suite it refuses to draw anything unless every cell of the suite file is done in the
store (a half-finished grid would draw a misleading figure). Then it

* writes every dashboard panel as a PNG into ``docs/figures/<suite>/`` (``mixbench report
  --format png``, through kaleido and Chromium);
* writes the suite's table (MQAR: best-of-grid accuracy per mixer and width, with the state
  size; a text suite: validation perplexity per architecture and size, and the perplexity at
  the start, middle and end of the context), the suite's wall time (first cell started to last
  cell finished, from the store) and the figure links between the README's markers
  ``<!-- results:<suite> -->`` and ``<!-- /results:<suite> -->``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.report import ReportError, arch_label, sizes_by_params, write_reports  # noqa: E402 - after the path: run as a script from anywhere
from harness.store import Run, Store, StoreError  # noqa: E402
from harness.suite import Suite, SuiteError, load_suite  # noqa: E402
from harness.tasks.report import best_of_grid  # noqa: E402

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
        raise FiguresError(
            f"suite {suite.name}: {len(missing)} of {len(cells)} cells are not done in the store; "
            f"run `python -m harness run {suite.path.relative_to(ROOT) if suite.path.is_relative_to(ROOT) else suite.path}` first"
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


def task_table(runs: list[Run], values: Values) -> list[str]:
    """Markdown: per mixer and width, the best-of-grid accuracy, its learning rate and the state size."""
    winners = {members[0].run_key: members[0] for members in best_of_grid(runs, values).values()}
    sizes = sizes_by_params(runs)
    cells: dict[str, dict[str, Run]] = defaultdict(dict)
    for run in winners.values():
        cells[arch_label(run)][run.size] = run

    def mean_accuracy(arch: str) -> float:
        return sum(values[(r.run_key, "task/accuracy")] for r in cells[arch].values()) / len(cells[arch])

    lines = ["| model | " + " | ".join(f"{s}: accuracy (lr, state size)" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]  # fmt: skip
    for arch in sorted(cells, key=mean_accuracy, reverse=True):
        row = []
        for size in sizes:
            run = cells[arch].get(size)
            if run is None:
                row.append("")
                continue
            accuracy, state = values[(run.run_key, "task/accuracy")], values[(run.run_key, "model/state_size")]
            row.append(f"{accuracy:.3f} ({run.config['train']['lr']:g}, {state:,.0f})")
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    return lines


def text_table(runs: list[Run], values: Values, positions: list[tuple[str, int, int, int, float]]) -> list[str]:
    """Markdown: validation perplexity per architecture and size, then the largest size's by token index."""
    sizes = sizes_by_params(runs)
    by_arch: dict[str, dict[str, Run]] = defaultdict(dict)
    for run in runs:
        by_arch[arch_label(run)][run.size] = run
    largest = sizes[-1]
    buckets: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for key, _bucket, lo, hi, loss in positions:
        buckets[key].append((lo, hi, loss))
    probe = sorted(buckets[by_arch[next(iter(by_arch))][largest].run_key])
    picks = [probe[0], probe[len(probe) // 2 - 1], probe[-1]] if len(probe) >= 3 else probe
    header = [f"{s} ppl" for s in sizes] + [f"{largest} ppl at tokens {lo}-{hi - 1}" for lo, hi, _ in picks]
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for arch in sorted(by_arch, key=lambda a: values[(by_arch[a][largest].run_key, "val/ppl")]):
        row = [f"{values[(by_arch[arch][s].run_key, 'val/ppl')]:.1f}" for s in sizes]
        stretch = dict(((lo, hi), loss) for lo, hi, loss in buckets[by_arch[arch][largest].run_key])
        row += [f"{math.exp(stretch[(lo, hi)]):.1f}" for lo, hi, _ in picks]
        lines.append(f"| {arch} | " + " | ".join(row) + " |")
    return lines


def results_block(suite: Suite, runs: list[Run], values: Values, positions, figures: list[Path], readme_dir: Path) -> str:  # noqa: ANN001
    """What goes between the README's markers for ``suite``: the table, the wall time, the figures."""
    table = task_table(runs, values) if suite.spec.task is not None else text_table(runs, values, positions)
    epochs = sorted({round(values[(r.run_key, "data/epochs")], 2) for r in runs if (r.run_key, "data/epochs") in values})
    lines = ["<!-- generated by scripts/readme_figures.py from the store; do not edit by hand -->", "", *table, ""]
    facts = f"{len(runs)} cells, wall time {wall_time(runs)} (first cell started to last finished)"
    if epochs and max(epochs) > 1:
        facts += f"; passes over the training text: {epochs[0]:g}-{epochs[-1]:g}"
    lines += [facts + ".", ""]
    lines += [f"![{path.stem}]({Path(os.path.relpath(path, readme_dir)).as_posix()})" for path in figures]
    return "\n".join(lines)


def replace_block(readme: str, name: str, block: str) -> str:
    """``readme`` with the text between ``<!-- results:name -->`` and its closing marker replaced."""
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /results:{re.escape(name)} -->)", re.DOTALL)
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
            images = [p for p in write_reports(store, Path(tmp), suite=suite.name, image_format="png") if p.suffix == ".png"]
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
    parser.add_argument("--suite", action="append", help="suite name under suites/ (repeatable; default: mqar, miniature)")
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
