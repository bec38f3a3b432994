"""Prove the CUDA path on one GPU in under 8 minutes: run every GPU check, print one table, keep it.

    python scripts/gpu_check.py                 # on a machine with one CUDA GPU and the [gpu] extra
    python scripts/gpu_check.py --out DIR       # where the table and the logs go (default results/gpu_check/<time>)

It installs nothing. It runs, each in its own process (a crash or a hang is one failed row):

* every GPU-only test (``pytest -m gpu``; a skip counts as a failure: with the extra installed
  nothing should be missing), over ``XDIST_WORKERS`` pytest-xdist workers where xdist is
  installed (the kernel tests are compile-bound: 29 took 48 s with 12 workers, 5 took 200 s
  serially), else serially;
* the smoke suite restricted to ``micro``, trained on CUDA (bf16 autocast), one row per mixer;
* the latency protocol at ``tiny`` for every smoke model, float32 and bf16, with and without
  CUDA graphs (every row must be ok, attention rows must name the backend that ran, and with
  graphs every decode row must have been replayed as one);
* ``benchmarks/*.py --device cuda --quick``.

Then it prints one table (check, result, seconds), writes it as ``table.md`` beside each
check's log, and exits 0 if every check passed, 1 if any failed. Without a CUDA GPU it says so
in one line and exits with ``EXIT_NO_GPU``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a file: import this checkout's harness and models

import torch  # noqa: E402
import yaml  # noqa: E402

EXIT_NO_GPU = 3  # distinct from 0 (all passed), 1 (a check failed) and 2 (bad arguments)
BUDGET_S = 480  # the whole script: 8 minutes
XDIST_WORKERS = 12  # processes for ``pytest -m gpu`` (at most one per CPU core)
SMOKE = ROOT / "suites" / "smoke.yaml"
LATENCY = {
    "sizes": ["tiny"],
    "contexts": [128, 512],
    "batch": 1,
    "warmup": 1,
    "repeats": 3,
    "decode_tokens": 16,
    "device": "cuda",
}
LATENCY_VARIANTS = [(dtype, graphs) for dtype in ("float32", "bfloat16") for graphs in (False, True)]


@dataclass
class Result:
    check: str
    passed: bool
    seconds: float
    detail: str = ""

    @property
    def result(self) -> str:
        return ("pass" if self.passed else "FAIL") + (f": {self.detail}" if self.detail else "")


@dataclass
class Check:
    """One process to run; ``judge`` turns its exit status (and the files it wrote) into result rows."""

    name: str
    command: list[str]
    timeout_s: int
    judge: Callable[[int, str], list[Result]] | None = None  # (returncode, log text) -> rows; None: exit status
    env: dict[str, str] = field(default_factory=dict)


# --- what to run ----------------------------------------------------------------------------


def smoke_models() -> list[str]:
    """The smoke suite's models, plus every other built-in mixer on the transformer backbone."""
    from models.registry import list_mixers

    models = list(yaml.safe_load(SMOKE.read_text())["models"])
    covered = {m.split("@")[0] for m in models}
    models += [f"{e.name}@transformer" for e in list_mixers() if e.origin == "builtin" and e.name not in covered]
    return models


def smoke_suite(models: list[str]) -> dict:
    """The smoke suite at ``micro`` on CUDA (training autocasts to bf16 there), without its latency part."""
    suite = yaml.safe_load(SMOKE.read_text())
    suite.pop("latency", None)
    suite.update(name="gpu_check_smoke", models=models, sizes=["micro"])
    suite["train"] = {**suite["train"], "device": "cuda"}
    return suite


def latency_suite(models: list[str], dtype: str, graphs: bool) -> dict:
    vocab = yaml.safe_load(SMOKE.read_text())["latency"]["vocab_size"]
    name = f"gpu_check_latency_{dtype}_{'graphs' if graphs else 'eager'}"
    return {
        "name": name,
        "models": models,
        "sizes": ["tiny"],
        "latency": {**LATENCY, "dtype": dtype, "cuda_graphs": graphs, "vocab_size": vocab},
    }


def pytest_workers() -> int:
    """pytest-xdist workers for the GPU tests: ``XDIST_WORKERS`` (at most the CPU count), 0 (serial) without xdist."""
    if importlib.util.find_spec("xdist") is None:
        return 0
    return max(1, min(XDIST_WORKERS, os.cpu_count() or 1))


def build_checks(out: Path, python: str = sys.executable, workers: int | None = None) -> list[Check]:
    """Every check, with its suite files written under ``out`` (nothing runs here).

    ``workers``: pytest-xdist processes for the GPU tests (0: serial; default ``pytest_workers()``).
    """
    db = str(out / "gpu_check.db")
    models = smoke_models()
    workers = pytest_workers() if workers is None else workers
    parallel = ["-n", str(workers)] if workers else []
    checks = [
        Check(
            "GPU-only tests (pytest -m gpu)",
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-m",
                "gpu",
                *parallel,
                "-p",
                "no:cacheprovider",
                f"--junitxml={out / 'pytest.xml'}",
                str(ROOT / "tests"),
            ],
            timeout_s=240,
            judge=lambda code, log: [judge_pytest(out / "pytest.xml", code, workers)],
        )
    ]
    smoke = out / "smoke_micro_cuda.yaml"
    smoke.write_text(yaml.safe_dump(smoke_suite(models), sort_keys=False))
    checks.append(
        Check(
            "smoke micro, CUDA bf16",
            [
                python,
                "-m",
                "harness",
                "run",
                str(smoke),
                "--db",
                db,
                "--cache-dir",
                str(out / "cache"),
                "--report-dir",
                str(out / "dashboards"),
            ],
            timeout_s=240,
            judge=lambda code, log: judge_smoke(db, models, code),
        )
    )
    for dtype, graphs in LATENCY_VARIANTS:
        spec = latency_suite(models, dtype, graphs)
        path = out / f"{spec['name']}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        label = f"latency tiny, {dtype}, {'CUDA graphs' if graphs else 'eager'}"
        checks.append(
            Check(
                label,
                [python, "-m", "harness", "latency", str(path), "--db", db, "--report-dir", str(out / "dashboards")],
                timeout_s=150,
                judge=lambda code, log, s=spec["name"], g=graphs, d=dtype: [judge_latency(db, s, d, g, code)],
            )
        )
    for bench in sorted((ROOT / "benchmarks").glob("*.py")):
        checks.append(
            Check(
                f"benchmarks/{bench.name} --device cuda --quick",
                [python, str(bench), "--device", "cuda", "--quick"],
                timeout_s=120,
            )
        )
    return checks


# --- judging what ran -------------------------------------------------------------------------


def judge_pytest(junit: Path, code: int, workers: int = 0) -> Result:
    name = "GPU-only tests (pytest -m gpu)"
    try:
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    except (OSError, ET.ParseError, AttributeError):
        return Result(name, False, 0.0, f"no test report (pytest exit {code})")
    ran = counts["tests"] - counts["skipped"]
    detail = (
        f"{ran} passed" if code == 0 else f"{counts['failures']} failed, {counts['errors']} errors of {counts['tests']}"
    )
    if counts["skipped"]:
        detail += f", {counts['skipped']} skipped (a GPU machine with the [gpu] extra should skip none)"
    detail += f", {workers} xdist workers" if workers else ", serially (pytest-xdist is not installed)"
    return Result(name, code == 0 and counts["skipped"] == 0 and counts["tests"] > 0, 0.0, detail)


def judge_smoke(db: str, models: list[str], code: int) -> list[Result]:
    """One row per model: its cell's status and training+evaluation time, from the store."""
    from harness.store.database import Store

    runs = {f"{r.mixer}@{r.backbone}": r for r in Store(db).runs("gpu_check_smoke")} if Path(db).exists() else {}
    rows = []
    for arch in models:
        r = runs.get(arch)
        label = f"smoke micro, CUDA bf16: {arch}"
        if r is None:
            rows.append(Result(label, False, 0.0, f"no run stored (harness exit {code})"))
            continue
        seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at and r.started_at else 0.0
        detail = f"backend {r.backend}" if r.status == "done" else f"{r.status}: {r.error}"
        rows.append(Result(label, r.status == "done", seconds, detail))
    return rows


def judge_latency(db: str, suite: str, dtype: str, graphs: bool, code: int) -> Result:
    """Every row ok; attention rows name the backend that ran; with graphs every decode row replayed one."""
    from harness.store.database import Store

    label = f"latency tiny, {dtype}, {'CUDA graphs' if graphs else 'eager'}"
    rows = Store(db).latency_rows(suite) if Path(db).exists() else []
    problems = [
        f"{r.mixer}@{r.backbone} {r.mode} T{r.context}: {r.status} "
        f"({(r.environment or {}).get('latency', {}).get('error')})"
        for r in rows
        if r.status != "ok"
    ]
    for r in rows:
        backend = r.backend.removesuffix("+cuda-graph")
        if r.mixer == "attention" and backend not in (("sdpa",) if dtype == "float32" else ("flash-attn", "sdpa")):
            problems.append(f"attention {r.mode}: backend {r.backend!r}")
        note = (r.environment or {}).get("latency", {}).get("cuda_graph")
        if graphs and r.mode == "decode" and r.status == "ok" and note != "used":
            problems.append(f"{r.mixer}@{r.backbone} decode T{r.context}: graph {note}")
    if not rows:
        problems.append(f"no rows stored (harness exit {code})")
    attention = sorted({f"{r.mode} {r.backend}" for r in rows if r.mixer == "attention"})
    detail = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
    return Result(
        label, code == 0 and not problems, 0.0, detail or f"{len(rows)} rows ok; attention: {', '.join(attention)}"
    )


# --- running ----------------------------------------------------------------------------------


def run_checks(
    checks: list[Check], out: Path, budget_s: float = BUDGET_S, echo: Callable[[str], None] = print
) -> list[Result]:
    """Run each check in turn with its own timeout, within ``budget_s`` overall; log each to ``out``."""
    deadline = time.monotonic() + budget_s
    results: list[Result] = []
    for i, check in enumerate(checks, 1):
        left = deadline - time.monotonic()
        if left <= 5:
            results.append(Result(check.name, False, 0.0, f"not run: the {budget_s:.0f} s budget was spent"))
            continue
        echo(f"[{i}/{len(checks)}] {check.name}")
        log = out / f"{i:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', check.name).strip('_')}.log"
        began = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(ROOT), **check.env}
        try:
            with log.open("w") as fh:
                code = subprocess.run(
                    check.command,
                    cwd=ROOT,
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    timeout=min(check.timeout_s, left),
                ).returncode
        except subprocess.TimeoutExpired:
            results.append(Result(check.name, False, time.monotonic() - began, f"timed out (log {log.name})"))
            continue
        seconds = time.monotonic() - began
        if check.judge is None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if code else []
            results.append(Result(check.name, code == 0, seconds, f"exit {code}: {tail[0][:160]}" if tail else ""))
            continue
        rows = check.judge(code, log.read_text(errors="replace"))
        for row in rows:
            row.seconds = row.seconds or seconds / len(rows)  # a row without its own time shares the process's
        results.extend(rows)
    return results


def table_markdown(results: list[Result], header: str) -> str:
    lines = [header, "", "| check | result | seconds |", "|---|---|---:|"]
    lines += [f"| {r.check} | {r.result.replace('|', '/')} | {r.seconds:.1f} |" for r in results]
    passed = sum(r.passed for r in results)
    lines += ["", f"{passed} of {len(results)} checks passed."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", type=Path, default=None, help="folder for the table and logs (default results/gpu_check/<UTC time>)"
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False); nothing was checked")
        return EXIT_NO_GPU
    out = args.out or ROOT / "results" / "gpu_check" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    from harness.measure.environment import git_commit, machine_summary

    began = time.monotonic()
    results = run_checks(build_checks(out), out)
    header = (
        f"# gpu_check: {machine_summary(torch.device('cuda'))}\n\ncommit {git_commit()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {time.monotonic() - began:.0f} s in all"
    )
    table = table_markdown(results, header)
    (out / "table.md").write_text(table)
    print(table)
    print(f"table and logs: {out}")
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
