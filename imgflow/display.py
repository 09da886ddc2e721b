"""Text meant for people: names made safe to print, and long lists of problems cut short.

Two rules every human-facing line follows (the summary line, failure lines, ``imgflow status``,
validation problems, warnings):

* **A name can never forge a line.** A file name may hold a newline, a carriage return, an ANSI
  escape or bytes that are not UTF-8. :func:`safe_text` shows each such character as a visible
  escape (``\\n``, ``\\x1b``, ``\\xe9``), so one record is always one line and a terminal never
  interprets what a file name says. The manifest and ``--json`` output are JSON, which escapes
  on its own, and keep the exact names.
* **A report stays readable however many problems there are.** :func:`capped` keeps the first
  ``limit`` entries and says how many more there were, so a pipeline with a million unknown keys
  prints a screenful, not 255 MB.

Imports nothing heavy: the CLI uses it before any engine module is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

#: How many entries of one list of problems a person is shown before "... and K more".
SHOWN_PROBLEMS = 20

# C0 controls, DEL, C1 controls, the Unicode line and paragraph separators (some terminals and
# log viewers break lines there), and lone surrogates (the undecodable bytes of a file name).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object) -> str:
    """``value`` as one printable line: control characters and undecodable bytes escaped.

    Printable text, including every non-ASCII letter, is left alone: ``café.jpg`` stays
    ``café.jpg``; ``new\\nline.jpg`` becomes ``new\\\\nline.jpg``; the Latin-1 byte of a name that
    is not UTF-8 becomes ``\\\\xe9``.
    """
    return _UNSAFE.sub(_escape, str(value))


def capped(entries: Iterable[str], limit: int = SHOWN_PROBLEMS, more: str = "more") -> list[str]:
    """The first ``limit`` entries, then one ``... and K more`` line when there were more.

    ``entries`` is consumed once (it may be a generator); only ``limit`` of them are kept.
    ``more`` names what was left out: ``"more problems"``, ``"more failures (see ...)"``.
    """
    shown: list[str] = []
    left_out = 0
    for entry in entries:
        if len(shown) < limit:
            shown.append(entry)
        else:
            left_out += 1
    if left_out:
        shown.append(f"... and {left_out:,} {more}")
    return shown


def capped_echo(echo: Callable[[str], None], prefix: str = "imgflow: warning: ",
                limit: int = SHOWN_PROBLEMS) -> Callable[[str], None]:
    """A warning printer for a stream of warnings: the first ``limit``, then one closing line.

    For warnings that arrive one by one while a run goes on (a walk meeting unreadable folders),
    where the total is not known until the end.
    """
    shown = 0

    def warn(message: str) -> None:
        nonlocal shown
        shown += 1
        if shown <= limit:
            echo(safe_text(f"{prefix}{message}"))
        elif shown == limit + 1:
            echo(f"{prefix}more warnings like these are not shown")

    return warn
