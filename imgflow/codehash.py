"""A hash of source code, for plugins under development (the pipeline fingerprint's ``code``).

The fingerprint that decides what a rerun redoes covers a plugin's *version*, not its code: a
plugin author who edits ``process()`` without bumping the version would see every finished item
skipped. A stage can opt in to having its code in the fingerprint (``fingerprint_code = True``),
or put :func:`code_hash` of whatever it depends on into :meth:`imgflow.Stage.fingerprint`.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["code_hash"]


def code_hash(*targets: Any) -> str:
    """sha256 (16 hex digits) of the source files behind ``targets``.

    A target is a module (a package counts with every ``.py`` file below its folder), a class or
    function (its top-level package, so a helper module's edit counts too), or a path to a file or
    a folder (every file in it, e.g. a data folder). Files are read in a stable order, by path
    relative to their root, so the hash is the same on every machine with the same files.
    """
    digest = hashlib.sha256()
    for root, files in sorted((_files_of(target) for target in targets), key=lambda pair: str(pair[0])):
        for path in files:
            digest.update(str(path.relative_to(root)).encode("utf-8", "surrogateescape") + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _files_of(target: Any) -> tuple[Path, list[Path]]:
    """(root folder, sorted files) behind one target."""
    if isinstance(target, str | Path):
        path = Path(target).resolve()
    else:
        if not isinstance(target, ModuleType):  # a class or function: its top-level package
            target = sys.modules[inspect.getmodule(target).__name__.split(".")[0]]
        module = target
        path = Path(inspect.getfile(module)).resolve()
        if path.name == "__init__.py":
            path = path.parent
        if path.is_dir():
            return path, sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
    if path.is_dir():
        return path, sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return path.parent, [path]
