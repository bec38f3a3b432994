"""Data: documents -> tokenizer -> packed token blocks cached on disk as memmaps.

A source is the shipped corpus (``builtin:kjv``), a local ``.txt`` / ``.jsonl`` / ``.json`` /
``.parquet`` file (optionally compressed: ``.gz``, ``.bz2``, ``.xz``, ``.zst``) or a folder of
them, or a Hugging Face Hub dataset id. Everything is read through ``datasets`` in streaming
mode, so nothing is copied into an Arrow cache and a ``max_tokens`` cap reads only a prefix.

- A document is one line of a ``.txt`` file (empty lines are skipped) or the ``text_field`` of
  one row of a json/parquet/hub source.
- Each document is tokenized without special tokens and followed by the tokenizer's
  end-of-text token; the documents are concatenated in reading order.
- The stream is cut into non-overlapping blocks of ``seq_len + 1`` tokens; consecutive blocks
  do not share a token (block k is ``tokens[k*(L+1):(k+1)*(L+1)]``), and the remainder is
  dropped. A block gives inputs ``block[:-1]`` and targets ``block[1:]``.
- Validation blocks are the ``round(n_blocks * val_fraction)`` blocks (at least one, and at
  least one left for training) whose index has the smallest splitmix64 hash: a fixed,
  machine- and version-independent choice spread over the whole source. Both splits keep
  the source order.
- The cache lives in ``cache_dir/<cache_key>/`` (``train.bin``, ``val.bin``, ``meta.json``);
  the key hashes the source's identity (resolved path, size and mtime of each local file; the
  content hash of the shipped corpus; the id of a Hub dataset), the tokenizer's content and
  every setting that changes the blocks. It is built in a temporary ``.partial-*`` folder
  beside it and renamed into place, so an interrupted build never leaves a folder that reads
  as valid. ``datasets`` keeps its lock files for local sources in ``cache_dir/.hf-datasets``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from harness.progress import progress_bar

BUILTIN_SOURCE = "builtin:kjv"
BUILTIN_TOKENIZER = "builtin:kjv"
BYTE_TOKENIZER = "bytes"

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
BUILTIN_FILES = {"builtin:kjv": CORPUS_DIR / "kjv.txt"}
BUILTIN_TOKENIZER_FILES = {"builtin:kjv": CORPUS_DIR / "tokenizer.json"}

FORMAT_VERSION = 1  # bump when the packing or the cache layout changes
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
DOC_BATCH = 1000  # documents per call to the tokenizer
BLOCK_CHUNK = 8192  # blocks copied at a time when splitting train/val

# "name" or "owner/name", as the Hub spells ids; anything else is taken for a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class DataError(Exception):
    """One clear line for a person: what is wrong and where (path/id)."""


def _cause(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _looks_like_hub_id(spec: str, file_suffixes: Iterable[str]) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.lower().endswith(tuple(file_suffixes))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- tokenizers


class TextTokenizer:
    """What the harness needs of a tokenizer. ``encode`` never adds special tokens."""

    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A stable hash of the tokenizer's content (not of its name or location)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size})"


class ByteTokenizer(TextTokenizer):
    """UTF-8 bytes as ids 0..255, end-of-text as 256."""

    def __init__(self) -> None:
        self.name = BYTE_TOKENIZER
        self.vocab_size = 257
        self.eos_id = 256

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        # End-of-text shows as "<|endoftext|>" so that document boundaries stay visible.
        parts, current = [], bytearray()
        for i in ids:
            if int(i) == self.eos_id:
                parts.append(current.decode("utf-8", errors="replace"))
                current = bytearray()
            else:
                current.append(int(i))
        parts.append(current.decode("utf-8", errors="replace"))
        return "<|endoftext|>".join(parts)

    def fingerprint(self) -> str:
        return hashlib.sha256(b"mixbench-bytes-v1").hexdigest()


class HFTokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` (a ``tokenizer.json``, the shipped one, or from the Hub)."""

    def __init__(self, tok, name: str) -> None:
        self._tok = tok
        self.name = name
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        eos = next((vocab[t] for t in EOS_CANDIDATES if t in vocab), None)
        if eos is None:
            raise DataError(
                f"tokenizer {name!r} has no end-of-text token (looked for {', '.join(EOS_CANDIDATES)})"
            )
        self.eos_id = eos
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def fingerprint(self) -> str:
        return hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()


class TransformersTokenizer(TextTokenizer):
    """A ``transformers`` tokenizer from the Hub (used when transformers is installed)."""

    def __init__(self, tok, name: str) -> None:
        self._tok = tok
        self.name = name
        self.vocab_size = len(tok)
        if tok.eos_token_id is None:
            raise DataError(f"tokenizer {name!r} has no end-of-text (eos) token")
        self.eos_id = int(tok.eos_token_id)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def fingerprint(self) -> str:
        backend = getattr(self._tok, "backend_tokenizer", None)
        if backend is not None:
            content = backend.to_str()
        else:  # a slow (python) tokenizer: its class, vocabulary and special tokens
            content = json.dumps(
                [type(self._tok).__name__, sorted(self._tok.get_vocab().items()),
                 self._tok.all_special_tokens],
            )
        return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _tokenizer_from_file(path: Path, name: str) -> HFTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"cannot load tokenizer {name!r} from {path}: {_cause(e)}") from None
    return HFTokenizer(tok, name)


def _tokenizer_from_hub(spec: str) -> TextTokenizer:
    try:
        import transformers  # noqa: F401
    except ImportError:
        transformers = None
    try:
        if transformers is not None:
            from transformers import AutoTokenizer

            return TransformersTokenizer(AutoTokenizer.from_pretrained(spec), spec)
        from tokenizers import Tokenizer

        return HFTokenizer(Tokenizer.from_pretrained(spec), spec)
    except DataError:
        raise
    except Exception as e:
        raise DataError(
            f"cannot load tokenizer {spec!r} from the Hugging Face Hub "
            f"(and no local file or folder has that name): {_cause(e)}"
        ) from None


def load_tokenizer(spec: str) -> TextTokenizer:
    """``builtin:kjv``, ``bytes``, a ``tokenizer.json`` (or a folder holding one), or a Hub id."""
    if spec == BYTE_TOKENIZER:
        return ByteTokenizer()
    if spec.startswith("builtin:"):
        if spec not in BUILTIN_TOKENIZER_FILES:
            known = ", ".join(BUILTIN_TOKENIZER_FILES)
            raise DataError(f"unknown builtin tokenizer {spec!r} (known: {known})")
        path = BUILTIN_TOKENIZER_FILES[spec]
        if not path.is_file():
            raise DataError(
                f"the shipped tokenizer {spec!r} is missing: {path} (run scripts/build_corpus.py)"
            )
        return _tokenizer_from_file(path, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"tokenizer folder {path.resolve()} holds no tokenizer.json")
        return _tokenizer_from_file(path / "tokenizer.json", spec)
    if path.is_file():
        return _tokenizer_from_file(path, spec)
    if not _looks_like_hub_id(spec, (".json",)):
        raise DataError(f"tokenizer file not found: {path.resolve()}")
    return _tokenizer_from_hub(spec)


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class DataConfig:
    source: str = BUILTIN_SOURCE  # builtin, hub id, or a local file / folder
    tokenizer: str = BUILTIN_TOKENIZER
    seq_len: int = 256
    text_field: str = "text"  # column for jsonl/json/parquet/hub (a .txt line is the document)
    split: str = "train"  # hub split (local files have one split)
    val_fraction: float = 0.05
    max_tokens: int | None = None  # cap on tokens read, end-of-text tokens included

    def __post_init__(self) -> None:
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise DataError(f"seq_len must be a positive integer, got {self.seq_len!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise DataError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise DataError(f"max_tokens must be positive or None, got {self.max_tokens!r}")


def _builder_for(path: Path) -> str | None:
    name = path.name.lower()
    for comp in ("",) + COMPRESSIONS:
        for suffix, builder in BUILDERS.items():
            if name.endswith(suffix + comp):
                return builder
    return None


@dataclass
class _Source:
    label: str  # how a person names it in messages
    identity: dict  # what the cache key hashes
    groups: list[tuple[str, list[str]]] = field(default_factory=list)  # (builder, files), local
    hub_id: str | None = None


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _resolve_source(source: str) -> _Source:
    if source.startswith("builtin:"):
        path = BUILTIN_FILES.get(source)
        if path is None:
            raise DataError(f"unknown builtin source {source!r} (known: {', '.join(BUILTIN_FILES)})")
        if not path.is_file():
            raise DataError(
                f"the shipped corpus {source!r} is missing: {path} (run scripts/build_corpus.py)"
            )
        return _Source(source, {"builtin": source, "sha256": _sha256_file(path)}, [("text", [str(path)])])

    path = Path(source).expanduser().resolve()
    if path.is_file():
        builder = _builder_for(path)
        if builder is None:
            raise DataError(
                f"unsupported file type: {path} (expected {', '.join(BUILDERS)}, optionally compressed)"
            )
        return _Source(str(path), {"file": _file_identity(path)}, [(builder, [str(path)])])
    if path.is_dir():
        files = sorted(  # hidden files and folders are skipped
            p for p in path.rglob("*")
            if p.is_file() and _builder_for(p)
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"folder {path} holds no {', '.join(BUILDERS)} files")
        groups: dict[str, list[str]] = {}
        for p in files:  # one datasets call per builder, in order of first appearance
            groups.setdefault(_builder_for(p), []).append(str(p))
        return _Source(str(path), {"folder": [_file_identity(p) for p in files]}, list(groups.items()))
    if not _looks_like_hub_id(source, tuple(BUILDERS) + COMPRESSIONS):
        raise DataError(f"data source not found: {path}")
    return _Source(source, {"hub": source}, hub_id=source)


def _open_datasets(src: _Source, cfg: DataConfig, hf_cache: Path) -> list[tuple[str | None, Any]]:
    """The source as streaming datasets: (builder, dataset) pairs, read in this order."""
    import datasets

    if src.hub_id is not None:
        try:
            return [(None, datasets.load_dataset(src.hub_id, split=cfg.split, streaming=True))]
        except Exception as e:
            raise DataError(
                f"cannot load dataset {src.hub_id!r} (split {cfg.split!r}) from the Hugging Face Hub "
                f"(and no local file or folder has that name): {_cause(e)}"
            ) from None
    parts = []
    for builder, files in src.groups:
        try:
            ds = datasets.load_dataset(
                builder, data_files=files, split="train", streaming=True, cache_dir=str(hf_cache)
            )
        except Exception as e:
            raise DataError(f"cannot read {src.label} as {builder}: {_cause(e)}") from None
        parts.append((builder, ds))
    return parts


def _iter_documents(
    parts: list[tuple[str | None, Any]], src: _Source, cfg: DataConfig
) -> Iterator[list[str]]:
    """Batches of non-empty documents, in reading order."""
    for builder, ds in parts:
        column = "text" if builder == "text" else cfg.text_field
        try:
            for rows in ds.iter(batch_size=DOC_BATCH):
                if column not in rows:
                    raise DataError(
                        f"source {src.label} has no field {column!r} (fields: {', '.join(rows) or 'none'})"
                    )
                texts = rows[column]
                bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
                if bad is not None:
                    raise DataError(
                        f"field {column!r} of source {src.label} holds {type(bad).__name__}, not text"
                    )
                texts = [t for t in texts if t and not t.isspace()]
                if texts:
                    yield texts
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"cannot read {src.label}: {_cause(e)}") from None


# --------------------------------------------------------------------------- packing


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def val_block_mask(n_blocks: int, val_fraction: float) -> np.ndarray:
    """Which blocks are validation: a fixed, hash-chosen set of round(n * fraction) blocks."""
    n_val = min(max(1, round(n_blocks * val_fraction)), n_blocks - 1)
    order = np.argsort(_splitmix64(np.arange(n_blocks, dtype=np.uint64)), kind="stable")
    mask = np.zeros(n_blocks, dtype=bool)
    mask[order[:n_val]] = True
    return mask


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class PackedData:
    train: np.ndarray  # read-only memmap (n_train_blocks, seq_len + 1)
    val: np.ndarray  # read-only memmap (n_val_blocks, seq_len + 1)
    vocab_size: int
    tokenizer: TextTokenizer
    cache_key: str

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks ``indices`` of ``split`` as (inputs, targets), int64, each (len, seq_len)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        blocks = self.train if split == "train" else self.val
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = torch.from_numpy(blocks[idx].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def _key_fields(cfg: DataConfig, src: _Source, tokenizer: TextTokenizer) -> dict:
    """Everything the packed blocks depend on; its hash is the cache key."""
    return {
        "format": FORMAT_VERSION,
        "source": src.identity,
        "tokenizer": tokenizer.fingerprint(),
        "seq_len": cfg.seq_len,
        "val_fraction": cfg.val_fraction,
        "max_tokens": cfg.max_tokens,
        "text_field": cfg.text_field,
        "split": cfg.split,
    }


def _hash_fields(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()[:24]


def _open_cache(folder: Path, key: str, tokenizer: TextTokenizer) -> PackedData | None:
    """The cache in ``folder`` if it is complete and of this format, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != FORMAT_VERSION or meta.get("cache_key") != key:
            return None
        dtype = np.dtype(meta["dtype"])
        width = meta["key_fields"]["seq_len"] + 1
        arrays = {}
        for split in ("train", "val"):
            path = folder / f"{split}.bin"
            n = meta[f"n_{split}_blocks"]
            if n < 1 or path.stat().st_size != n * width * dtype.itemsize:
                return None
            arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n, width))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return PackedData(arrays["train"], arrays["val"], tokenizer.vocab_size, tokenizer, key)


def _tokenize(src: _Source, cfg: DataConfig, tokenizer: TextTokenizer, out_path: Path,
              dtype: np.dtype, hf_cache: Path) -> tuple[int, int]:
    """Write the token stream (each document + eos) to ``out_path``; returns (tokens, docs)."""
    eos = tokenizer.eos_id
    n_tokens = n_docs = 0
    parts = _open_datasets(src, cfg, hf_cache)
    bar = progress_bar(f"tokenizing {src.label}", total=cfg.max_tokens, unit="tokens")
    with bar as progress, open(out_path, "wb") as out:
        for texts in _iter_documents(parts, src, cfg):
            encoded = tokenizer.encode_batch(texts)
            flat = np.fromiter(
                chain.from_iterable(chain(ids, (eos,)) for ids in encoded),
                dtype=dtype, count=sum(len(ids) for ids in encoded) + len(encoded),
            )
            if cfg.max_tokens is not None:
                flat = flat[: cfg.max_tokens - n_tokens]
            out.write(flat.tobytes())
            n_tokens += len(flat)
            n_docs += len(texts)
            progress.update(advance=len(flat), docs=n_docs)
            if cfg.max_tokens is not None and n_tokens >= cfg.max_tokens:
                break
    return n_tokens, n_docs


def _build_cache(cfg: DataConfig, src: _Source, tokenizer: TextTokenizer, fields: dict,
                 build_dir: Path, hf_cache: Path) -> dict:
    dtype = _token_dtype(tokenizer.vocab_size)
    width = cfg.seq_len + 1
    started = time.perf_counter()
    tokens_path = build_dir / "tokens.bin"
    n_tokens, n_docs = _tokenize(src, cfg, tokenizer, tokens_path, dtype, hf_cache)

    n_blocks = n_tokens // width
    if n_blocks < 2:
        raise DataError(
            f"source {src.label} has {n_tokens:,} tokens; seq_len {cfg.seq_len} needs at least "
            f"{2 * width:,} (one train and one val block of {width} tokens)"
        )
    mask = val_block_mask(n_blocks, cfg.val_fraction)
    blocks = np.memmap(tokens_path, dtype=dtype, mode="r", shape=(n_blocks, width))
    with open(build_dir / "train.bin", "wb") as ftrain, open(build_dir / "val.bin", "wb") as fval:
        for s in range(0, n_blocks, BLOCK_CHUNK):
            chunk, m = np.asarray(blocks[s : s + BLOCK_CHUNK]), mask[s : s + BLOCK_CHUNK]
            ftrain.write(chunk[~m].tobytes())
            fval.write(chunk[m].tobytes())
    del blocks  # release the map before the file is removed
    tokens_path.unlink()
    return {
        "format": FORMAT_VERSION,
        "cache_key": _hash_fields(fields),
        "key_fields": fields,
        "source": src.label,
        "tokenizer": tokenizer.name,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "dtype": dtype.name,
        "n_docs": n_docs,
        "n_tokens": n_tokens,
        "n_train_blocks": int(n_blocks - mask.sum()),
        "n_val_blocks": int(mask.sum()),
        "blocks": "non-overlapping blocks of seq_len+1 tokens; the remainder is dropped",
        "build_seconds": round(time.perf_counter() - started, 3),
    }


def load_packed(cfg: DataConfig, cache_dir: Path) -> PackedData:
    """Packed train/val blocks for ``cfg``, from the cache or built (then cached) once."""
    tokenizer = load_tokenizer(cfg.tokenizer)
    src = _resolve_source(cfg.source)
    fields = _key_fields(cfg, src, tokenizer)
    key = _hash_fields(fields)
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / key
    packed = _open_cache(final, key, tokenizer)
    if packed is not None:
        return packed

    cache_dir.mkdir(parents=True, exist_ok=True)
    build_dir = Path(tempfile.mkdtemp(prefix=f".partial-{key}-", dir=cache_dir))
    build_dir.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        meta = _build_cache(cfg, src, tokenizer, fields, build_dir, cache_dir / ".hf-datasets")
        # meta.json is written last: a folder without it is never taken for a cache.
        (build_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():  # a stale or broken cache: move it aside, then replace it
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{key}-", dir=cache_dir))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(build_dir, final)
        except OSError:  # another process finished the same cache first: use theirs
            if _open_cache(final, key, tokenizer) is None:
                raise
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    packed = _open_cache(final, key, tokenizer)
    if packed is None:
        raise DataError(f"the data cache just written to {final} does not read back")
    return packed
