"""Noisy recall: MQAR with distractor tokens between the pairs and around the queries (MAD's noisy recall).

Vocabulary: noise tokens are ``1 .. noise_vocab``; the rest splits into keys then values as
in MQAR (token 0 is unused). A sequence::

    n k1 v1 n n k2 v2 k3 v3 n ... | n n k3 n n n k1 n n ...
    '--- P pairs + M noise tokens ---' '--- queries, noise between ---'

``M = round(noise_per_pair * P)`` noise tokens are scattered between the pairs (never inside
one: a key is always followed by its value), at random. The query region is laid out as in
MQAR but filled with random noise tokens instead of blanks. Scored positions are the query
keys, whose next token must be their value. The model must learn to skip what it sees in
the noise, which a fixed-size state can find harder than attention does.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.tasks.base import IGNORE_INDEX, place_queries, register_task, sample_distinct
from harness.tasks.mqar import MQAR


@register_task("noisy_recall")
class NoisyRecall(MQAR):
    """MQAR with ``noise_per_pair`` distractors per pair in the context and noise around queries."""

    noise_per_pair: float = Field(1.0, ge=0)
    noise_vocab: int = Field(16, ge=1)
    vocab_size: int = Field(8192, ge=4)

    @property
    def reserved_tokens(self) -> int:
        return 1 + self.noise_vocab  # the blank (never used here) and the noise tokens

    @property
    def num_noise(self) -> int:
        return round(self.noise_per_pair * self.num_kv_pairs)

    def generate(self, seq_len: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p, m = self.num_kv_pairs, self.num_noise
        first_key = 1 + self.noise_vocab
        keys = sample_distinct(rng, n, p, first_key, first_key + self.num_keys)
        values = sample_distinct(rng, n, p, first_key + self.num_keys, self.vocab_size)
        inputs = rng.integers(1, 1 + self.noise_vocab, size=(n, seq_len), dtype=np.int64)  # noise everywhere first
        targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
        # The context is P + M items in random order: a pair takes two tokens, a noise token one.
        is_pair = rng.random((n, p + m)).argsort(axis=1) < p
        width = np.where(is_pair, 2, 1)
        start = np.cumsum(width, axis=1) - width
        pair_pos = start[is_pair].reshape(n, p)  # row-major: each row's pairs in order
        rows = np.arange(n)[:, None]
        inputs[rows, pair_pos] = keys
        inputs[rows, pair_pos + 1] = values
        place_queries(inputs, targets, keys, values, 2 * p + m, self.queries, rng)
        return inputs, targets
