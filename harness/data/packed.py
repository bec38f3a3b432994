"""Reading: a run's training and validation blocks, prepared first if the cache lacks them.

A run says what it needs (``DataNeed``: its training tokens and validation sequences); the
runner may ask the cache to prepare more (the largest need of the suite), so that one
preparation serves every cell. A run then reads the prefix it needs: the first
``ceil(train_tokens / seq_len)`` training blocks and the first ``val_sequences`` validation
blocks, the same blocks whatever else the cache holds. ``data.max_tokens`` overrides the
need: the run reads the blocks within the stream's first ``max_tokens`` tokens. A source
smaller than the need gives all it has (training then repeats epochs).

Validation is, by default, the hashed blocks of the training stream (``harness.data.split``).
With ``val_source`` / ``val_split`` it is a stream of its own (its own cache, every block
validation) and the training stream keeps every block.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data.cache import FORMAT_VERSION, TokenCache, cache_key, preparing, token_dtype
from harness.data.common import DataError
from harness.data.prepare import extend
from harness.data.source import DataConfig, Source, check_split, resolve_source
from harness.data.split import blocks_needed, count_val
from harness.data.tokenizer import TextTokenizer, load_tokenizer


@dataclass(frozen=True)
class DataNeed:
    """What a run reads: its training tokens and its validation sequences."""

    train_tokens: int
    val_sequences: int

    def train_blocks(self, seq_len: int) -> int:
        return math.ceil(self.train_tokens / seq_len)  # a block gives seq_len target tokens

    def union(self, other: "DataNeed") -> "DataNeed":
        return DataNeed(max(self.train_tokens, other.train_tokens), max(self.val_sequences, other.val_sequences))


@dataclass
class PackedData:
    train: np.ndarray  # read-only memmap (n_train_blocks, seq_len + 1)
    val: np.ndarray  # read-only memmap (n_val_blocks, seq_len + 1)
    vocab_size: int
    tokenizer: TextTokenizer
    cache_key: str

    def batch(self, split: str, indices):
        """Blocks ``indices`` of ``split`` as (inputs, targets), int64, each (len, seq_len)."""
        import torch  # here, not at the top: the preparation workers import this package

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        blocks = self.train if split == "train" else self.val
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = torch.from_numpy(blocks[idx].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def _val_fraction(cfg: DataConfig) -> float:
    """The training stream's split rule: hashed blocks, or none held out when validation is separate."""
    return 0.0 if cfg.separate_val else cfg.val_fraction


def targets(cfg: DataConfig, need: DataNeed | None) -> tuple[int | None, int | None]:
    """Blocks to prepare of the training stream and of a separate validation stream (None: all)."""
    width = cfg.seq_len + 1
    val = None if need is None or cfg.separate_val is None else need.val_sequences
    if cfg.max_tokens is not None:
        return cfg.max_tokens // width, val
    if need is None:
        return None, val
    held_out = 0 if cfg.separate_val else need.val_sequences
    return blocks_needed(need.train_blocks(cfg.seq_len), held_out, _val_fraction(cfg)), val


def disk_bytes(cfg: DataConfig, need: DataNeed, vocab_size: int) -> tuple[int, int]:
    """(tokens, bytes) the caches of ``cfg`` hold once ``need`` is prepared (to a shard or so)."""
    tokens = sum(n * (cfg.seq_len + 1) for n in targets(cfg, need) if n is not None)
    return tokens, tokens * token_dtype(vocab_size).itemsize


def _prepared(
    cfg: DataConfig,
    src: Source,
    split: str,
    val_fraction: float,
    tokenizer: TextTokenizer,
    target: int | None,
    cache_dir: Path,
) -> tuple[str, TokenCache]:
    """The cache of (source, split, tokenizer, seq_len, split rule), holding at least ``target`` blocks."""
    fields = {
        "format": FORMAT_VERSION,
        "source": src.identity,
        "split": split,
        "text_field": cfg.text_field,
        "tokenizer": tokenizer.fingerprint(),
        "seq_len": cfg.seq_len,
        "val_fraction": val_fraction,
    }
    key = cache_key(fields)
    folder = cache_dir / key

    def enough(cache: TokenCache | None) -> bool:
        return cache is not None and (cache.exhausted or (target is not None and cache.n_blocks >= target))

    cache = TokenCache.read(folder, key)
    if enough(cache):
        return key, cache
    with preparing(cache_dir / ".locks", key):
        about = {
            "source": src.label,
            "split": split,
            "tokenizer": tokenizer.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        }
        cache = TokenCache.open(folder, key, fields, about)
        try:
            extend(cache, src, split, cfg.text_field, tokenizer, target, cfg.n_workers, cache_dir / ".hf-datasets")
        except BaseException:
            if cache.docs == 0:  # nothing committed: leave no folder behind
                shutil.rmtree(folder, ignore_errors=True)
            raise
    return key, cache


def load_packed(
    cfg: DataConfig, cache_dir: Path, need: DataNeed | None = None, prepare: DataNeed | None = None
) -> PackedData:
    """The blocks a run with ``need`` reads (None: the whole source), preparing ``prepare`` (default: ``need``)."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    if cfg.vocab_size is not None and cfg.vocab_size != tokenizer.vocab_size:
        raise DataError(
            f"data.vocab_size is {cfg.vocab_size} but tokenizer {cfg.tokenizer!r} has {tokenizer.vocab_size}"
        )
    cache_dir = Path(cache_dir).expanduser()
    src = resolve_source(cfg.source)
    check_split(src, cfg.split, "data.split")
    separate = cfg.separate_val
    if separate is not None:
        val_src = resolve_source(separate[0])
        check_split(val_src, separate[1], "data.val_split")
    main_target, val_target = targets(cfg, prepare or need)
    fraction = _val_fraction(cfg)
    key, main = _prepared(cfg, src, cfg.split, fraction, tokenizer, main_target, cache_dir)

    if cfg.max_tokens is not None:  # the blocks within the first max_tokens tokens
        n_blocks = min(cfg.max_tokens // (cfg.seq_len + 1), main.n_blocks)
        n_val = count_val(n_blocks, fraction)
        n_train = n_blocks - n_val
    elif need is None:
        n_train, n_val = main.blocks("train"), main.blocks("val")
    else:
        n_train, n_val = need.train_blocks(cfg.seq_len), need.val_sequences
    train, val = main.array("train")[:n_train], main.array("val")[:n_val]
    if separate is not None:
        _, val_cache = _prepared(cfg, val_src, separate[1], 1.0, tokenizer, val_target, cache_dir)
        val = val_cache.array("val")[: None if need is None else need.val_sequences]
        if len(val) == 0:
            raise DataError(
                f"validation source {val_src.label} (split {separate[1]!r}) has {val_cache.tokens:,} tokens; "
                f"seq_len {cfg.seq_len} needs at least {cfg.seq_len + 1:,} for one validation block"
            )
    if len(train) == 0 or len(val) == 0:
        capped = f" within data.max_tokens {cfg.max_tokens:,}" if cfg.max_tokens is not None else ""
        raise DataError(
            f"source {src.label} has {main.tokens:,} tokens{capped}: seq_len {cfg.seq_len} gives "
            f"{len(train)} training and {len(val)} validation blocks of {cfg.seq_len + 1:,} tokens; "
            "each needs at least one (more text, or a shorter seq_len)"
        )
    return PackedData(train, val, tokenizer.vocab_size, tokenizer, key)
