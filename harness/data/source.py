"""Sources: where documents come from, and the settings that say how to read them.

A source is the shipped corpus (``builtin:kjv``), a local ``.txt`` / ``.jsonl`` / ``.json`` /
``.parquet`` file (optionally compressed: ``.gz``, ``.bz2``, ``.xz``, ``.zst``) or a folder of
them, or a Hugging Face Hub dataset id. Everything is read through ``datasets`` in streaming
mode, so nothing is copied into an Arrow cache and a budget reads only a prefix.

A document is one line of a ``.txt`` file (empty and blank lines are skipped) or the
``text_field`` of one row of a json/parquet/hub source. A local source has one split,
``train``; a Hub dataset has its own (``train``, ``validation``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness.data.common import CORPUS_DIR, DataError, cause, looks_like_hub_id, sha256_file

BUILTIN_SOURCE = "builtin:kjv"
BUILTIN_FILES = {"builtin:kjv": CORPUS_DIR / "kjv.txt"}
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
LOCAL_SPLIT = "train"  # the one split ``datasets`` gives a local file or folder
DOC_BATCH = 1000  # documents read at a time


class DataConfig(BaseModel):
    """How a suite's text is read: the suite's ``data:`` section and the pipeline's input, one class.

    Frozen (so it keys the runner's data cache) and closed (an unknown field is refused, so a
    typo in a suite cannot enter the run key unseen). A bad value raises ``DataError`` naming
    ``data.<field>``, the suite's own name for it, whether built directly or from a suite file
    (pydantic calls a custom ``__init__`` for a nested model, so the suite sees the same line).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = BUILTIN_SOURCE  # builtin, hub id, or a local file / folder
    tokenizer: str = "builtin:kjv"
    seq_len: int = Field(256, gt=1)
    text_field: str = "text"  # column for jsonl/json/parquet/hub (a .txt line is the document)
    split: str = "train"  # the source's split to train on
    val_fraction: float = Field(0.05, gt=0, lt=1)  # share of hashed blocks held out without val_source/val_split
    max_tokens: int | None = Field(None, gt=0)  # read only the first max_tokens tokens (overrides the budget)
    # Validation from the source's own split instead of hashed blocks: ``val_split`` of
    # ``val_source`` (default: ``source``); ``val_split`` defaults to ``train`` for a val_source.
    val_source: str | None = None
    val_split: str | None = None
    workers: int | None = Field(None, gt=0)  # tokenizing processes; None: the machine's cores (never changes a byte)
    # The tokenizer's vocabulary size, so a dry run need not download the tokenizer; a real run
    # checks it against the tokenizer it loads, before any reading.
    vocab_size: int | None = Field(None, gt=0)

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in ("data", *err["loc"]))
            msg = "unknown field" if err["type"] == "extra_forbidden" else f"{err['msg']} (got {err.get('input')!r})"
            raise DataError(f"{where}: {msg}") from None

    @property
    def separate_val(self) -> tuple[str, str] | None:
        """(source, split) validation comes from, or None for hashed blocks of the training stream."""
        if self.val_source is None and self.val_split is None:
            return None
        if self.val_source is None:
            return self.source, self.val_split
        return self.val_source, self.val_split or LOCAL_SPLIT

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


def _builder_for(path: Path) -> str | None:
    name = path.name.lower()
    for comp in ("",) + COMPRESSIONS:
        for suffix, builder in BUILDERS.items():
            if name.endswith(suffix + comp):
                return builder
    return None


@dataclass
class Source:
    label: str  # how a person names it in messages
    identity: dict  # what the cache key hashes
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (builder, files), local
    hub_id: str | None = None


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def resolve_source(source: str) -> Source:
    """Find the source (one line if it does not exist) and fix its identity for the cache key.

    The identity is the content hash of the shipped corpus, the resolved path, size and mtime
    of each local file, or the id of a Hub dataset.
    """
    if source.startswith("builtin:"):
        path = BUILTIN_FILES.get(source)
        if path is None:
            raise DataError(f"unknown builtin source {source!r} (known: {', '.join(BUILTIN_FILES)})")
        if not path.is_file():
            raise DataError(f"the shipped corpus {source!r} is missing: {path} (run scripts/build_corpus.py)")
        return Source(source, {"builtin": source, "sha256": sha256_file(path)}, [("text", [str(path)])])

    path = Path(source).expanduser().resolve()
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            raise DataError(f"unsupported file type: {path} (expected {', '.join(BUILDERS)}, optionally compressed)")
        return Source(str(path), {"file": _file_identity(path)}, [(builder, [str(path)])])
    if path.is_dir():
        files = sorted(  # hidden files and folders are skipped
            p
            for p in path.rglob("*")
            if p.is_file() and _builder_for(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"folder {path} holds no {', '.join(BUILDERS)} files")
        groups: dict[str, list[str]] = {}
        for p in files:  # one datasets call per builder, in order of first appearance
            groups.setdefault(_builder_for(p), []).append(str(p))
        return Source(str(path), {"folder": [_file_identity(p) for p in files]}, list(groups.items()))
    if not looks_like_hub_id(source, tuple(BUILDERS) + COMPRESSIONS):
        raise DataError(f"data source not found: {path}")
    return Source(source, {"hub": source}, hub_id=source)


@lru_cache(maxsize=None)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A local file's content hash, computed once per state of the file (size and mtime)."""
    return sha256_file(Path(path))


def content_record(source: str) -> dict[str, Any] | None:
    """What a run records of a local source's content: its identity (paths, sizes, mtimes) and
    each file's SHA-256. None for the shipped corpus (versioned with the code) and a Hub id.

    A run key holds the source's path, not its content, so that a corpus that is only touched or
    copied keeps its results; this record is how a rerun tells an edited corpus from those.
    """
    return _content_record(resolve_source(source))


def _content_record(src: Source) -> dict[str, Any] | None:
    if src.hub_id is not None or "builtin" in src.identity:
        return None
    files = [src.identity["file"]] if "file" in src.identity else src.identity["folder"]
    return {"identity": src.identity, "sha256": {path: _sha256(path, size, mtime) for path, size, mtime in files}}


def changed_file(recorded: dict[str, Any], source: str) -> str | None:
    """None if ``source`` holds the content ``recorded`` (a ``content_record``) says, or is gone
    (nothing to mix the stored numbers with); else a file that was added, removed or edited since.
    The files are hashed only when their paths, sizes or mtimes differ from the record's."""
    try:
        src = resolve_source(source)
    except DataError:
        return None
    if src.identity == recorded["identity"]:
        return None
    before, after = recorded["sha256"], _content_record(src)["sha256"]
    return next((f for f in sorted(before.keys() | after.keys()) if before.get(f) != after.get(f)), None)


def check_split(src: Source, split: str, setting: str) -> None:
    """A local source has only ``train``: asking it for another split is a one-line error now."""
    if src.hub_id is None and split != LOCAL_SPLIT:
        raise DataError(
            f"{setting} {split!r}: source {src.label} has no such split (a local file or folder has one "
            f"split, {LOCAL_SPLIT!r}; point data.val_source at a validation file instead)"
        )


def open_datasets(src: Source, split: str, hf_cache: Path) -> list[tuple[str | None, Any]]:
    """The source's ``split`` as streaming datasets: (builder, dataset) pairs, read in this order."""
    import datasets

    if src.hub_id is not None:
        try:
            return [(None, datasets.load_dataset(src.hub_id, split=split, streaming=True))]
        except Exception as e:
            raise DataError(
                f"cannot load dataset {src.hub_id!r} (split {split!r}) from the Hugging Face Hub "
                f"(and no local file or folder has that name): {cause(e)}"
            ) from None
    parts = []
    for builder, files in src.groups:
        try:
            ds = datasets.load_dataset(
                builder, data_files=files, split=LOCAL_SPLIT, streaming=True, cache_dir=str(hf_cache)
            )
        except Exception as e:
            raise DataError(f"cannot read {src.label} as {builder}: {cause(e)}") from None
        parts.append((builder, ds))
    return parts


def iter_documents(parts: list[tuple[str | None, Any]], src: Source, text_field: str) -> Iterator[list[str]]:
    """Batches of non-empty documents, in reading order."""
    for builder, ds in parts:
        column = "text" if builder == "text" else text_field
        try:
            for rows in ds.iter(batch_size=DOC_BATCH):
                if column not in rows:
                    raise DataError(f"source {src.label} has no field {column!r} (fields: {', '.join(rows) or 'none'})")
                texts = rows[column]
                bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
                if bad is not None:
                    raise DataError(f"field {column!r} of source {src.label} holds {type(bad).__name__}, not text")
                texts = [t for t in texts if t and not t.isspace()]
                if texts:
                    yield texts
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {src.label}: {cause(e)}") from None
