"""What the tokenizer and source modules share: the one error type and how names are read."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

from models.errors import MixbenchError

CORPUS_DIR = Path(__file__).resolve().parent.parent / "corpus"

# "name" or "owner/name", as the Hub spells ids; anything else is taken for a local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


class DataError(MixbenchError):
    """One clear line for a person: what is wrong and where (path/id)."""


def cause(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def looks_like_hub_id(spec: str, file_suffixes: Iterable[str]) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.lower().endswith(tuple(file_suffixes))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
