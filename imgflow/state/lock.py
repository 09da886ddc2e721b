"""One run per output folder: an exclusive lock the kernel releases when its holder dies.

Two runs writing one output folder would race on the same names and the same state database, so
a run takes ``<output>/.imgflow/lock`` first. The lock is ``flock(LOCK_EX)`` on that file, not
the file's existence: when the holder exits, crashes or is SIGKILLed, the kernel drops the lock,
so there is never a stale lock to delete by hand. The file's content (pid, start time, host,
command) is only there to tell the next person *who* holds it; it is cleared on a clean release
and ignored when the lock is free.

Caveats worth knowing: flock belongs to the open file, which ``fork`` shares, so a process forked
while the lock is held keeps it held until it exits too (start worker pools with "spawn" or
"forkserver", or before taking the lock). On NFS, Linux maps flock onto NFS byte-range locks,
which works between clients of one server.

This module does not import torch.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from imgflow.errors import LockBusy
from imgflow.state.statedir import checked_state_dir

__all__ = ["LOCK_NAME", "LockHolder", "OutputLock", "lock_holder"]

LOCK_NAME = Path(".imgflow") / "lock"
_POLL_S = 0.1
# A non-waiting attempt retries this long before giving up, so that a status probe holding the
# lock shared for a microsecond (lock_holder) never makes a real run fail.
_GRACE_S = 0.05


@dataclass(frozen=True)
class LockHolder:
    """Who holds an output lock, as the holder wrote it when it took the lock."""

    pid: int | None
    started: str  # local time with offset, e.g. "2025-01-31T02:00:05+01:00"; "" when unknown
    host: str
    command: str

    def describe(self) -> str:
        """A short phrase for messages: "pid 4242, started 2025-...T02:00:05+01:00 on host"."""
        if self.pid is None:
            return "pid unknown"
        text = f"pid {self.pid}"
        if self.started:
            text += f", started {self.started}"
        if self.host and self.host != socket.gethostname():
            text += f" on {self.host}"
        return text


class OutputLock:
    """Context manager holding ``<root>/.imgflow/lock`` exclusively for one run.

    ``wait=False``: raise :class:`LockBusy` at once (after a 50 ms grace) when another run holds
    it. ``wait=True``: poll until it is free, or until ``timeout_s`` seconds have passed (None:
    forever), then raise :class:`LockBusy`. Not re-entrant: a second ``OutputLock`` on the same
    folder, even in this process, is another run and finds it busy.
    """

    def __init__(self, root: Path, wait: bool = False, timeout_s: float | None = None) -> None:
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.path = self.root / LOCK_NAME
        self.wait = wait
        self.timeout_s = timeout_s
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True between a successful acquire and the release."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`LockBusy`; see the class docstring for waiting."""
        if self._fd is not None:
            raise RuntimeError(f"the output lock on {self.root} is already held by this object")
        checked_state_dir(self.root)  # a symlinked .imgflow would move the lock elsewhere
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                self._take(fd)
                if not self._still_linked(fd):  # removed by the run we waited for: take a fresh one
                    os.close(fd)
                    continue
                _write_holder(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def _still_linked(self, fd: int) -> bool:
        """Whether the file we locked is still the one at our path.

        A first run that stops on a configuration error removes the output tree it created,
        lock file included (imgflow.io.outroot.remove_created); a run that waited on that file
        then holds a lock nobody else can see, so it must start over with the new file.
        """
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (here.st_dev, here.st_ino)

    def release(self) -> None:
        """Clear the holder note and drop the lock. Safe to call when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # a free lock names no one
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _take(self, fd: int) -> None:
        """Poll flock(LOCK_EX|LOCK_NB) until it succeeds or the allowed time is over."""
        started = time.monotonic()
        if not self.wait:
            limit = _GRACE_S
        else:
            limit = self.timeout_s if self.timeout_s is not None else float("inf")
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= limit:
                raise self._busy(fd, waited)
            time.sleep(min(_POLL_S if self.wait else 0.01, max(limit - waited, 0.0)))

    def _busy(self, fd: int, waited: float) -> LockBusy:
        """The message a user sees: which folder, who holds it, and what to do."""
        holder = _read_holder(fd)
        who = holder.describe() if holder else "pid unknown"
        if self.wait:
            return LockBusy(
                f"output folder {self.root} is still in use by another imgflow run ({who}) after "
                f"waiting {waited:.0f} s (fix: wait for that run to finish, raise the wait "
                "timeout, or write to another output folder)"
            )
        return LockBusy(
            f"output folder {self.root} is in use by another imgflow run ({who}) "
            "(fix: wait for that run to finish, or run again with --wait to start when it does)"
        )


def lock_holder(root: Path) -> LockHolder | None:
    """Who holds the lock on ``root`` right now, or None when no run holds it.

    For ``imgflow status``. It probes with a shared lock for an instant, which a run starting at
    that very moment tolerates (see ``_GRACE_S``); it never creates the lock file.
    """
    path = Path(os.path.abspath(os.fspath(root))) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or LockHolder(pid=None, started="", host="", command="")
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _write_holder(fd: int) -> None:
    """Record who we are in the lock file, for the message another run will show."""
    note = {
        "pid": os.getpid(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": " ".join(sys.argv)[:500],
    }
    data = (json.dumps(note) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> LockHolder | None:
    """Parse the holder note; None when it is empty or half-written."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        note = json.loads(text)
        pid = note.get("pid")
        return LockHolder(
            pid=pid if isinstance(pid, int) else None,
            started=str(note.get("started", "")),
            host=str(note.get("host", "")),
            command=str(note.get("command", "")),
        )
    except (OSError, ValueError, AttributeError):
        return None
