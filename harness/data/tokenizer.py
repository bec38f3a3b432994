"""Tokenizers: what the harness needs of one, and how a suite names it.

``builtin:kjv`` (shipped), ``bytes`` (UTF-8 bytes, no file), a ``tokenizer.json`` or a folder
holding one, or a Hugging Face Hub id. ``encode`` never adds special tokens; every tokenizer
has an end-of-text id that packing puts after each document. Tokenizers pickle, so the
preparation workers get the very object the main process loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from harness.data.common import CORPUS_DIR, DataError, cause, looks_like_hub_id

BUILTIN_TOKENIZER = "builtin:kjv"
BYTE_TOKENIZER = "bytes"
BUILTIN_TOKENIZER_FILES = {"builtin:kjv": CORPUS_DIR / "tokenizer.json"}
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")


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
            raise DataError(f"tokenizer {name!r} has no end-of-text token (looked for {', '.join(EOS_CANDIDATES)})")
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
                [type(self._tok).__name__, sorted(self._tok.get_vocab().items()), self._tok.all_special_tokens],
            )
        return hashlib.sha256(content.encode("utf-8")).hexdigest()


def _tokenizer_from_file(path: Path, name: str) -> HFTokenizer:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"cannot load tokenizer {name!r} from {path}: {cause(e)}") from None
    return HFTokenizer(tok, name)


def _tokenizer_from_hub(spec: str) -> TextTokenizer:
    try:
        import transformers
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
            f"(and no local file or folder has that name): {cause(e)}"
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
            raise DataError(f"the shipped tokenizer {spec!r} is missing: {path} (run scripts/build_corpus.py)")
        return _tokenizer_from_file(path, spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise DataError(f"tokenizer folder {path.resolve()} holds no tokenizer.json")
        return _tokenizer_from_file(path / "tokenizer.json", spec)
    if path.is_file():
        return _tokenizer_from_file(path, spec)
    if not looks_like_hub_id(spec, (".json",)):
        raise DataError(f"tokenizer file not found: {path.resolve()}")
    return _tokenizer_from_hub(spec)
