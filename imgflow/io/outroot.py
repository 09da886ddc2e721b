"""The output root before and after a run: can it be written, creating it, undoing a failed start.

A folder that cannot be written (read-only, immutable, on a read-only mount, or below a file) is
a configuration mistake: ``imgflow validate`` reports it from :func:`output_folder_problem`
without creating anything, and a run checks the same before it creates anything. What can only
fail while the folder is being made (a race, a full disk) becomes a :class:`ConfigError` naming
the folder and the fix in :func:`make_output_root`, never an internal error.

A run that stops on a configuration error on a folder it created itself removes what it made
(:func:`remove_created`), so a mistyped pipeline leaves no empty output tree behind.

Imports nothing heavy.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from imgflow.errors import ConfigError
from imgflow.state import statedir

# The files a run makes in an output root before it writes any output (see imgflow.state).
RUN_FILES = ("manifest.jsonl", "run-summary.json")
STATE_FILES = tuple(f"{statedir.STATE_DIR}/{name}" for name in statedir.STATE_FILES)


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (``/`` at worst)."""
    current = path
    while not os.path.lexists(current) and current.parent != current:
        current = current.parent
    return current


def output_folder_problem(path: Path) -> tuple[str, str] | None:
    """Why ``path`` cannot be an output root, as (problem, fix); None when it can.

    Checks without creating anything: the path (or the folder that would hold it) must be a
    folder this user may write in. ``os.access`` asks the kernel, so read-only mounts and
    immutable folders count as not writable, as do permissions (except for root, whom they do
    not stop either).
    """
    existing = _nearest_existing(path)
    if existing == path and not path.is_dir():
        return f"{path} exists and is not a folder", "choose a folder path"
    if not existing.is_dir():
        return (f"{path} would be inside {existing}, which is a file, not a folder",
                "choose an output path that is not below a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = f"the output folder {path}" if existing == path else f"{existing} (where it would be created)"
        return (f"{what} is not writable ({_why_not_writable(existing)})",
                "choose a folder you can write to, or change its permissions or mount options")
    state = path / ".imgflow"
    if os.path.lexists(state) and not os.path.isdir(state):
        return (f"{state} is a file where imgflow keeps its state folder",
                "move or remove that file, or choose another output folder")
    if state.is_dir() and not os.access(state, os.W_OK | os.X_OK):
        return (f"{state} (imgflow's state) is not writable ({_why_not_writable(state)})",
                "make it writable by the user running imgflow")
    return None


def _why_not_writable(folder: Path) -> str:
    """Read-only file system, immutable, or permissions: the reason the kernel gives."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    except OSError:
        pass
    return "permission denied or immutable"


def check_output_root(path: Path) -> None:
    """Raise ConfigError, naming the folder and the fix, when ``path`` cannot be an output root."""
    problem = output_folder_problem(path)
    if problem:
        reason, fix = problem
        raise ConfigError(f"[output] path: {reason} (fix: {fix})")


def make_output_root(path: Path) -> list[Path]:
    """Create ``path`` (and missing parents); return the folders created, outermost first.

    Every OS error is a ConfigError naming the folder: it is a setting to change, not a bug.
    """
    missing: list[Path] = []
    current = path
    while not os.path.lexists(current) and current.parent != current:
        missing.append(current)
        current = current.parent
    missing.reverse()
    try:
        for folder in missing:
            try:
                os.mkdir(folder)
            except FileExistsError:  # made by someone else meanwhile: not ours to remove later
                missing = [f for f in missing if f != folder]
    except OSError as exc:
        raise ConfigError(f"[output] path: cannot create {exc.filename or path}: {_reason(exc)} "
                          "(fix: choose a folder you can write to)") from exc
    return missing


def startup_error(path: Path, exc: OSError) -> ConfigError:
    """An OS error while a run takes over its output root (lock, state), as a ConfigError."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        return ConfigError(f"[output] path: {exc.filename or path} is a file where imgflow needs a folder "
                           "(fix: move or remove that file, or choose another output folder)")
    return ConfigError(f"[output] path: cannot use {exc.filename or path}: {_reason(exc)} "
                       "(fix: make the output folder writable by the user running imgflow, or choose "
                       "another)")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a folder"
    return exc.strerror or str(exc)


def remove_created(root: Path, created: Iterable[Path]) -> None:
    """Undo a run's start on a folder it created: its state and run files, then empty folders.

    Only what a run makes before its first output is removed, and a folder only when it is
    empty, so nothing anyone else put there is ever deleted. Call it while holding the output
    lock (the lock file goes too; a waiting run notices and takes a fresh one).
    """
    for rel in (*RUN_FILES, *STATE_FILES):
        try:
            os.unlink(root / rel)
        except OSError:
            pass
    for folder in [root / ".imgflow", *reversed(list(created))]:
        try:
            os.rmdir(folder)
        except OSError:
            pass
