"""Selective copying (the Mamba paper's and MAD's task): find the scattered tokens, then copy them in order.

Vocabulary: token 0 is a blank, token 1 the copy marker, content tokens ``2 .. vocab_size-1``.
A sequence of ``seq_len`` tokens::

    0 0 a 0 0 0 b 0 c 0 0 ... 0 | COPY a b
    '--- arena: seq_len - num_tokens positions ---' '--- copy: the model writes a b c ---'

``num_tokens`` content tokens (drawn with replacement) sit at random positions of the arena,
blanks elsewhere. Then the copy marker, then the content tokens again, in order (teacher
forced: the model sees the tokens copied so far). The model is scored at the marker and at
every copied token: its next token must be the next content token in arena order. Unlike
recall, the positions to remember are not announced by a key: the model must select by
content, which is what the Mamba paper introduced it to test (input-dependent gating).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from harness.tasks.base import IGNORE_INDEX, Task, TaskParamError, register_task, sample_distinct

BLANK, COPY = 0, 1


@register_task("selective_copy")
class SelectiveCopy(Task):
    """Copy the ``num_tokens`` non-blank tokens of the arena, in order, after the copy marker."""

    difficulty = "num_tokens"

    num_tokens: int = Field(16, ge=1)
    vocab_size: int = Field(64, ge=3)

    def check(self, seq_len: int) -> None:
        if 2 * self.num_tokens > seq_len:
            raise TaskParamError(
                "num_tokens",
                f"{self.num_tokens} tokens need {2 * self.num_tokens} positions (an arena at least as long as "
                f"the copy) but seq_len is {seq_len}",
            )

    def generate(self, seq_len: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        k = self.num_tokens
        arena = seq_len - k
        content = rng.integers(2, self.vocab_size, size=(n, k), dtype=np.int64)
        where = np.sort(sample_distinct(rng, n, k, 0, arena), axis=1)
        inputs = np.full((n, seq_len), BLANK, dtype=np.int64)
        targets = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
        rows = np.arange(n)[:, None]
        inputs[rows, where] = content
        inputs[:, arena] = COPY
        inputs[:, arena + 1 :] = content[:, :-1]
        targets[:, arena:] = content
        return inputs, targets
