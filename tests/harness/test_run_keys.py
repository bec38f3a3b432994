"""The run keys of every shipped suite, frozen: a refactor that changed one would silently
retrain (or, worse, mismatch) every stored result of that suite."""

import json
from pathlib import Path

import pytest

from harness.config.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
FROZEN = json.loads((Path(__file__).parent / "data" / "suite_run_keys.json").read_text())


def test_every_shipped_suite_is_frozen():
    assert sorted(FROZEN) == sorted(p.name for p in (ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_run_keys_are_unchanged(name):
    assert [cell.run_key for cell in load_suite(ROOT / "suites" / name).cells()] == FROZEN[name]
