"""Symbolic links and special files met by the input walk: one policy, and what to tell people.

**Policy: imgflow reads only what lies inside the input folder.** A symbolic link, to a file or
to a folder alike, is followed when its target is inside the input folder (after resolving every
link on the way) and refused when it leads outside. So a link cannot make a run read, and copy
into its outputs, a file from elsewhere on the machine; to process files from several places,
point ``[input] path`` at a folder that holds them all.

What is not followed is never silent:

* a file-like entry that matches ``include`` (a link leading outside, a dangling link, a link
  loop, a FIFO, socket or device) becomes a failed item with a message and the fix, so it is in
  the manifest and ``imgflow status``;
* a folder that is not entered (a link leading outside, a link to a folder that contains it)
  produces a warning naming it, since a folder is not an item.

Imports nothing heavy.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

#: Reason code of an input refused because a symlink leads outside the input folder.
OUTSIDE_INPUT = "outside_input"
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class Followed:
    """Where a symlink leads: its target's stat (None when it cannot be reached) and path."""

    st: os.stat_result | None
    target: str
    inside: bool
    error: OSError | None = None

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)


def follow(path: str, real_root: str) -> Followed:
    """Resolve the symlink at ``path``; ``inside`` tells whether it stays under ``real_root``."""
    target = os.path.realpath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        return Followed(None, target, within(target, real_root), exc)
    return Followed(st, target, within(target, real_root))


def within(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def outside_file(path: str, target: str, root: str) -> tuple[str, str]:
    """(code, message) for a file link that leads outside the input folder."""
    return OUTSIDE_INPUT, (
        f"{path}: a symbolic link to {target}, outside the input folder {root}; imgflow reads only "
        "what is inside the input folder (fix: copy the file into the input folder, or point "
        "[input] path at a folder that contains both)")


def unreachable(path: str, exc: OSError) -> tuple[str, str]:
    """(code, message) for a dangling link or a link loop."""
    if exc.errno == errno.ELOOP:
        return UNREADABLE, (f"{path}: a symbolic link that loops back on itself (fix: remove the link or "
                            "point it at a file)")
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return UNREADABLE, (f"{path}: a symbolic link to {target}, which does not exist (fix: restore the "
                        "file it points to, or remove the link)")


def special_file(path: str, mode: int) -> tuple[str, str]:
    """(code, message) for a FIFO, socket or device that matched the include globs."""
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return UNREADABLE, (f"{path}: {kind}, not an image file; it is never opened (fix: move it out of the "
                        "input folder, or leave it out with [input] exclude)")


def outside_folder(path: str, target: str, root: str) -> str:
    """Warning for a folder link that leads outside the input folder (not entered)."""
    return (f"{path}: a symbolic link to the folder {target}, outside the input folder {root}; not "
            "followed (fix: point [input] path at a folder that contains both, or leave it out "
            "with [input] exclude)")


def looping_folder(path: str, target: str) -> str:
    """Warning for a folder link to a folder that contains it (entering it would never end)."""
    return (f"{path}: a symbolic link to {target}, a folder that contains the link; not followed, it "
            "would loop (fix: remove the link, or leave it out with [input] exclude)")
