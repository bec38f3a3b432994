"""End to end through the CLI: run, resume, report, query, and every bad input on the way."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import runner as runner_module
from harness.cli import main
from harness.engine.train import TrainingDiverged
from harness.store.database import SCHEMA_VERSION, Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/ (db, cache, dashboards) land in the test's folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_writes_done_rows_and_a_dashboard_then_resumes_without_training(write_suite, capsys, tmp_path):
    suite = write_suite(sizes=["micro", "tiny"])
    code, out, _ = run_cli(capsys, "run", str(suite))
    assert code == 0, out
    runs = Store().runs("unit")
    assert [r.status for r in runs] == ["done", "done"]
    assert all(r.backend == "sdpa" and r.n_params > 0 and r.environment["device"].startswith("cpu") for r in runs)
    dashboard = tmp_path / "results" / "dashboards" / "unit.html"
    page = dashboard.read_text()
    assert "Validation perplexity vs training FLOPs" in page and "Perplexity by token index" in page
    assert "plotly" in page.lower() and "<script src=" not in page  # self-contained: plotly.js is inlined
    finished = [r.finished_at for r in runs]

    code, out, _ = run_cli(capsys, "run", str(suite))
    assert code == 0 and "all 2 cells of suite unit are already done" in out
    assert [r.finished_at for r in Store().runs("unit")] == finished

    code, out, _ = run_cli(capsys, "results", "--suite", "unit")
    assert code == 0 and "attention@transformer" in out and "done" in out
    code, out, _ = run_cli(capsys, "query", "SELECT COUNT(*) AS n FROM position_loss")
    assert code == 0 and " 8 " in out


def test_mixers_lists_attention_with_backends(capsys):
    code, out, _ = run_cli(capsys, "mixers")
    assert code == 0 and "attention" in out and "sdpa" in out and "flash-attn" in out


def test_dry_run_prints_cells_without_training(write_suite, capsys):
    code, out, _ = run_cli(capsys, "run", str(write_suite()), "--dry-run")
    assert code == 0 and "dry run" in out and "micro" in out
    assert Store().runs() == []


def test_query_that_writes_is_refused(capsys):
    code, _, err = run_cli(capsys, "query", "DELETE FROM runs")
    assert code == 2 and "read-only" in err


def test_bad_suite_is_one_clear_line(write_suite, capsys):
    code, _, err = run_cli(capsys, "run", str(write_suite(models=["nope@transformer"])))
    assert code == 2 and "unknown mixer 'nope'" in err and "Traceback" not in err


@pytest.mark.parametrize("extra", [(), ("--dry-run",)])
def test_only_that_matches_no_cell_is_refused_with_the_cells_named(write_suite, capsys, extra):
    # A typo in --only once printed "all 0 cells ... are already done" and exited 0.
    suite = write_suite()
    code, out, err = run_cli(capsys, "run", str(suite), "--only", "atention*", *extra)
    assert code == 2 and "Traceback" not in err
    assert "--only 'atention*' matches no cell of suite unit" in err
    assert "attention@transformer/micro/T32" in err and "already done" not in out
    assert Store().runs() == []


def test_latency_only_that_matches_no_model_is_refused(write_suite, capsys):
    suite = write_suite(latency={"contexts": [16], "warmup": 0, "repeats": 1})
    code, _, err = run_cli(capsys, "latency", str(suite), "--only", "mamba*")
    assert code == 2 and "matches no latency model of suite unit" in err and "attention@transformer/micro" in err


def test_a_run_records_what_decides_its_cpu_rounding(write_suite, capsys):
    # "AMD EPYC" alone did not say why two machines differed in the last digits (issue 41).
    code, _, _ = run_cli(capsys, "run", str(write_suite()), "--launcher", "inline", "--train-only")
    (run,) = Store().runs()
    cpu = run.environment["cpu"]
    assert code == 0 and cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["blas"] and cpu["blas"] in torch.__config__.show()


def test_a_corpus_edited_after_its_cells_are_done_is_refused_not_skipped(tmp_path, small_corpus, capsys):
    # The run key names a local corpus by path: edited in place, a rerun once skipped every cell
    # and reported numbers of text that was no longer there.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_corpus.read_text())
    suite = tmp_path / "edited.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "edited",
                "data": {"source": str(corpus), "tokenizer": "bytes", "seq_len": 32},
                "models": ["attention@transformer"],
                "sizes": ["micro"],
                "train": {"tokens": 1024, "batch_tokens": 256, "lr": 3e-3, "device": "cpu"},
                "eval": {"max_val_sequences": 4},
            }
        )
    )
    run = ("run", str(suite), "--launcher", "inline", "--train-only")
    assert run_cli(capsys, *run)[0] == 0
    os.utime(corpus, ns=(1, 1))  # touched, not edited: still done, skipped
    code, out, _ = run_cli(capsys, *run)
    assert code == 0 and "already done" in out
    corpus.write_text(small_corpus.read_text() + "a line that was not there\n")
    code, out, err = run_cli(capsys, *run)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "attention@transformer/micro/T32 is done, trained on data.source" in err and str(corpus) in err
    assert [r.status for r in Store().runs()] == ["done"]  # nothing lost
    corpus.unlink()  # gone, not edited: nothing to mix the stored numbers with, still done
    code, out, _ = run_cli(capsys, *run)
    assert code == 0 and "already done" in out


def test_newer_database_is_refused(write_suite, capsys, tmp_path):
    Store(tmp_path / "future.db")
    con = sqlite3.connect(tmp_path / "future.db")
    con.execute("UPDATE schema_info SET version = ?", (SCHEMA_VERSION + 5,))
    con.commit()
    code, _, err = run_cli(capsys, "results", "--db", str(tmp_path / "future.db"))
    assert code == 2 and "newer than this mixbench" in err


def test_missing_data_file_fails_the_cell_with_its_path(write_suite, capsys, tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    code, out, _ = run_cli(
        capsys, "run", str(write_suite(data={"source": str(missing), "tokenizer": "bytes", "seq_len": 32}))
    )
    assert code == 1
    [run] = Store().runs()
    assert run.status == "failed" and "DataError" in run.error and str(missing) in run.error


def test_tokenizer_that_cannot_load_fails_the_cell(write_suite, capsys, small_corpus, tmp_path):
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{ not json")
    code, _, _ = run_cli(
        capsys, "run", str(write_suite(data={"source": str(small_corpus), "tokenizer": str(broken), "seq_len": 32}))
    )
    assert code == 1
    [run] = Store().runs()
    assert run.status == "failed" and str(broken) in run.error


def test_nan_loss_marks_the_run_failed_and_the_suite_goes_on(write_suite, capsys, monkeypatch):
    real_train = runner_module.train
    calls = []

    def diverge_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TrainingDiverged("loss became nan at step 3 of 8")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner_module, "train", diverge_first)
    code, out, _ = run_cli(capsys, "run", str(write_suite(sizes=["micro", "tiny"])))
    assert code == 1
    first, second = Store().runs()
    assert first.status == "failed" and first.error == "TrainingDiverged: loss became nan at step 3 of 8"
    assert second.status == "done"


def test_ctrl_c_marks_the_cell_interrupted_and_keeps_finished_ones(write_suite, capsys, monkeypatch):
    real_train = runner_module.train
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(runner_module, "train", interrupt_second)
    code, _, err = run_cli(capsys, "run", str(write_suite(sizes=["micro", "tiny"])))
    assert code == 130 and "rerun to resume" in err
    first, second = Store().runs()
    assert first.status == "done" and second.status == "failed" and "interrupted" in second.error


def test_killed_run_resumes_without_duplicate_rows(write_suite, tmp_path):
    """SIGKILL a real runner in the middle of its second cell; the rerun finishes only that cell."""
    suite = write_suite(sizes=["micro", "tiny"], train={"tokens": 12800, "batch_tokens": 256, "lr": 3e-3})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(suite)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db = tmp_path / "results" / "mixbench.db"
    deadline = time.monotonic() + 120
    statuses: list[str] = []
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                statuses = [r[0] for r in sqlite3.connect(db).execute("SELECT status FROM runs ORDER BY id")]
            except sqlite3.OperationalError:
                statuses = []
            if statuses == ["done", "running"]:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert statuses == ["done", "running"], f"runner state when killed: {statuses}"
    first_done_at = Store(db).runs()[0].finished_at

    summary = runner_module.SuiteRunner(
        __import__("harness.config.suite", fromlist=["load_suite"]).load_suite(suite),
        Store(db),
        cache_dir=tmp_path / "results" / "cache",
    ).run()
    assert summary.skipped == ["attention@transformer/micro/T32"]
    assert summary.done == ["attention@transformer/tiny/T32"]
    runs = Store(db).runs()
    assert [r.status for r in runs] == ["done", "done"] and runs[0].finished_at == first_done_at
    con = sqlite3.connect(db)
    assert (
        con.execute(
            "SELECT COUNT(*) FROM (SELECT run_id, step, name FROM metrics GROUP BY 1, 2, 3 HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        == 0
    )
    assert con.execute("SELECT COUNT(*) FROM position_loss").fetchone()[0] == 8


def test_two_runners_on_one_database_never_train_the_same_cell(write_suite, tmp_path):
    suite = write_suite(sizes=["micro", "tiny"], seq_lens=[16, 32])
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "harness", "run", str(suite), "--report-dir", str(tmp_path / "dash")]
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [
        {line.split()[1] for line in out.splitlines() if " run " in line and line.startswith("[")} for out in outputs
    ]
    assert not trained[0] & trained[1], f"both runners trained {trained[0] & trained[1]}"
    assert len(trained[0] | trained[1]) == 4
    runs = Store(tmp_path / "results" / "mixbench.db").runs()
    assert len(runs) == 4 and all(r.status == "done" for r in runs)
