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


def imports(tree: ast.AST, module: str, package: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) for every import that runs, relative ones resolved against ``module``
    (itself the anchor of ``from . import`` when it is a ``package``'s ``__init__``)."""
    anchor_parts = module.split(".") + ([""] if package else [])
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
                anchor = anchor_parts[: -node.level]
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


def forbidden(module: str, tree: ast.AST, package: bool = False) -> list[tuple[int, str, str, str]]:
    """(line, part, imported module, forbidden prefix) for each import ``module`` may not make."""
    rules = [(part, banned) for part, banned in FORBIDDEN.items() if matches(module, part)]
    return [
        (line, part, name, prefix)
        for line, name in imports(tree, module, package)
        for part, banned in rules
        for prefix in banned
        if matches(name, prefix) and not matches(name, part)
    ]


def violations() -> list[str]:
    out = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree, package = ast.parse(path.read_text()), path.name == "__init__.py"
            for line, part, name, prefix in forbidden(module_name(path), tree, package):
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
    hits = forbidden(module, ast.parse(source))
    assert len(hits) == expected, hits


def test_relative_imports_in_a_package_init_resolve_against_the_package():
    tree = ast.parse("from .job import cell_command\nfrom ..runner import Summary")
    assert [name for _, name in imports(tree, "harness.launch", package=True)] == [
        "harness.launch.job",
        "harness.runner",
    ]
    assert [hit[2] for hit in forbidden("harness.launch", tree, package=True)] == ["harness.runner"]


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
