"""Multi-query associative recall (MQAR), the Zoology task: remember key->value pairs, answer queries.

Vocabulary: token 0 is a blank filler; keys are ``1 .. K`` and values ``K+1 .. vocab_size-1``
with ``K = (vocab_size - 1) // 2``, so no token is both.

A sequence of ``seq_len`` tokens::

    k1 v1 k2 v2 ... kP vP | 0 0 k2 0 0 0 0 0 k1 0 0 0 ...
    '--- P pairs -------' '--- queries in random two-token slots, blanks elsewhere ---'

Keys are distinct within a sequence and so are values. ``num_queries`` of the keys (all of
them by default, as in Zoology's MQAR) are asked for again after the pairs, each at the start
of a random two-token slot of the remaining positions, in random order. The model is scored
only at each query key: its next token must be the value paired with that key. As in Zoology,
the answer is not written after the query (that would let the last queries be answered by
elimination; see ``place_queries``).
Keys, values, pairings and query slots are drawn afresh for every sequence, so nothing can
be memorised across sequences; the only way to answer is to recall from the context.
Queries are placed uniformly (Zoology biases them towards short gaps with a power law).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.tasks.base import IGNORE_INDEX, Task, TaskParamError, place_queries, register_task, sample_distinct

BLANK = 0


@register_task("mqar")
class MQAR(Task):
    """Multi-query associative recall: ``num_kv_pairs`` pairs, then queries of their keys."""

    difficulty = "num_kv_pairs"

    num_kv_pairs: int = Field(8, ge=1)
    num_queries: int | None = Field(None, ge=1)  # None: every key is asked for once
    vocab_size: int = Field(8192, ge=3)

    @property
    def queries(self) -> int:
        return self.num_kv_pairs if self.num_queries is None else self.num_queries

    # Tokens that are neither keys nor values: the blank (a variant adds its noise tokens).
    @property
    def reserved_tokens(self) -> int:
        return 1

    # Context tokens that belong to no pair (a variant scatters noise there).
    @property
    def num_noise(self) -> int:
        return 0

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - self.reserved_tokens) // 2

    def check(self, seq_len: int) -> None:
        p, q, m = self.num_kv_pairs, self.queries, self.num_noise
        if q > p:
            raise TaskParamError("num_queries", f"{q} queries but only {p} pairs: each query asks for a distinct key")
        if self.num_keys < p:
            raise TaskParamError(
                "vocab_size",
                f"{self.vocab_size} gives {self.num_keys} keys after {self.reserved_tokens} reserved token(s), too "
                f"few for {p} distinct pairs; use vocab_size >= {2 * p + self.reserved_tokens}",
            )
        need = 2 * p + m + 2 * q
        if need > seq_len:
            noise = f", {m} noise tokens" if m else ""
            why = f"{p} pairs{noise} and {q} queries need {need} tokens (2 per pair, 2 per query)"
            raise TaskParamError("num_kv_pairs", f"{why} but seq_len is {seq_len}")

    def generate(self, seq_len: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        p = self.num_kv_pairs
        keys = sample_distinct(rng, n, p, 1, 1 + self.num_keys)
        values = sample_distinct(rng, n, p, 1 + self.num_keys, self.vocab_size)
        inputs = np.full((n, seq_len), BLANK, dtype=np.int64)
        targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
        inputs[:, 0 : 2 * p : 2] = keys
        inputs[:, 1 : 2 * p : 2] = values
        place_queries(inputs, targets, keys, values, 2 * p, self.queries, rng)
        return inputs, targets
