"""The curated public surface: everything in ``__all__`` exists, nothing
public is missing from it, and the library never imports aiohttp."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import overlaystore

PACKAGE_DIR = Path(overlaystore.__file__).parent


def test_all_names_exist_and_are_sorted() -> None:
    for name in overlaystore.__all__:
        assert hasattr(overlaystore, name), name
    assert sorted(overlaystore.__all__, key=str.lower) == sorted(set(overlaystore.__all__), key=str.lower)


def test_every_reexport_is_in_all() -> None:
    exported = {
        name for name, value in vars(overlaystore).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("overlaystore.")
    }
    assert exported <= set(overlaystore.__all__)


def test_every_module_imports() -> None:
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        importlib.import_module(f"overlaystore.{info.name}")


def test_library_has_no_http() -> None:
    for path in PACKAGE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] in ("aiohttp", "server") for n in names), (path.name, names)
