"""Links from the report to files of the output root: relative, percent-encoded, never outside.

The report lives in ``<output root>/report/``, so a file of the output root is ``../<relpath>``
from its pages. Every part of the path is percent-encoded from its bytes, so no file name can
turn into a URL scheme (``javascript:``), a query (``?``), a fragment (``#``) or an HTML
attribute break, and a path that would climb out of the output root is never linked at all.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote

REPORT_DIR = "report"
_PLAIN = re.compile(r"[A-Za-z0-9._~/-]+")  # needs no percent-encoding (the usual case, fast)


def is_safe_relpath(relpath: str) -> bool:
    """A relative POSIX path with no ``..``, no NUL and no drive or root: it stays inside."""
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        return False
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    return bool(parts) and ".." not in parts and not parts[0].endswith(":")


def quote_relpath(relpath: str) -> str:
    """Percent-encode each part of ``relpath`` from its file-system bytes (lone surrogates too)."""
    return "/".join(quote(os.fsencode(part), safe="") for part in relpath.split("/") if part not in ("", "."))


def href_from_report(relpath: str) -> str:
    """The link from ``report/index.html`` to the output root's ``relpath``."""
    href = safe_href(relpath)
    if href is None:
        raise ValueError(f"not a path inside the output root: {relpath!r}")
    return href


def safe_href(relpath: str) -> str | None:
    """:func:`href_from_report`, or None for a path that would leave the output root."""
    if not is_safe_relpath(relpath):
        return None
    if _PLAIN.fullmatch(relpath) and "//" not in relpath and "/./" not in relpath and relpath[:2] != "./":
        return "../" + relpath
    return "../" + quote_relpath(relpath)
