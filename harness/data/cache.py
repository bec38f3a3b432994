"""One token cache on disk: a block stream that only ever grows by appending, and its state.

``cache_dir/<key>/`` holds ``train.bin`` and ``val.bin`` (the stream's blocks of
``seq_len + 1`` tokens, each on the side ``harness.data.split`` gives its index, in source
order) and ``state.json``, which says how much of them is committed: documents read,
blocks on each side, the tokens after the last whole block (the *tail*, carried into the
next append) and whether the source is exhausted. The key hashes what the blocks depend on
(source identity, tokenizer content, seq_len, split rule, field, split; never a budget or a
worker count), so every suite and cell with that source, tokenizer and seq_len shares one
cache and reads a prefix of it.

A commit is: append whole blocks to the two files, fsync them, then atomically replace
``state.json``. Bytes past what the state names are an append that did not commit (a kill,
a full disk); they are cut off before the next append and never read, because readers map
only the committed blocks. A folder without a readable state, or whose files are shorter
than its state says, is broken and is rebuilt. Preparers take ``<key>.lock`` (flock), so two
processes never append at once; readers need no lock.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from harness.common.atomic_file import write_text_atomic
from harness.data.split import is_val

FORMAT_VERSION = 2  # bump when the packing or the cache layout changes
SIDES = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """2 bytes a token up to a 65,536-token vocabulary, else 4."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_key(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()[:24]


@contextmanager
def preparing(cache_dir: Path, key: str) -> Iterator[None]:
    """Hold the cache's preparation lock (released by the OS if the process dies).

    Runners started together on a cold cache (``--launcher local`` runs cells in parallel)
    queue here: one prepares, the others say that they wait, then find the cache ready.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{key}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting: another process is preparing the data cache {key}", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TokenCache:
    """The committed state of one cache folder, and the only code that writes its files."""

    def __init__(self, folder: Path, state: dict) -> None:
        self.folder, self.state = folder, state
        self.dtype = np.dtype(state["dtype"])
        self.width = state["seq_len"] + 1

    # ---------------------------------------------------------------- reading

    @classmethod
    def read(cls, folder: Path, key: str) -> "TokenCache | None":
        """The cache in ``folder`` if it is whole and of this format and key, else None."""
        try:
            state = json.loads((folder / "state.json").read_text())
            if state.get("format") != FORMAT_VERSION or state.get("cache_key") != key:
                return None
            cache = cls(folder, state)
            for side in SIDES:
                if (folder / f"{side}.bin").stat().st_size < cache.blocks(side) * cache.width * cache.dtype.itemsize:
                    return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cache

    @classmethod
    def open(cls, folder: Path, key: str, fields: dict, about: dict) -> "TokenCache":
        """The cache in ``folder``, or a new empty one there (a broken one is removed first).

        Call with the preparation lock held. ``about`` (source label, tokenizer name, vocab
        size, eos id) is recorded for people reading ``state.json``.
        """
        cache = cls.read(folder, key)
        if cache is not None:
            return cache
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for side in SIDES:
            (folder / f"{side}.bin").touch()
        state = {
            "format": FORMAT_VERSION,
            "cache_key": key,
            "key_fields": fields,
            **about,
            "dtype": token_dtype(about["vocab_size"]).name,
            "seq_len": fields["seq_len"],
            "val_fraction": fields["val_fraction"],
            "docs": 0,
            "tokens": 0,
            "train_blocks": 0,
            "val_blocks": 0,
            "tail": "",
            "exhausted": False,
            "blocks": "non-overlapping blocks of seq_len+1 tokens; the tail after the last whole block is carried",
        }
        cache = cls(folder, state)
        cache._commit()
        return cache

    def blocks(self, side: str) -> int:
        return int(self.state[f"{side}_blocks"])

    @property
    def n_blocks(self) -> int:
        return self.blocks("train") + self.blocks("val")

    @property
    def docs(self) -> int:
        return int(self.state["docs"])

    @property
    def tokens(self) -> int:
        """Stream tokens committed: whole blocks plus the tail."""
        return int(self.state["tokens"])

    @property
    def exhausted(self) -> bool:
        return bool(self.state["exhausted"])

    def array(self, side: str) -> np.ndarray:
        """The committed blocks of one side as a read-only memmap (never read into memory)."""
        n = self.blocks(side)
        if n == 0:
            return np.zeros((0, self.width), dtype=self.dtype)
        return np.memmap(self.folder / f"{side}.bin", dtype=self.dtype, mode="r", shape=(n, self.width))

    # ---------------------------------------------------------------- writing (lock held)

    def _tail(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.state["tail"]), dtype=self.dtype)

    def _commit(self) -> None:
        write_text_atomic(self.folder / "state.json", json.dumps(self.state, indent=1) + "\n", durable=True)

    def drop_uncommitted(self) -> None:
        """Cut both files back to the committed blocks (an append that did not commit)."""
        for side in SIDES:
            path = self.folder / f"{side}.bin"
            size = self.blocks(side) * self.width * self.dtype.itemsize
            if path.stat().st_size != size:
                os.truncate(path, size)

    def append(self, tokens: np.ndarray, n_docs: int) -> None:
        """Append a shard's tokens (``n_docs`` documents) to the stream and commit."""
        stream = np.concatenate([self._tail(), tokens.astype(self.dtype, copy=False)])
        n_new = len(stream) // self.width
        blocks = stream[: n_new * self.width].reshape(n_new, self.width)
        mask = is_val(self.n_blocks, n_new, self.state["val_fraction"])
        for side, rows in (("train", blocks[~mask]), ("val", blocks[mask])):
            if len(rows):
                with open(self.folder / f"{side}.bin", "ab") as f:
                    f.write(rows.tobytes())
                    f.flush()
                    os.fsync(f.fileno())
        self.state.update(
            docs=self.docs + n_docs,
            tokens=self.tokens + len(tokens),
            train_blocks=self.blocks("train") + int((~mask).sum()),
            val_blocks=self.blocks("val") + int(mask.sum()),
            tail=base64.b64encode(stream[n_new * self.width :].tobytes()).decode("ascii"),
        )
        self._commit()

    def finish(self) -> None:
        """The source is exhausted: nothing more will ever be appended."""
        self.state["exhausted"] = True
        self._commit()
