"""The train/validation split of a block stream: each block's side fixed by its index alone.

Block ``i`` is validation when ``splitmix64(i) < val_fraction × 2**64``. The rule looks at no
other block, so a longer stream keeps every earlier block on the side it was on: a cache
grows by appending, and a run that reads the first ``n`` blocks sees the same split whatever
the cache holds beyond them. Both sides keep the source order. The hash is machine- and
numpy-independent integer arithmetic; ``val_fraction`` 0 puts every block in training (the
validation set then comes from elsewhere), 1 every block in validation.
"""

from __future__ import annotations

import numpy as np

CHUNK = 1 << 20  # block indices hashed at a time when counting


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def is_val(start: int, count: int, val_fraction: float) -> np.ndarray:
    """Whether each of blocks ``start .. start+count-1`` is a validation block."""
    if val_fraction <= 0.0:
        return np.zeros(count, dtype=bool)
    if val_fraction >= 1.0:
        return np.ones(count, dtype=bool)
    threshold = np.uint64(min(int(val_fraction * 2.0**64), 2**64 - 1))
    return splitmix64(np.arange(start, start + count, dtype=np.uint64)) < threshold


def val_block_mask(n_blocks: int, val_fraction: float) -> np.ndarray:
    """Which of the first ``n_blocks`` blocks are validation."""
    return is_val(0, n_blocks, val_fraction)


def count_val(n_blocks: int, val_fraction: float) -> int:
    """Validation blocks among the first ``n_blocks``."""
    return sum(int(is_val(s, min(CHUNK, n_blocks - s), val_fraction).sum()) for s in range(0, n_blocks, CHUNK))


def blocks_needed(train_blocks: int, val_blocks: int, val_fraction: float) -> int:
    """The shortest stream prefix (in blocks) holding ``train_blocks`` train and ``val_blocks`` val blocks."""
    if train_blocks > 0 and val_fraction >= 1.0 or val_blocks > 0 and val_fraction <= 0.0:
        raise ValueError(f"val_fraction {val_fraction} cannot give {train_blocks} train and {val_blocks} val blocks")
    n_train = n_val = start = 0
    while n_train < train_blocks or n_val < val_blocks:
        mask = is_val(start, CHUNK, val_fraction)
        train_seen, val_seen = np.cumsum(~mask), np.cumsum(mask)
        done = np.flatnonzero((n_train + train_seen >= train_blocks) & (n_val + val_seen >= val_blocks))
        if done.size:
            return start + int(done[0]) + 1
        n_train, n_val, start = n_train + int(train_seen[-1]), n_val + int(val_seen[-1]), start + CHUNK
    return start
