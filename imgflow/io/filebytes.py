"""A file's bytes, read once, under the size cap; and Pillow's own pixel cap kept in step with ours.

Used by :mod:`imgflow.io.decode` inside the decode workers. Imports Pillow only.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from imgflow.errors import ItemError
from imgflow.io.decode_errors import Limits, too_large


def read_capped(path: Path, limits: Limits) -> bytes:
    """The file's bytes, refusing before reading when it is over the cap.

    Reads the size fstat reported plus one byte (``read(n)`` allocates n bytes up front, so never
    ask for the cap itself), then, only if the file grew meanwhile, more up to cap + 1 bytes.
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            info = os.fstat(fh.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(info.st_mode):
                raise ItemError(
                    "unreadable",
                    f"{path}: not a regular file (a FIFO, socket or device) (fix: narrow "
                    "[input] include so it is not picked up)",
                )
            if info.st_size > limits.max_file_bytes:
                raise too_large(str(path), info.st_size, limits)
            data = read_upto(fh, info.st_size, limits.max_file_bytes)
    except ItemError:
        raise
    except FileNotFoundError:
        raise ItemError(
            "unreadable", f"{path}: no such file (fix: check the path; was it moved or deleted?)"
        ) from None
    except IsADirectoryError:
        raise ItemError(
            "unreadable", f"{path}: is a directory, not an image file (fix: narrow [input] include)"
        ) from None
    except PermissionError:
        raise ItemError(
            "unreadable",
            f"{path}: permission denied (fix: make the file readable by the user running imgflow)",
        ) from None
    except OSError as exc:
        raise ItemError(
            "unreadable", f"{path}: cannot read the file: {exc.strerror or exc} (fix: check the disk)"
        ) from None
    if len(data) > limits.max_file_bytes:
        raise too_large(str(path), len(data), limits)
    return data


def read_upto(fh: io.BufferedReader, size: int, cap: int) -> bytes:
    """``size`` + 1 bytes, then 1 MiB chunks while the file keeps growing, stopping past ``cap``."""
    chunks = [fh.read(size + 1)]
    total = len(chunks[0])
    while total > size and total <= cap:
        chunk = fh.read(min(1024**2, cap + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


@contextmanager
def pillow_pixel_cap(max_pixels: int) -> Iterator[None]:
    """Make Pillow's own bomb check agree with ours for the duration of a decode.

    Pillow checks ``Image.MAX_IMAGE_PIXELS`` (a process global) on open and again while loading
    some formats. Left at its default (~89 MP) it would refuse images our cap allows; so while any
    decode runs it is set to the largest cap in use, and restored when the last one ends. Our own
    header check enforces each call's exact cap.
    """
    with _cap_lock:
        if not _active_caps:
            _saved_cap[0] = Image.MAX_IMAGE_PIXELS
        _active_caps.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = max(_active_caps)
    try:
        yield
    finally:
        with _cap_lock:
            _active_caps.remove(max_pixels)
            Image.MAX_IMAGE_PIXELS = max(_active_caps) if _active_caps else _saved_cap[0]


_cap_lock = threading.Lock()
_active_caps: list[int] = []
_saved_cap: list[int | None] = [Image.MAX_IMAGE_PIXELS]
