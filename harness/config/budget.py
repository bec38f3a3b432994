"""What a suite asks of its data: each cell's training tokens and validation sequences.

A cell's budget follows from its recipe and its model's size (``tokens: chinchilla`` is
``tokens_per_param`` × parameters), so it is computed on a model built on the meta device:
no memory, no data. The largest need among the cells sharing one cache is what gets
prepared, once; each cell then reads its own prefix of it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch

from harness.config.suite import Cell
from harness.data import DataNeed
from harness.engine.train import plan_training
from models import ModelSpec, build


def cell_need(cell: Cell, vocab_size: int) -> DataNeed:
    """The training tokens ``cell`` will see and the validation sequences it scores."""
    spec = ModelSpec.parse(cell.arch, cell.size, vocab_size, mixer_overrides=dict(cell.mixer_settings))
    with torch.device("meta"):  # a 1.3b model costs nothing to count
        n_params = build(spec).num_params()
    plan = plan_training(cell.train, n_params, cell.seq_len)
    return DataNeed(train_tokens=plan.tokens, val_sequences=cell.eval.max_val_sequences)


def largest_needs(needs: Iterable[tuple[Hashable, DataNeed]]) -> dict:
    """Per key (a cache's data config), the union of the needs of the cells that read it."""
    out: dict = {}
    for key, need in needs:
        out[key] = need if key not in out else out[key].union(need)
    return out
