"""Make a store with an old mixbench's store.py and dump it as SQL text."""

import importlib.util
import sqlite3
import sys
from pathlib import Path

src, out = sys.argv[1], Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("old_store", src)
m = importlib.util.module_from_spec(spec)
sys.modules["old_store"] = m
spec.loader.exec_module(m)
db = out.with_suffix(".db")
db.unlink(missing_ok=True)
store = m.Store(db)


def rec(k: str, size: str):
    return m.RunRecord(
        run_key=k,
        suite="legacy",
        mixer="attention",
        backbone="transformer",
        size=size,
        seq_len=32,
        dataset="builtin:kjv",
        config={"size": size, "lr": 0.003},
    )


store.claim(rec("a" * 16, "micro"))
kw = {} if "checkpoint_path: str | None = None" not in Path(src).read_text() else {"checkpoint_path": "/ckpt/aaaa"}
store.finish(
    "a" * 16,
    metrics=[(1, "train/loss", 3.5), (2, "train/loss", 3.25), (2, "val/ppl", 21.5)],
    position_loss=[(0, 0, 16, 3.4), (1, 16, 32, 3.1)],
    n_params=1234,
    n_params_non_embedding=1000,
    backend="sdpa",
    environment={"device": "cpu", "torch": "2.13.0"},
    **kw,
)
store.claim(rec("b" * 16, "tiny"))
store.fail("b" * 16, "TrainingDiverged: loss became nan at step 3 of 10", {"device": "cpu"})
store.add_latency(
    [
        dict(
            suite="legacy",
            mixer="attention",
            backbone="transformer",
            size="micro",
            mode=mode,
            context=64,
            batch=1,
            dtype="float32",
            device="cpu",
            backend="sdpa",
            status="ok",
            median_ms=1.5,
            p20_ms=1.4,
            p80_ms=1.7,
            tokens_per_s=4000.0,
            peak_memory_bytes=None,
            environment={"device": "cpu"},
        )
        for mode in ("prefill", "decode")
    ]
)
store.engine.dispose()
con = sqlite3.connect(db)
con.execute("PRAGMA journal_mode=DELETE")
out.write_text("\n".join(con.iterdump()) + "\n")
con.close()
db.unlink()
