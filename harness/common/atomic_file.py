"""Files that a reader sees whole or not at all: written aside, then renamed over the target.

A live dashboard reloads itself while a runner rewrites it, and a crash can stop a write
half-way; ``os.replace`` within one folder is atomic on POSIX, so a reader finds either the
old file or the new one. Each write has its own temporary name, so two runners writing the
same file at once cannot interleave (the later rename wins).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str, durable: bool = False) -> None:
    """Write ``text`` to ``path`` atomically; ``durable`` also flushes it to disk before the rename,
    for files whose loss after a power cut would leave a cache claiming what it does not hold."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file it replaces was not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
