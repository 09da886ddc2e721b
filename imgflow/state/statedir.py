"""The output root's ``.imgflow`` folder: where the state database and the lock live, never elsewhere.

imgflow writes nothing outside the output root, and follows no symlink out of it. A ``.imgflow``
that is a symlink (planted, or left by a copy tool) would send the state database and the lock
wherever it points: another run's store could be overwritten, or two output folders would share
one lock. So a symlink there, or at a file imgflow keeps inside it, is refused with a
configuration error (exit 2) naming the link and the fix, before anything is opened or created.

This module does not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgflow.errors import ConfigError

STATE_DIR = ".imgflow"
#: The files imgflow keeps in the state folder (SQLite adds ``-wal`` and ``-shm`` beside its file).
STATE_FILES = ("lock", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "manifest.stamp", "mp-tempdir")


def checked_state_dir(root: Path) -> Path:
    """``<root>/.imgflow``, after refusing a symlink at it or at any file imgflow keeps in it.

    It may not exist yet (the caller creates it); anything there that is not a real folder is
    refused too. Raises :class:`ConfigError`.
    """
    folder = Path(root) / STATE_DIR
    _refuse_link(folder, "the state folder")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder: imgflow keeps its state database and lock "
                          "there (fix: remove or rename that file; imgflow creates the folder itself)")
    for name in STATE_FILES:
        _refuse_link(folder / name, "a state file")
    return folder


def _refuse_link(path: Path, what: str) -> None:
    if not path.is_symlink():
        return
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    raise ConfigError(
        f"{path} is a symbolic link (to {target}), where imgflow keeps {what}: state and locks stay "
        "inside the output folder, and imgflow follows no link out of it (fix: remove the link; "
        "imgflow creates what it needs itself)")
