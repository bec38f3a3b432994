"""The per-rank sampler: disjoint slices that together make the single-process batch, resumable at any world size."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine.sampler import BlockSampler


def rank_batches(n_blocks: int, batch: int, world: int, steps: int, state=None) -> list[list[np.ndarray]]:
    """``steps`` global batches as each rank of ``world`` sees them (optionally resumed from ``state``)."""
    samplers = [BlockSampler(n_blocks, batch, rank=r, world_size=world, seed=7) for r in range(world)]
    for s in samplers:
        if state is not None:
            s.load_state_dict(state)
    return [[s.next_batch() for s in samplers] for _ in range(steps)]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_ranks_split_every_global_batch_disjointly_into_the_single_process_batch(world):
    single = rank_batches(40, 8, 1, 12)
    split = rank_batches(40, 8, world, 12)
    for (whole,), parts in zip(single, split):
        assert all(len(p) == 8 // world for p in parts)
        joined = np.concatenate(parts)
        assert len(set(joined.tolist())) == 8, "the ranks' slices overlap"
        assert joined.tolist() == whole.tolist()


def test_each_epoch_visits_every_block_once_in_a_new_order():
    batches = [b[0] for b in rank_batches(24, 6, 1, 8)]  # two epochs of 4 batches
    first, second = np.concatenate(batches[:4]), np.concatenate(batches[4:])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(24))
    assert first.tolist() != second.tolist()


@pytest.mark.parametrize(("before", "after"), [(1, 1), (2, 1), (1, 4), (4, 2)])
def test_resume_with_another_world_size_sees_every_sequence_once_per_epoch(before, after):
    n_blocks, batch = 30, 4  # batches straddle epochs: 30 is not a multiple of 4
    samplers = [BlockSampler(n_blocks, batch, rank=r, world_size=before, seed=7) for r in range(before)]
    seen = [np.concatenate([s.next_batch() for s in samplers]) for _ in range(5)]
    state = samplers[0].state_dict()
    assert all(s.state_dict() == state for s in samplers), "ranks disagree on the position"
    assert state["position"] == 20 and state["epoch"] == 0
    seen += [np.concatenate(parts) for parts in rank_batches(n_blocks, batch, after, 10, state)]
    stream = np.concatenate(seen)
    uninterrupted = np.concatenate([b[0] for b in rank_batches(n_blocks, batch, 1, 15)])
    assert stream.tolist() == uninterrupted.tolist()
    assert sorted(stream[:30].tolist()) == sorted(stream[30:60].tolist()) == list(range(30))


def test_state_dict_round_trips_and_refuses_other_data():
    s = BlockSampler(10, 4, seed=3)
    for _ in range(4):
        s.next_batch()
    t = BlockSampler(10, 4, seed=3)
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict() == {"epoch": 1, "position": 6, "seed": 3, "n_blocks": 10}
    assert t.next_batch().tolist() == s.next_batch().tolist()
    with pytest.raises(ValueError, match="sampler state is for 10 blocks with seed 3, but this run has 12 blocks"):
        BlockSampler(12, 4, seed=3).load_state_dict(s.state_dict())


def test_bad_world_sizes_are_one_clear_line():
    with pytest.raises(ValueError, match="batch of 6 sequences does not split evenly over 4 ranks"):
        BlockSampler(10, 6, rank=0, world_size=4)
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        BlockSampler(10, 4, rank=2, world_size=2)
