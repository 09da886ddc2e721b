"""Writing the report's files: atomically, only when they changed, one writer at a time."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

REPORT_LOCK = Path(".imgflow") / "report.lock"


def write_if_changed(root: Path, relpath: str, data: bytes) -> bool:
    """Write ``root/relpath`` atomically unless it already holds exactly ``data``; True if written.

    A rerun of the report over a large output then rewrites only the pages that changed, and
    spends no fsync on the rest.
    """
    from imgflow.io.atomic import atomic_write

    target = Path(root) / relpath
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return False
    except OSError:
        pass
    atomic_write(Path(root), relpath, data)
    return True


@contextlib.contextmanager
def report_lock(output_root: Path) -> Iterator[None]:
    """Hold ``.imgflow/report.lock``: a run's report and ``imgflow report`` never interleave.

    The report only reads the state store, so it does not need (and does not take) the run's
    output lock: ``imgflow report`` works while a run is going. Two report writers at once could
    still remove each other's fresh thumbnails, hence this lock of their own (flock, so the
    kernel drops it if the holder dies). Where flock does not exist, reports are not serialised.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(output_root) / REPORT_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
