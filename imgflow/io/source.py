"""Walking an input folder into work items, lazily and in a stable order.

The walk is a generator over ``os.scandir``: it holds one sorted listing per directory level it is
inside, never the whole tree, so a folder of millions of scans starts producing work at once and
memory stays bounded by the largest single directory. The order is deterministic (sorted names
within each directory, depth first) so two runs over the same tree see the same sequence, which
keeps logs, manifests and "first N items" runs comparable.

Globs are matched against the path relative to the input root, case-insensitively, because
scanners and cameras write ``.JPG`` as often as ``.jpg``:

``*``       any characters except ``/``
``?``       one character except ``/``
``[abc]``   one of the characters (``[!abc]`` or ``[^abc]``: none of them); never ``/``
``**``      as a whole path segment: any number of directories, including none
            (``**/*.png`` matches ``a.png`` and ``x/y/a.png``; ``raw/**`` matches all under raw/)

A pattern without ``/`` is matched against the whole relative path, like a shell glob run from
the input root: ``*.jpg`` matches top-level files only; write ``**/*.jpg`` for every depth.

This module does not import torch.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imgflow.errors import ConfigError

__all__ = [
    "DEFAULT_INCLUDE",
    "READABLE_EXTENSIONS",
    "SourceFile",
    "compile_globs",
    "relpath_text",
    "validate_glob",
    "walk_inputs",
]

#: The file name extensions of every format the decoder opens by default
#: (:data:`imgflow.io.decode.ALLOWED_FORMATS`), as Pillow registers them; a test keeps the two in
#: step. Written out so that walking a folder never imports Pillow.
READABLE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "JPEG": ("jpg", "jpeg", "jpe", "jfif"),
    "MPO": ("mpo",),
    "PNG": ("png", "apng"),
    "WEBP": ("webp",),
    "TIFF": ("tif", "tiff"),
    "BMP": ("bmp",),
    "GIF": ("gif",),
    "PPM": ("ppm", "pgm", "pbm", "pnm", "pfm"),
}

#: ``[input] include`` when a pipeline does not set it: every readable extension, at any depth.
DEFAULT_INCLUDE: tuple[str, ...] = tuple(
    f"**/*.{ext}" for extensions in READABLE_EXTENSIONS.values() for ext in extensions
)

OnError = Callable[[Path, OSError], None]


@dataclass(frozen=True)
class SourceFile:
    """One input file found by the walk.

    ``path`` is exact (it may hold undecodable bytes as surrogates) and is what to open;
    ``relpath`` is always valid UTF-8 text because it becomes the manifest key, a JSON string and a
    SQLite TEXT value. ``size`` and ``mtime_ns`` let the state store notice a changed file.
    """

    path: Path
    relpath: str
    size: int
    mtime_ns: int


def relpath_text(name: str) -> str:
    """A file-system name as valid UTF-8 text.

    Names that are not valid UTF-8 arrive from ``os.scandir`` with surrogate escapes, which cannot
    be encoded into JSON or SQLite; their raw bytes are shown as ``\\xNN`` instead. The mapping is
    stable, so the same file gets the same manifest key on every run.
    """
    return os.fsencode(name).decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- globs


def validate_glob(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable glob, or None when it is.

    Returned text is a problem plus a fix, for the pipeline validator to place after the key name.
    Checked here rather than at match time so that every bad pattern is reported before a run.
    """
    if not isinstance(pattern, str) or not pattern.strip():
        return "expected a glob such as '**/*.jpg', got an empty pattern"
    if "\x00" in pattern:
        return f"pattern {pattern!r} contains a NUL character; remove it"
    if "\\" in pattern:
        return (
            f"pattern {pattern!r} contains a backslash; write path separators as '/' "
            "and a literal special character inside brackets, e.g. '[[]'"
        )
    if pattern.startswith("/"):
        return (
            f"pattern {pattern!r} is absolute; globs are matched against paths relative to "
            "the input folder, so drop the leading '/'"
        )
    parts = _normalise(pattern).split("/")
    if ".." in parts:
        return f"pattern {pattern!r} contains '..'; globs cannot reach outside the input folder"
    try:
        _translate(_normalise(pattern))
    except ValueError as exc:
        return f"pattern {pattern!r}: {exc}"
    return None


def compile_globs(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A predicate telling whether a relative path matches any of ``patterns``.

    All patterns are compiled into one case-insensitive regular expression so a walk over many
    files costs one regex match per file however many patterns there are. No patterns means
    nothing matches. Raises :class:`ConfigError` for an invalid pattern.
    """
    if isinstance(patterns, str):  # a lone string would otherwise be read character by character
        patterns = [patterns]
    problems = [msg for msg in (validate_glob(p) for p in patterns) if msg]
    if problems:
        raise ConfigError("; ".join(problems))
    if not patterns:
        return lambda relpath: False
    body = "|".join(f"(?:{_translate(_normalise(p))})" for p in patterns)
    regex = re.compile(rf"(?:{body})\Z", re.IGNORECASE | re.DOTALL)
    return lambda relpath: regex.match(relpath) is not None


def _normalise(pattern: str) -> str:
    """Drop a leading ``./`` and repeated slashes, which users write but which change nothing."""
    while pattern.startswith("./"):
        pattern = pattern[2:]
    return re.sub("/{2,}", "/", pattern)


def _translate(pattern: str) -> str:
    """The regular expression for one normalised glob (see the module docstring)."""
    segments = pattern.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        # A "**" segment already ends with its own slash, so whatever follows it adds none.
        after_globstar = index > 0 and segments[index - 1] == "**"
        sep = "" if index == 0 or after_globstar else "/"
        if segment == "**":
            # Last: everything below ("raw/**"); elsewhere: zero or more whole directories.
            out.append(sep + (".*" if index == len(segments) - 1 else "(?:[^/]*/)*"))
        else:
            out.append(sep + _translate_segment(segment))
    return "".join(out)


def _translate_segment(segment: str) -> str:
    """Regex for one path segment: ``*``, ``?`` and ``[...]`` never match ``/``."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        char = segment[i]
        if char == "*":
            while i + 1 < n and segment[i + 1] == "*":  # "a**b" inside a segment is just "*"
                i += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end, cls = _bracket(segment, i)
            out.append(cls)
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _bracket(segment: str, start: int) -> tuple[int, str]:
    """Parse ``[...]`` starting at ``start``; return the index of ``]`` and the regex class."""
    i = start + 1
    negate = i < len(segment) and segment[i] in "!^"
    if negate:
        i += 1
    first = i
    while i < len(segment) and (segment[i] != "]" or i == first):
        i += 1
    if i >= len(segment):
        raise ValueError("unclosed '[' (close it with ']', or write '[[]' for a literal '[')")
    body = segment[first:i]
    # Escape what is special inside a regex class but keep ranges ("a-z") working.
    for special in "\\[]^&~|":
        body = body.replace(special, "\\" + special)
    return i, (f"[^/{body}]" if negate else f"(?!/)[{body}]")


# --------------------------------------------------------------------------- the walk


def walk_inputs(
    root: Path,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    recursive: bool = True,
    skip_dirs: Sequence[Path] = (),
    *,
    on_error: OnError | None = None,
) -> Iterator[SourceFile]:
    """Yield the files under ``root`` that match ``include`` and not ``exclude``.

    Lazy: a generator that lists one directory at a time. Hidden names (``.imgflow`` state,
    ``.DS_Store``) are skipped; symlinked directories are not entered (loops), symlinked files are
    yielded; directories in ``skip_dirs`` (the output root inside the input root) are recognised by
    device and inode, so ``in/../in/out`` or a symlink to it is skipped too. Files that vanish or
    cannot be stat'ed during the walk are skipped; ``on_error(path, error)`` hears about them and
    about unreadable directories, for logging.

    Raises :class:`ConfigError` at call time (not at the first ``next``) when ``root`` is missing,
    not a folder, or unreadable, because that is a configuration mistake, not a per-file one.
    """
    root_text = os.path.abspath(os.fspath(root))
    _check_root(root_text)
    wanted = compile_globs(include)
    unwanted = compile_globs(exclude)
    skipped = _dir_identities(skip_dirs)
    return _walk(root_text, wanted, unwanted, recursive, skipped, on_error)


def _check_root(root: str) -> None:
    """Fail early, naming the folder and the fix, when the input root cannot be walked."""
    where = f"input folder {root}"
    if not os.path.exists(root):
        raise ConfigError(f"{where}: does not exist (fix: check [input] path or --input)")
    if not os.path.isdir(root):
        raise ConfigError(f"{where}: is a file, not a folder (fix: point [input] path at a folder)")
    try:
        with os.scandir(root):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{where}: cannot be read ({exc.strerror}) (fix: check its permissions)"
        ) from exc


def _dir_identities(dirs: Sequence[Path]) -> frozenset[tuple[int, int]]:
    """(st_dev, st_ino) of each existing directory: the same folder under any spelling."""
    found: set[tuple[int, int]] = set()
    for directory in dirs:
        try:
            st = os.stat(directory)
        except OSError:
            continue  # an output root that does not exist yet cannot be inside the walk
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


def _walk(
    root: str,
    wanted: Callable[[str], bool],
    unwanted: Callable[[str], bool],
    recursive: bool,
    skipped: frozenset[tuple[int, int]],
    on_error: OnError | None,
) -> Iterator[SourceFile]:
    """Depth-first walk with an explicit stack of (directory relpath, remaining entries)."""
    if _identity(root) in skipped:
        return
    stack: list[tuple[str, Iterator[os.DirEntry[str]]]] = []
    listing = _list_dir(root, on_error)
    if listing is None:
        return
    stack.append(("", iter(listing)))
    while stack:
        prefix, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if entry.name.startswith("."):
            continue
        rel = prefix + relpath_text(entry.name)
        if _is_real_dir(entry):
            if not recursive or _entry_identity(entry) in skipped:
                continue
            children = _list_dir(entry.path, on_error)
            if children is not None:
                stack.append((rel + "/", iter(children)))
            continue
        if not wanted(rel) or unwanted(rel):
            continue
        found = _source_file(entry, rel, on_error)
        if found is not None:
            yield found


def _list_dir(path: str, on_error: OnError | None) -> list[os.DirEntry[str]] | None:
    """One directory's entries sorted by name, or None when it cannot be read (e.g. vanished).

    The listing is read completely and the handle closed before anything is yielded, so no file
    descriptors stay open while the consumer works on an item.
    """
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        if on_error is not None:
            on_error(Path(path), exc)
        return None


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    """A directory that is not a symlink: symlinked directories could loop back up the tree."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _entry_identity(entry: os.DirEntry[str]) -> tuple[int, int] | None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _source_file(entry: os.DirEntry[str], rel: str, on_error: OnError | None) -> SourceFile | None:
    """Stat a matching entry (following a file symlink); None when it is gone or not a file."""
    try:
        st = entry.stat()  # follows symlinks: a linked file is read through the link
    except OSError as exc:
        if on_error is not None:
            on_error(Path(entry.path), exc)
        return None
    if not stat.S_ISREG(st.st_mode):
        return None  # a symlink to a directory, a FIFO or a device: nothing to decode
    return SourceFile(path=Path(entry.path), relpath=rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
