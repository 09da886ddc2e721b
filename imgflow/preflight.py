"""Checks a pipeline gets before anything runs: the files its stages name, the weights they need.

``imgflow validate`` must find what is wrong without loading anything, and a run must stop before
its first image rather than fail every item. A stage states what it needs in
:meth:`imgflow.Stage.preflight`, as :class:`Notice` s:

- an error (``error=True``): a file a parameter names does not exist (weights, a style image, a
  labels CSV, a hints folder). ``validate`` and ``run`` both stop with exit code 2.
- a warning: weights the run will download first (a registered model not in the cache yet),
  naming the ``imgflow models pull`` / ``import`` command for a machine without internet.
  ``validate`` prints it; a run goes ahead and downloads.

:func:`weights_notices` and :func:`file_notices` are what stages use to say so. Nothing here
imports torch or reads more than a file's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgflow.errors import Notice

__all__ = ["Notice", "file_notices", "weights_notices"]


def file_notices(path: Path, what: str, fix: str, *, folder: bool = False) -> list[Notice]:
    """An error when ``path`` (a file, or with ``folder`` a folder) does not exist."""
    exists = path.is_dir() if folder else path.is_file()
    if exists:
        return []
    kind = "folder" if folder else "file"
    return [Notice(f"{what} {os.path.normpath(path)} does not exist or is not a {kind}", fix)]


def weights_notices(source: str | Path, param: str = "weights", keywords: tuple[str, ...] = ()) -> list[Notice]:
    """What a stage's weights need before a run (see the module docstring).

    ``source`` is what :func:`imgflow.models.resolve_weights` returned: a keyword (nothing to
    check), a registered name (cached, or a warning naming the download and the import command),
    a URL (a warning unless cached), or a local path (an error unless the file exists).
    """
    from imgflow import models
    from imgflow.models.registry import unknown_message

    if isinstance(source, Path):
        if source.is_file():
            return []
        hint = ""
        if "/" not in source.name and not source.suffix:  # "colorize-sigraph17": a name, not a file?
            hint = "; " + unknown_message(source.name, list(models.registry())).split(" (fix:")[0]
        return [Notice(f"{param}: {os.path.normpath(source)} does not exist{hint}",
                       "check the path (relative paths are relative to the pipeline file), or use a "
                       "registered model name (imgflow models list)")]
    if source in keywords:
        return []
    if models.is_url(source):
        cached = models.cache_dir() / source.rsplit("/", 1)[-1]
        if cached.is_file():
            return []
        return [Notice(f"{param}: {source} is not in the weights cache; the run downloads it first",
                       f"on a machine without internet, download it elsewhere and copy it to {cached}", error=False)]
    spec = models.get(source)
    if models.is_cached(spec):
        return []
    size = spec.size or spec.approx_size
    about = f", about {size / 1e6:.0f} MB" if size else ""
    return [Notice(f"{param}: model '{spec.name}' is not in the cache ({models.cache_path(spec)}); the run "
                   f"downloads it first{about}",
                   f"imgflow models pull {spec.name}; on a machine without internet, download {spec.url} "
                   f"elsewhere and run imgflow models import {spec.name} FILE", error=False)]
