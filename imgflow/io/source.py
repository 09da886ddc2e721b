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
from imgflow.io import links

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
    """One input file found by the walk (or a matching entry that is refused: see ``refusal``).

    ``path`` is what to open. ``relpath`` is the exact relative name, ``/``-separated: a name that
    is not valid UTF-8 keeps each undecodable byte as a lone surrogate (``os.fsdecode``), so two
    different files never share a relpath (the state store keys such names as bytes; people see
    them escaped, see :mod:`imgflow.display`). ``size`` and ``mtime_ns`` let the state store
    notice a changed file.
    """

    path: Path
    relpath: str
    size: int
    mtime_ns: int
    refusal: tuple[str, str] | None = None  # (reason code, message): matched, but never to be read


def relpath_text(name: str) -> str:
    """A file-system name as valid UTF-8 text, for people: undecodable bytes shown as ``\\xNN``.

    Not a key: ``caf\\xe9.jpg`` could also be a real name. Keys keep the exact name (see
    :class:`SourceFile`).
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
    on_warning: Callable[[str], None] | None = None,
) -> Iterator[SourceFile]:
    """Yield the files under ``root`` that match ``include`` and not ``exclude``.

    Lazy: a generator that lists one directory at a time. Hidden names (``.imgflow`` state,
    ``.DS_Store``) are skipped; directories in ``skip_dirs`` (the output root inside the input
    root) are recognised by device and inode, so ``in/../in/out`` or a symlink to it is skipped
    too. Files that vanish during the walk are skipped; ``on_error(path, error)`` hears about
    them and about unreadable directories, for logging.

    Symlinks and special files follow :mod:`imgflow.io.links`: links (to files and folders
    alike) are followed while they stay inside the input folder. A matching entry that cannot be
    read as a file (a link leading outside, dangling or looping; a FIFO, socket or device) is
    yielded with ``refusal`` set, so it gets a record instead of vanishing; a folder that is not
    entered is reported to ``on_warning``.

    Raises :class:`ConfigError` at call time (not at the first ``next``) when ``root`` is missing,
    not a folder, or unreadable, because that is a configuration mistake, not a per-file one.
    """
    root_text = os.path.abspath(os.fspath(root))
    _check_root(root_text)
    wanted = compile_globs(include)
    unwanted = compile_globs(exclude)
    skipped = _dir_identities(skip_dirs)
    walk = _Walk(root_text, wanted, unwanted, recursive, skipped, on_error, on_warning)
    return walk.files()


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


@dataclass
class _Frame:
    """A folder being listed: its relpath prefix, what is left of its entries, its identity."""

    prefix: str
    entries: Iterator[os.DirEntry[str]]
    identity: tuple[int, int] | None


class _Walk:
    """Depth-first walk with an explicit stack of folders (see :func:`walk_inputs`)."""

    def __init__(self, root: str, wanted: Callable[[str], bool], unwanted: Callable[[str], bool],
                 recursive: bool, skipped: frozenset[tuple[int, int]], on_error: OnError | None,
                 on_warning: Callable[[str], None] | None) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self.wanted = wanted
        self.unwanted = unwanted
        self.recursive = recursive
        self.skipped = skipped
        self.on_error = on_error
        self.on_warning = on_warning
        self.stack: list[_Frame] = []

    def files(self) -> Iterator[SourceFile]:
        identity = _identity(self.root)
        if identity in self.skipped:
            return
        listing = _list_dir(self.root, self.on_error)
        if listing is None:
            return
        self.stack.append(_Frame("", iter(listing), identity))
        while self.stack:
            frame = self.stack[-1]
            entry = next(frame.entries, None)
            if entry is None:
                self.stack.pop()
                continue
            if entry.name.startswith("."):
                continue
            rel = frame.prefix + entry.name
            found = self._link(entry, rel) if entry.is_symlink() else self._plain(entry, rel)
            if found is not None:
                yield found

    def _plain(self, entry: os.DirEntry[str], rel: str) -> SourceFile | None:
        """A folder is entered; a file matching the globs is yielded (refused when not regular)."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:  # vanished since the listing
            if self.on_error is not None:
                self.on_error(Path(entry.path), exc)
            return None
        if stat.S_ISDIR(st.st_mode):
            self._enter(entry.path, rel, (st.st_dev, st.st_ino))
            return None
        if not self._matches(rel):
            return None
        if not stat.S_ISREG(st.st_mode):
            return _refused(entry.path, rel, st, links.special_file(entry.path, st.st_mode))
        return SourceFile(path=Path(entry.path), relpath=rel, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def _link(self, entry: os.DirEntry[str], rel: str) -> SourceFile | None:
        """A symlink: followed inside the input folder, refused (with a record or a warning) outside."""
        to = links.follow(entry.path, self.real_root)
        if to.is_dir:
            assert to.st is not None
            if not self.recursive or self.unwanted(rel + "/"):
                return None
            identity = (to.st.st_dev, to.st.st_ino)
            if identity in self.skipped:
                return None
            if not to.inside:
                self._warn(links.outside_folder(entry.path, to.target, self.real_root))
            elif any(frame.identity == identity for frame in self.stack):
                self._warn(links.looping_folder(entry.path, to.target))
            else:
                self._enter(entry.path, rel, identity)
            return None
        if not self._matches(rel):
            return None
        own = entry.stat(follow_symlinks=False)  # the link itself: its size and mtime key the record
        if to.st is None:
            assert to.error is not None
            return _refused(entry.path, rel, own, links.unreachable(entry.path, to.error))
        if not to.inside:
            return _refused(entry.path, rel, own, links.outside_file(entry.path, to.target, self.real_root))
        if not stat.S_ISREG(to.st.st_mode):
            return _refused(entry.path, rel, own, links.special_file(entry.path, to.st.st_mode))
        return SourceFile(path=Path(entry.path), relpath=rel, size=to.st.st_size, mtime_ns=to.st.st_mtime_ns)

    def _matches(self, rel: str) -> bool:
        return self.wanted(rel) and not self.unwanted(rel)

    def _enter(self, path: str, rel: str, identity: tuple[int, int]) -> None:
        if not self.recursive or identity in self.skipped:
            return
        children = _list_dir(path, self.on_error)
        if children is not None:
            self.stack.append(_Frame(rel + "/", iter(children), identity))

    def _warn(self, message: str) -> None:
        if self.on_warning is not None:
            self.on_warning(message)


def _refused(path: str, rel: str, st: os.stat_result, refusal: tuple[str, str]) -> SourceFile:
    """An entry that matched the globs but is not read: it gets a failed record, not silence."""
    return SourceFile(path=Path(path), relpath=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, refusal=refusal)


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


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
