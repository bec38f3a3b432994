"""Whole-or-nothing file writes: a failed write leaves the old file and no stray temporary."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.common import atomic_file
from harness.common.atomic_file import write_text_atomic


def test_replaces_the_file_and_leaves_nothing_beside_it(tmp_path: Path):
    path = tmp_path / "suite.html"
    path.write_text("old")
    write_text_atomic(path, "new ü", durable=True)
    assert path.read_text(encoding="utf-8") == "new ü"
    assert os.listdir(tmp_path) == ["suite.html"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the web server that shows a dashboard


def test_a_write_that_fails_keeps_the_old_file_whole(tmp_path: Path, monkeypatch):
    path = tmp_path / "suite.html"
    path.write_text("old")

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_file.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "half of a new page")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["suite.html"]
