"""Preparation: tokenize a source's documents in parallel and append them to a token cache.

The main process reads documents in source order and cuts them into *shards* of about
``shard_chars`` characters; worker processes tokenize shards (each document followed by
end-of-text) into shard files; the main process appends the finished shards to the cache
strictly in order and commits after each. The stream is the documents' tokens in order,
whatever the shard size or the worker count, so the cache is byte-identical for any
``workers``, and shard sizes are free to follow the work left. Tokenizers run
single-threaded inside each worker, so ``workers`` is the number of cores used.

Preparation stops at the first shard boundary at or past the target (a whole number of
blocks) or at the end of the source. A killed preparation resumes from the last committed
shard (its documents are skipped on rereading); finished shard files it left are reused.
Any failure, a full disk included, leaves the cache at its last commit.
"""

from __future__ import annotations

import errno
import math
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np

from harness.common.lifeline import follow
from harness.common.progress import progress_bar
from harness.data.cache import TokenCache
from harness.data.common import DataError
from harness.data.source import Source, iter_documents, open_datasets
from harness.data.tokenizer import TextTokenizer

SHARD_CHARS = 1 << 23  # largest shard: ~2M tokens of English, a few seconds of one core
MIN_SHARD_CHARS = 1 << 16
CHARS_PER_TOKEN = 4  # a rough guess, only used to size shards and the pool
MIN_TOKENS_PER_WORKER = 1 << 20  # less work than this per worker is not worth starting a process for
ENCODE_BATCH = 1000  # documents per call to the tokenizer
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

_worker_tokenizer: TextTokenizer | None = None


def encode(tokenizer: TextTokenizer, texts: list[str], dtype: np.dtype) -> np.ndarray:
    """Each document's tokens followed by end-of-text, concatenated."""
    eos, parts = tokenizer.eos_id, []
    for i in range(0, len(texts), ENCODE_BATCH):
        encoded = tokenizer.encode_batch(texts[i : i + ENCODE_BATCH])
        parts.append(
            np.fromiter(
                chain.from_iterable(chain(ids, (eos,)) for ids in encoded),
                dtype=dtype,
                count=sum(len(ids) for ids in encoded) + len(encoded),
            )
        )
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def tokenize_shard(texts: list[str], path: Path, dtype: str, tokenizer: TextTokenizer | None = None) -> int:
    """Write one shard file (complete or absent: written aside, then renamed); returns its tokens."""
    tokens = encode(tokenizer or _worker_tokenizer, texts, np.dtype(dtype))
    tmp = path.with_name(path.name + ".tmp")
    tokens.tofile(tmp)
    os.replace(tmp, path)
    return len(tokens)


def _init_worker(tokenizer: TextTokenizer, parent: int) -> None:
    """One core per worker; the worker dies with the preparing process and leaves Ctrl-C to it."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    follow(parent)  # a kill -9 of the preparing process leaves no worker behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts the pool down
    _worker_tokenizer = tokenizer


class _Inline:
    """The one-worker case: tokenize in this process, no pool to start."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def submit(self, texts: list[str], path: Path, dtype: str) -> Future:
        future: Future = Future()
        try:
            future.set_result(tokenize_shard(texts, path, dtype, self.tokenizer))
        except Exception as e:
            future.set_exception(e)
        return future


class _Pool:
    def __init__(self, tokenizer: TextTokenizer, workers: int) -> None:
        self.executor = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(tokenizer, os.getpid()),
        )

    def submit(self, texts: list[str], path: Path, dtype: str) -> Future:
        return self.executor.submit(tokenize_shard, texts, path, dtype)


@contextmanager
def _tokenizers(tokenizer: TextTokenizer, workers: int) -> Iterator[_Inline | _Pool]:
    if workers == 1:
        before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core, as asked
        try:
            yield _Inline(tokenizer)
        finally:
            if before is None:
                del os.environ["TOKENIZERS_PARALLELISM"]
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
        return
    pool = _Pool(tokenizer, workers)
    try:
        yield pool
    finally:  # waits for shards in flight, so none is written after its folder is removed
        pool.executor.shutdown(wait=True, cancel_futures=True)


def shards(batches: Iterable[list[str]], skip: int, shard_chars: int) -> Iterator[tuple[int, list[str]]]:
    """(index of the first document, documents) of consecutive shards, after ``skip`` documents."""
    start, seen, buf, chars = skip, 0, [], 0
    for texts in batches:
        if seen + len(texts) <= skip:
            seen += len(texts)
            continue
        texts, seen = texts[max(0, skip - seen) :], seen + len(texts)
        for text in texts:
            buf.append(text)
            chars += len(text)
            if chars >= shard_chars:
                yield start, buf
                start, buf, chars = start + len(buf), [], 0
    if buf:
        yield start, buf


def _shard_chars(tokens_left: int | None, workers: int) -> int:
    """Shards small enough that the work left spreads over the workers, large enough to be cheap."""
    if tokens_left is None:
        return SHARD_CHARS
    return int(min(SHARD_CHARS, max(MIN_SHARD_CHARS, tokens_left * CHARS_PER_TOKEN // (4 * workers))))


def worker_note(asked: int, used: int) -> str:
    """How many workers tokenize, and why fewer than asked (each must get ``MIN_TOKENS_PER_WORKER`` of work)."""
    if used == asked:
        return f"{used} worker{'s' if used > 1 else ''}"
    return f"{asked} workers asked, {used} used: under {used * MIN_TOKENS_PER_WORKER / 1e6:.0f}M tokens of work"


def _estimate_left(src: Source, cache: TokenCache, target_tokens: int | None) -> int | None:
    """Tokens still to prepare: to the target, or a guess from a local source's size (None: unknown)."""
    if target_tokens is not None:
        return target_tokens - cache.tokens
    if src.hub_id is not None:
        return None
    size = sum(os.path.getsize(f) for _, files in src.groups for f in files)
    return max(0, size // CHARS_PER_TOKEN - cache.tokens)


def _ordered(
    pool: _Inline | _Pool, work: Iterator[tuple[int, list[str]]], folder: Path, dtype: str, depth: int
) -> Iterator[tuple[int, Path]]:
    """(documents, shard file) in stream order, keeping up to ``depth`` shards in flight."""
    pending: deque[tuple[int, Path, Future | None]] = deque()
    for start, texts in work:
        path = folder / f"{start:012d}-{len(texts)}.bin"
        future = None if path.exists() else pool.submit(texts, path, dtype)  # left by a killed run: reuse
        pending.append((len(texts), path, future))
        while len(pending) >= depth:
            yield _finished(pending.popleft())
    while pending:
        yield _finished(pending.popleft())


def _finished(item: tuple[int, Path, Future | None]) -> tuple[int, Path]:
    n_docs, path, future = item
    if future is not None:
        future.result()
    return n_docs, path


def extend(
    cache: TokenCache,
    src: Source,
    split: str,
    text_field: str,
    tokenizer: TextTokenizer,
    target_blocks: int | None,
    workers: int,
    hf_cache: Path,
) -> None:
    """Append shards to ``cache`` until it holds ``target_blocks`` blocks (None: the whole source).

    Call with the cache's preparation lock held.
    """
    if cache.exhausted or (target_blocks is not None and cache.n_blocks >= target_blocks):
        return
    cache.drop_uncommitted()
    folder = cache.folder / "shards"
    folder.mkdir(exist_ok=True)
    target_tokens = None if target_blocks is None else target_blocks * cache.width
    tokens_left = _estimate_left(src, cache, target_tokens)
    asked = workers
    if tokens_left is not None:  # small work: fewer processes to start (the bytes do not change)
        workers = max(1, min(workers, math.ceil(tokens_left / MIN_TOKENS_PER_WORKER)))
    documents = iter_documents(open_datasets(src, split, hf_cache), src, text_field)
    work = shards(documents, cache.docs, _shard_chars(tokens_left, workers))
    started, added = time.perf_counter(), 0
    label = f"tokenizing {src.label} ({worker_note(asked, workers)})"
    try:
        with (
            progress_bar(label, total=target_tokens, unit="tokens", completed=cache.tokens) as bar,
            _tokenizers(tokenizer, workers) as pool,
        ):
            for n_docs, path in _ordered(pool, work, folder, cache.dtype.name, 1 if workers == 1 else 2 * workers):
                tokens = np.fromfile(path, dtype=cache.dtype)
                cache.append(tokens, n_docs)
                path.unlink()
                added += len(tokens)
                bar.update(advance=len(tokens), tokens_per_s=added / (time.perf_counter() - started), docs=cache.docs)
                if target_blocks is not None and cache.n_blocks >= target_blocks:
                    break
            else:
                cache.finish()
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        free = shutil.disk_usage(cache.folder).free
        left = (
            ""
            if tokens_left is None
            else f" (about {max(0, tokens_left - added) * cache.dtype.itemsize:,} more bytes needed)"
        )
        raise DataError(
            f"disk full while preparing the data cache {cache.folder}: {free:,} bytes free{left}; "
            f"the cache keeps its {cache.tokens:,} committed tokens and resumes when rerun with space"
        ) from None
    finally:
        cache.drop_uncommitted()
        shutil.rmtree(folder, ignore_errors=True)
