"""Which training blocks each rank reads: one global order, cut into per-rank slices.

The global stream is the same whatever the world size: epoch ``e`` visits every block once,
in a permutation seeded by ``(seed, e)``, and global batches are consecutive runs of that
stream (a batch may straddle two epochs). Rank ``r`` of ``W`` takes the ``r``-th of ``W``
equal slices of each global batch, so the ranks together read exactly the single-process
batch. The state is two numbers, ``(epoch, position)`` in that global stream, so a run saved
with ``W`` ranks resumes with any other ``W'``: it goes on from the same place and every
sequence is still seen exactly once per epoch.

Only indices live here; the blocks themselves stay in the memmap (``PackedData.batch``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class BlockSampler:
    """Deterministic per-rank slices of global batches over ``n_blocks`` training blocks."""

    def __init__(self, n_blocks: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if n_blocks <= 0:
            raise ValueError(f"the sampler needs training blocks, got {n_blocks}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        if batch_size % world_size:
            raise ValueError(
                f"the batch of {batch_size} sequences does not split evenly over {world_size} ranks; "
                f"choose train.batch_tokens so that batch_tokens / seq_len is a multiple of {world_size}"
            )
        self.n_blocks, self.batch_size = n_blocks, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    @property
    def per_rank(self) -> int:
        """Sequences this rank reads per global batch."""
        return self.batch_size // self.world_size

    def _permutation(self, epoch: int) -> np.ndarray:
        # seeded by (seed, epoch) alone, so any epoch's order can be rebuilt on resume
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_blocks)

    def global_batch(self) -> np.ndarray:
        """The next global batch (every rank computes the same one) and advance past it."""
        picked, need = [], self.batch_size
        while need:
            take = min(need, self.n_blocks - self.position)
            picked.append(self._order[self.position : self.position + take])
            self.position += take
            need -= take
            if self.position == self.n_blocks:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return np.concatenate(picked)

    def next_batch(self) -> np.ndarray:
        """This rank's slice of the next global batch."""
        batch = self.global_batch()
        return batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_blocks": self.n_blocks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where a sampler (of any world size) over the same blocks and seed stopped."""
        if (state["n_blocks"], state["seed"]) != (self.n_blocks, self.seed):
            raise ValueError(
                f"sampler state is for {state['n_blocks']} blocks with seed {state['seed']}, "
                f"but this run has {self.n_blocks} blocks with seed {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
