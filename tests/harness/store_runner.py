"""A runner whose cells cost nothing: the store's side of ``mixbench run``, for the stress test.

``python store_runner.py URL N_CELLS GO_FILE`` imports the store, says it is ready (a file
``GO_FILE.ready.<pid>``), waits until GO_FILE exists, so that every runner opens the fresh
database at the same moment, then claims every cell it can and finishes each with a few rows,
as a real runner does. It prints the keys it ran, one a line.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.store.database import RunRecord, Store


def main(url: str, n_cells: int, go: Path) -> None:
    Path(f"{go}.ready.{os.getpid()}").touch()
    while not go.exists():
        time.sleep(0.001)
    store = Store(url)
    for i in range(n_cells):
        key = f"cell{i:03d}"
        record = RunRecord(
            run_key=key,
            suite="stress",
            mixer="attention",
            backbone="transformer",
            size="micro",
            seq_len=32,
            dataset="none",
            config={"i": i},
        )
        if store.claim(record):
            store.finish(
                key,
                metrics=[(1, "train/loss", float(i)), (1, "val/ppl", 2.0)],
                position_loss=[(0, 0, 32, 1.0)],
                n_params=1,
                n_params_non_embedding=1,
                backend="none",
                environment={},
            )
            print(key, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
