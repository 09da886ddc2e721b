"""Writing files under the output root so that nothing is ever partial and nothing escapes.

* Nothing is written outside the output root: every target goes through :func:`safe_target`,
  which refuses ``..``, absolute paths, NUL bytes and symlinked folders that lead out.
* No partial file ever sits under a final name: :func:`atomic_write` writes a hidden temp file in
  the same folder, fsyncs it, renames it into place and fsyncs the folder, so a run killed at any
  instant leaves either the old file, the new file, or a stray temp file that
  :func:`sweep_temp_files` removes on the next run.

Imports nothing heavy.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from imgflow.errors import ItemError

TEMP_MARKER = ".imgflow-tmp-"


# --------------------------------------------------------------------------- safe targets


def safe_target(root: Path, relpath: str) -> Path:
    """The absolute path for ``relpath`` under ``root``, with its missing folders created.

    Raises ``ItemError("write_error")`` when the path would land outside ``root``: an absolute
    path, a ``..`` part, a NUL byte, or an existing folder component that is a symlink resolving
    outside ``root``. Folders are created one level at a time after that check, so a symlink that
    leads out can never make us create anything outside. (Symlinks inside the root that stay
    inside are followed: people link sub-folders to other disks of the same tree.)
    """
    root_text = os.path.abspath(os.fspath(root))
    parts = _checked_parts(root_text, relpath)
    try:
        os.makedirs(root_text, exist_ok=True)
        real_root = os.path.realpath(root_text)
        current = root_text
        for part in parts[:-1]:
            current = os.path.join(current, part)
            _enter_folder(current, real_root, relpath)
    except OSError as exc:
        raise ItemError(
            "write_error",
            f"{os.path.join(root_text, *parts)}: cannot create its folder ({_os_reason(exc)}) "
            "(fix: check that the output folder is writable)",
        ) from exc
    return Path(root_text, *parts)


def _checked_parts(root: str, relpath: str) -> list[str]:
    """Split ``relpath`` into names, refusing anything that points outside ``root``."""
    problem = None
    if not relpath or "\x00" in relpath:
        problem = "is empty or contains a NUL byte"
    elif relpath.startswith("/") or os.path.isabs(relpath):
        problem = "is absolute"
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if problem is None and ".." in parts:
        problem = "contains '..'"
    if problem is None and not parts:
        problem = "names no file"
    if problem:
        raise ItemError(
            "write_error",
            f"output path {relpath!r} {problem}; outputs must stay inside {root} "
            "(fix: check the [output] naming template or the stage that chose this path)",
        )
    return parts


def _enter_folder(path: str, real_root: str, relpath: str) -> None:
    """Make sure ``path`` is a folder inside the root, creating it when missing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            os.mkdir(path)
        except FileExistsError:  # another writer thread made it first
            pass
        st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
        if not _is_within(real, real_root):
            raise ItemError(
                "write_error",
                f"output path {relpath!r}: folder {path} is a symlink to {real}, outside the "
                f"output folder {real_root} (fix: remove the link or choose another output folder)",
            )
        if not os.path.isdir(real):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    elif not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# --------------------------------------------------------------------------- atomic writes


def atomic_write(root: Path, relpath: str, data: bytes, *, replace: bool = True) -> Path:
    """Write ``data`` to ``root/relpath`` so that the final name only ever holds complete files.

    Temp file in the same folder (same file system, so the rename is atomic), created with
    O_EXCL|O_NOFOLLOW so it can neither clobber nor follow anything; fsync of the file before the
    rename and of the folder after it, so a power cut cannot leave a renamed-but-empty file.
    With ``replace=False`` the file is linked into place, which fails atomically when the name
    exists (``ItemError("output_exists")``) even if another process races us. Any OS error is
    ``ItemError("write_error")`` naming the path, and the temp file is removed.

    It is :func:`stage_file` then :func:`commit_file`; the Ray executor runs the two halves in
    different processes (workers stage, the driver commits).
    """
    target = safe_target(root, relpath)
    if not replace and os.path.lexists(target):
        raise _exists_error(target)
    return commit_file(stage_file(root, relpath, data), target, replace=replace)


def stage_file(root: Path, relpath: str, data: bytes) -> str:
    """Write ``data`` to a fsynced hidden temp file beside ``root/relpath``; return its path.

    Nothing appears under the final name; a run killed now leaves only the temp file, which
    :func:`sweep_temp_files` removes on the next run. Errors are ``ItemError("write_error")``.
    """
    target = safe_target(root, relpath)
    folder, name = os.path.split(os.fspath(target))
    temp = os.path.join(folder, _temp_name(name))
    try:
        _write_synced(temp, data)
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    return temp


def commit_file(temp: str, target: Path, *, replace: bool, sync: bool = True) -> Path:
    """Rename a staged temp file to ``target`` (its own folder) and fsync the folder.

    ``replace=False`` links instead, failing with ``output_exists`` when the name is taken. The
    temp file is removed whatever happens. ``sync=False`` leaves the folder's fsync to the
    caller (:func:`sync_folder`), who can then persist many renames in one folder at once.
    """
    folder = os.path.dirname(os.fspath(target))
    try:
        if replace:
            os.replace(temp, target)
        else:
            _link_into_place(temp, os.fspath(target))
        if sync:
            _fsync_folder(folder)
    except BaseException as exc:
        _remove_quietly(temp)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from exc
        raise
    return target


def sync_folder(folder: Path) -> None:
    """Persist the renames done in ``folder``; an OS error is ``ItemError("write_error")``."""
    try:
        _fsync_folder(os.fspath(folder))
    except OSError as exc:
        raise _write_error(folder, exc) from exc


def discard_file(temp: str) -> None:
    """Remove a staged temp file that will not be committed."""
    _remove_quietly(temp)


def _write_error(target: Path, exc: OSError) -> ItemError:
    """An OS error while writing ``target``, as ``ItemError("write_error")`` naming the path."""
    return ItemError(
        "write_error",
        f"{target}: cannot write ({_os_reason(exc)}) "
        "(fix: check that the output folder is writable and the disk has space)",
    )


def _temp_name(name: str) -> str:
    """``.{name}.imgflow-tmp-<random>``, shortened so it fits the 255-byte name limit."""
    raw = os.fsencode(name)[:200]
    return "." + os.fsdecode(raw) + TEMP_MARKER + secrets.token_hex(6)


def _write_synced(path: str, data: bytes) -> None:
    """Create ``path`` exclusively (never following a link), write everything, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)  # the umask decides, as for any file the user creates
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _link_into_place(temp: str, target: str) -> None:
    """No-clobber rename: ``link`` fails if the target exists, then drop the temp name."""
    try:
        os.link(temp, target, follow_symlinks=False)
    except FileExistsError:
        raise _exists_error(Path(target)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        # File systems without hard links (FAT, some FUSE): check-then-rename is the best left.
        if os.path.lexists(target):
            raise _exists_error(Path(target)) from None
        os.replace(temp, target)
        return
    os.unlink(temp)


def _exists_error(target: Path) -> ItemError:
    return ItemError(
        "output_exists",
        f"{target}: already exists and this run does not overwrite outputs "
        '(fix: set [output] overwrite = "replace", or delete the file)',
    )


def _fsync_folder(folder: str) -> None:
    """Persist the rename itself. Some file systems cannot fsync a folder; that is not an error."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def sweep_temp_files(root: Path) -> int:
    """Remove temp files a killed run left under ``root``; return how many were removed.

    Call it only while holding the output lock: another run's temp files are in use. Only regular
    files named ``.<name>.imgflow-tmp-<hex>`` are touched, and symlinked folders are not entered.
    """
    count = 0
    for folder, _dirs, files in os.walk(os.fspath(root), followlinks=False):
        for name in files:
            if not (name.startswith(".") and TEMP_MARKER in name):
                continue
            path = os.path.join(folder, name)
            try:
                if stat.S_ISREG(os.lstat(path).st_mode):
                    os.unlink(path)
                    count += 1
            except OSError:
                continue  # gone already, or not ours to remove: nothing to clean
    return count


