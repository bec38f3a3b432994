"""``mixbench watch``: frames from a store that a running cell writes, on a fake clock."""

from __future__ import annotations

import io
import re
import threading
import time
from datetime import datetime, timedelta, timezone

from rich.console import Console
from sqlalchemy import update

from harness import runner as runner_module
from harness.cli import main
from harness.config.suite import load_suite
from harness.monitor.live import LiveCurve
from harness.monitor.watch import eta_seconds, frames
from harness.store.database import Run, RunRecord, Store


def text(table) -> str:
    console = Console(file=io.StringIO(), width=250, record=True)
    console.print(table)
    return console.export_text()


def row(frame: str, needle: str) -> list[str]:
    (line,) = [ln for ln in frame.splitlines() if needle in ln]
    return [c.strip() for c in line.split("│")[1:-1]]


def test_watch_follows_a_running_cell_log_by_log(db, write_suite, tmp_path, monkeypatch):
    """A real runner trains in a thread; each of its logs waits for the watch to sleep once (the fake clock's tick).
    On SQLite and on the PostgreSQL server: the store a laptop watches a cluster through."""
    monkeypatch.chdir(tmp_path)
    tick, written = threading.Semaphore(0), threading.Event()

    class Gated(LiveCurve):
        def __call__(self, *args, **kwargs) -> None:
            assert tick.acquire(timeout=60), "the watch stopped ticking"
            super().__call__(*args, **kwargs)
            written.set()

    monkeypatch.setattr(runner_module, "LiveCurve", Gated)
    suite = load_suite(
        write_suite(train={"tokens": 8 * 256, "batch_tokens": 256, "lr": 3e-3, "log_every": 2, "device": "cpu"})
    )
    store = Store(db)
    # a second cell whose runner on another machine went silent half an hour ago
    store.claim(RunRecord("dead", "unit", "ttt_linear", "transformer", "micro", 32, "kjv", {}))
    with store.session() as s:
        s.execute(
            update(Run)
            .where(Run.run_key == "dead")
            .values(
                claimed_by="gpu-node-7:4242",
                job_id="81234",
                heartbeat_at=datetime.now(timezone.utc) - timedelta(minutes=30),
            )
        )
    runner = runner_module.SuiteRunner(
        suite,
        store,
        cache_dir=tmp_path / "cache",
        checkpoint_dir=tmp_path / "ckpt",
        console=Console(file=io.StringIO()),
    )
    trainer = threading.Thread(target=runner.run)
    clock = [datetime.now(timezone.utc)]

    def sleep(seconds: float) -> None:
        clock[0] += timedelta(seconds=seconds)
        written.clear()
        tick.release()  # let the cell write its next log, and wait until it has (or has finished)
        while not written.wait(0.05) and trainer.is_alive():
            pass

    shown = []
    trainer.start()
    try:
        deadline = time.monotonic() + 60  # the first frame shows the claimed cell before its first log
        while store.status(suite.cells()[0].run_key) != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        for frame in frames(store, "unit", 5.0, now=lambda: clock[0], sleep=sleep):
            shown.append(text(frame))
            if not trainer.is_alive():
                break
    finally:
        for _ in range(10):
            tick.release()
        trainer.join(60)
    cells = [row(f, "attention@transformer/micro/T32") for f in shown]
    steps = [c[2] for c in cells]
    assert steps[:6] == ["-", "1/8", "3/8", "5/8", "7/8", "8/8"], steps
    assert [c[1] for c in cells[1:5]] == ["running"] * 4 and cells[-1][1] == "done"
    assert all(re.fullmatch(r"\d+\.\d{4}", c[3]) for c in cells[1:]), "the latest training loss"
    assert all(re.fullmatch(r"[\d,]+", c[4]) for c in cells[1:]), "tokens/s"
    assert all(re.fullmatch(r"00:00:\d\d", c[6]) for c in cells[1:5]) and cells[-1][6] == "-", "ETA while running"
    assert cells[1][8] != "-", "the host that runs it"
    dead = row(shown[-1], "ttt_linear@transformer/micro/T32")
    assert dead[1] == "running" and dead[7:9] == ["81234", "gpu-node-7"]
    assert re.fullmatch(r"no heartbeat for 3\d min", dead[9]), dead[9]
    assert f"{clock[0]:%Y-%m-%d %H:%M:%S}" in shown[-1], "the frame is stamped with the (fake) clock"


def test_eta_is_steps_left_at_the_recent_rate():
    assert eta_seconds(step=100, steps=1100, tokens=100 * 4096, tokens_per_s=2048) == 1000 * 2
    assert eta_seconds(step=0, steps=10, tokens=0, tokens_per_s=1.0) is None


def test_watch_once_from_the_cli_and_a_missing_suite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["watch", "nothing-here", "--once", "--db", str(tmp_path / "x.db")]) == 0
    assert "suite nothing-here" in capsys.readouterr().out
