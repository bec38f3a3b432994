"""What a non-editable install ships is the tree: every package folder is listed in
``pyproject.toml``, under its import name (``kernels/`` is ``mixbench_kernels``).

The list is written out because setuptools' package finder cannot rename a folder; a package
added to the tree and forgotten in the list would be missing from a wheel while every test run
from the checkout still passed. CI's smoke suite runs from such a wheel's install.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_folder_is_listed_under_its_import_name():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / path for name, path in config["package-dir"].items()}
    assert folders == {"mixbench_kernels": ROOT / "kernels"}
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("harness", "models")
        for init in (ROOT / top).rglob("__init__.py")
    }
    found |= {"mixbench_kernels"} | {
        ".".join(("mixbench_kernels", *init.parent.relative_to(ROOT / "kernels").parts))
        for init in (ROOT / "kernels").rglob("__init__.py")
    }
    assert sorted(config["packages"]) == sorted(found)


def test_the_kernels_folder_never_hides_hugging_faces_kernels():
    # A kernels/__init__.py would make the checkout's folder the package `kernels` for any
    # process started in the repository root, in place of the one transformers imports.
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert not list((ROOT / "kernels").glob("*.py"))
