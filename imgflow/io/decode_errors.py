"""Decode failures as ItemErrors a person can act on, and a format guess from magic bytes.

Every message names the file, what was wrong, and the fix (the setting to raise, or what to do
with the file). Nothing here runs a decoder except :func:`header_problem`, which reruns the
header parser Pillow already ran, only to get its reason.
"""

from __future__ import annotations

import io
import re
import signal
import warnings
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from imgflow.errors import ConfigError, ImgflowError, ItemError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.memory import DecodeCost


class Limits(Protocol):
    """The caps the messages quote (an :class:`imgflow.io.decode.DecodeLimits`)."""

    max_pixels: int
    max_file_bytes: int
    memory_mb: int | None
    formats: tuple[str, ...]


def too_large(source: str, size: int, limits: Limits) -> ItemError:
    """file_too_large, naming the size, the cap and the setting that raises it."""
    cap_mb = limits.max_file_bytes / 1024**2
    return ItemError(
        "file_too_large",
        f"{source}: file is {size:,} bytes ({size / 1024**2:.1f} MB), over the cap of "
        f"{limits.max_file_bytes:,} bytes ({cap_mb:g} MB) (fix: raise [run] max_file_mb if the "
        "file is genuine)",
    )


def pixel_bomb(source: str, limits: Limits, detail: str) -> ItemError:
    """Pillow refused a size (on open, or while loading a frame or tile): say it in our terms."""
    found = re.search(r"Image size \((\d+) pixels\)", detail)
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ItemError(
        "too_many_pixels",
        f"{source}: image is {size}, over the cap of {limits.max_pixels:,} pixels (fix: raise "
        "[run] max_pixels if the file is genuine, or remove it: a small file claiming huge "
        "dimensions is a decompression bomb)",
    )


def memory_error(source: str, limits: Limits) -> ItemError:
    """memory_limit, naming the per-worker cap that was hit."""
    cap = f"the per-worker cap of {limits.memory_mb} MB" if limits.memory_mb else "available memory"
    return ItemError(
        "memory_limit",
        f"{source}: decoding needed more than {cap} (fix: raise [run] worker_memory_mb, lower "
        "[run] max_pixels to refuse such files up front, or remove the file)",
    )


def decode_error(source: str, exc: BaseException) -> ItemError:
    """decode_error, keeping the exception type and text (they say what was damaged)."""
    text = str(exc) or "no detail"
    return ItemError(
        "decode_error",
        f"{source}: cannot decode: {type(exc).__name__}: {text} (fix: the file is damaged or "
        "truncated; copy or export it again)",
    )


def unidentified(source: str, data: bytes, limits: Limits) -> ItemError:
    """Pillow found no allowed format: say what the file looks like, and whether that is damage."""
    detected = sniff_format(data)
    if detected in limits.formats:
        return ItemError(
            "decode_error",
            f"{source}: starts like a {detected} file but its header is damaged "
            f"({header_problem(data, detected)}) (fix: copy or export the file again)",
        )
    return format_refused(source, detected, limits.formats)


def format_refused(source: str, detected: str | None, formats: tuple[str, ...]) -> ItemError:
    """unsupported_format, in the one wording every format refusal uses.

    ``detected`` is the format the file is (Pillow's name, or a guess from its magic bytes), or
    None when it looks like no image at all.
    """
    what = f"a file in {detected} format" if detected else "not a recognised image"
    return ItemError(
        "unsupported_format",
        f"{source}: {what}; imgflow reads {', '.join(formats)} (fix: convert the file to one of "
        "those, or leave it out with [input] exclude)",
    )


def header_problem(data: bytes, fmt: str) -> str:
    """Why ``fmt``'s opener rejected the header (Image.open keeps that reason to itself).

    Runs the same header parser Image.open already ran on these bytes, only to get its message.
    """
    opener = Image.OPEN.get(fmt)
    if opener is None:
        return "no detail"
    try:
        opener[0](io.BytesIO(data), "").close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no detail"


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
    (b"BM", 0, "BMP"),
    (b"WEBP", 8, "WEBP"),
    (b"%!PS", 0, "EPS"),
    (b"\xc5\xd0\xd3\xc6", 0, "EPS"),
    (b"%PDF", 0, "PDF"),
    (b"8BPS", 0, "PSD"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG2000"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"qoif", 0, "QOI"),
    (b"icns", 0, "ICNS"),
    (b"DDS ", 0, "DDS"),
    (b"SIMPLE  ", 0, "FITS"),
    (b"<svg", 0, "SVG"),
    (b"<?xml", 0, "XML/SVG"),
)


def sniff_format(data: bytes) -> str | None:
    """A format name guessed from magic bytes, without running any decoder (for messages)."""
    for magic, offset, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if len(data) >= 2 and data[:1] == b"P" and data[1:2] in b"123456":
        return "PPM"
    return None


_CODE_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def warning_notes(caught: list[warnings.WarningMessage], notes: list[str]) -> list[str]:
    """Pillow's warnings (corrupt EXIF and the like) as short, de-duplicated notes."""
    seen = set(notes)
    extra: list[str] = []
    for item in caught:
        if issubclass(item.category, _CODE_WARNINGS):
            continue  # about Pillow's API, not about this file
        text = f"{item.category.__name__}: {str(item.message).strip()}"[:200]
        if text not in seen:
            seen.add(text)
            extra.append(text)
    return extra


# ---------------------------------------------------------------- the decode pool's own messages


def over_budget(path: str, cost: DecodeCost, need: int, capacity: int) -> str:
    """Why an image is refused by the memory budget, and what to change."""
    mib = 1024 * 1024
    need_mb, cap_mb = -(-need // mib), capacity // mib
    shape = cost.shape
    return (f"{path}: a {shape.width}x{shape.height} image needs about {need_mb:,} MB to decode and "
            f"process, more than the {cap_mb:,} MB one image may use in this run (fix: raise [run] "
            f"max_memory_mb to at least {need_mb}, or lower [run] max_pixels so such images are "
            "refused from their header)")


def unfit_error(cap_mb: int | None, in_use_mb: int | None, detail: str) -> ImgflowError:
    """The configuration error for a decode worker that cannot work (see ``_await_ready``)."""
    if cap_mb is None:
        return ImgflowError(f"a decode worker could not start: {detail} (fix: check free memory and "
                            "process limits; rerun with IMGFLOW_DEBUG=1 for details)")
    uses = f" (a worker uses {in_use_mb} MB of address space before it decodes anything)" if in_use_mb else ""
    floor = max(1024, -(-((in_use_mb or 200) + 256) // 256) * 256)
    return ConfigError(f"[run] worker_memory_mb = {cap_mb} is too low for a decode worker: {detail}{uses}, "
                       f"so no image could be decoded (fix: raise worker_memory_mb to {floor} or more, "
                       "or remove it for the default 4096)")


def describe_exit(exitcode: int | None) -> str:
    """'was killed by SIGSEGV' / 'exited with status 3', for crash messages."""
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (likely the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"
