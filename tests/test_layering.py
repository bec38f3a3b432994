"""The parts keep their boundaries: no module imports a part its own part may not import.

The rules are one table (``FORBIDDEN``), mirrored in ``docs/design.md`` ("Parts and the arrows
between them"). Imports are read from the AST, so one inside a function counts as much as one at
the top; only an import under ``if TYPE_CHECKING:`` (a type, not a dependency) is left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The folders whose modules are read, and the import name of each (kernels/README.md).
PACKAGES = {"harness": "harness", "models": "models", "kernels": "mixbench_kernels"}

# part -> the parts it may never import (a part is a package, or a dotted prefix of one).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "harness.engine": ("harness.store", "harness.report", "harness.cli"),
    "harness.measure": ("harness.report",),
    "harness.monitor": ("harness.report",),
    "harness.launch": ("harness.runner",),
    "harness.store": (
        "harness.cli",
        "harness.config",
        "harness.data",
        "harness.engine",
        "harness.evaluate",
        "harness.interop",
        "harness.launch",
        "harness.measure",
        "harness.monitor",
        "harness.report",
        "harness.runner",
        "harness.tasks",
    ),
    "harness.common": ("harness.", "models", "mixbench_kernels"),
    "models": ("harness",),
    "mixbench_kernels": ("models", "harness"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts[0] = PACKAGES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs, relative ones resolved against ``module``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: -node.level] if node.level else []
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def matches(name: str, prefix: str) -> bool:
    """``name`` is the part ``prefix`` or inside it (``harness.`` means any harness module but ``harness`` itself)."""
    if prefix.endswith("."):
        return name.startswith(prefix)
    return name == prefix or name.startswith(prefix + ".")


def violations() -> list[str]:
    out = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            module = module_name(path)
            rules = [(part, banned) for part, banned in FORBIDDEN.items() if matches(module, part)]
            for line, name in imports(ast.parse(path.read_text()), module):
                for part, banned in rules:
                    for prefix in banned:
                        if matches(name, prefix) and not matches(name, part):
                            out.append(f"{path.relative_to(ROOT)}:{line}: {part} imports {name} (forbidden: {prefix})")
    return out


def test_no_part_imports_what_it_may_not():
    assert violations() == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("harness.engine.train", "from harness.store.database import Store", 1),
        ("harness.engine.train", "def f():\n    import harness.report.dashboard", 1),  # inside a function counts
        (
            "harness.engine.train",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from harness.store import x",
            0,
        ),
        ("harness.engine.train", "from harness.engine.parallel import prepare", 0),
        ("harness.common.names", "from harness.common.errors import one_line", 0),  # within its own part
        ("harness.common.names", "import harness", 0),  # the package root holds no part
        ("mixbench_kernels.ttt.op", "from models.ttt import TTT", 1),
        ("harness.launch.local", "from ..runner import Summary", 1),  # relative imports resolve
    ],
)
def test_the_checker_sees_forbidden_arrows(module, source, expected):
    rules = [(part, banned) for part, banned in FORBIDDEN.items() if matches(module, part)]
    hits = [
        name
        for _, name in imports(ast.parse(source), module)
        for part, banned in rules
        for prefix in banned
        if matches(name, prefix) and not matches(name, part)
    ]
    assert len(hits) == expected, hits


def design_table() -> dict[str, tuple[str, ...]]:
    """The rules as ``docs/design.md`` writes them: one row per rule, its parts in backticks."""
    design = (ROOT / "docs" / "design.md").read_text()
    section = design[design.index("| from | may not import | why |") :].split("\n\n")[0]
    rules: dict[str, tuple[str, ...]] = {}
    for row in section.splitlines()[2:]:
        parts, banned = (re.findall(r"`([^`]+)`", cell) for cell in row.split("|")[1:3])
        for part in parts:
            rules[part] = tuple(b.removesuffix("*") for b in banned)
    return rules


def test_the_table_is_the_one_in_the_design_notes():
    assert design_table() == FORBIDDEN
