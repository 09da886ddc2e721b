"""Text files written atomically from a stream: manifest.jsonl and run-summary.json.

A reader (a person, a script, the next run) sees the old file or the whole new one, never a torn
one, and the writer streams: a manifest of a million lines never sits in memory.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_text_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write a file so a reader sees the old one or the whole new one, never a torn one.

    Temp file in the same folder (so rename is atomic), fsync, rename, fsync of the folder (so
    the rename itself survives a power cut). The temp file is removed on any error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        # backslashreplace: a lone surrogate inside a JSON string becomes the JSON escape \udcxx,
        # exactly what json.dumps(ensure_ascii=True) would write, so every line stays valid.
        with open(fd, "w", encoding="utf-8", errors="backslashreplace", newline="\n") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside ``path``, created like the images (mode 0666 less the umask).

    Not ``tempfile.mkstemp``: its 0600 would make manifest.jsonl and run-summary.json readable by
    their owner only, while the images beside them follow the umask (usually 0644).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def fsync_dir(folder: Path) -> None:
    """Make a rename durable; some platforms cannot open folders, which is fine to ignore."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)

