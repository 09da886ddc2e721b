"""Thumbnails for the report, made incrementally with the engine's own decoder and encoder.

Inputs come from folders nobody curates, so a thumbnail is decoded exactly as a run decodes:
in the decode worker pool (a crashing or hanging decoder costs one thumbnail), under the run's
caps (file size, pixel count, worker memory), with JPEGs decoded at 1/2 to 1/8 scale when that
still leaves 256 pixels. It is then shrunk and written as a JPEG with :func:`encode_image` and
:func:`atomic_write`, so a report killed half-way leaves no torn file.

Incremental: a thumbnail is named by a hash of what it shows (the input's path, size and
mtime; an output's path and the time its item was recorded), so a rerun only makes thumbnails
for new or changed items and never has to open an old one to know it is current. A thumbnail
that could not be made is remembered with its reason in ``thumbs/failed.json``, so a hostile
file is tried once, not at every report. Thumbnails no item refers to any more are removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.report.links import REPORT_DIR

THUMB_SIZE = 256  # longer edge, pixels
THUMB_QUALITY = 82
THUMBS_DIR = "thumbs"  # inside the report folder
FAILED_FILE = "failed.json"


def input_key(relpath: str, size: int, mtime_ns: int) -> str:
    """Identity of an input file's thumbnail: changes when the file does."""
    return _digest(f"in\0{relpath}\0{size}\0{mtime_ns}")


def output_key(relpath: str, updated_at: str) -> str:
    """Identity of an output's thumbnail: changes whenever its item is recorded again."""
    return _digest(f"out\0{relpath}\0{updated_at}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def thumb_relpath(key: str) -> str:
    """Where a thumbnail lives, relative to the report folder (256 sub-folders: no huge folder)."""
    return f"{THUMBS_DIR}/{key[:2]}/{key}.jpg"


def thumbnail_bytes(pixels: Any, size: int = THUMB_SIZE, quality: int = THUMB_QUALITY) -> bytes:
    """Decoded pixels (H, W, 3|4, uint8|uint16) -> JPEG bytes at most ``size`` on the longer edge."""
    import numpy as np
    from PIL import Image

    from imgflow.io.encode import encode_image

    if pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    picture.thumbnail((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    levels = np.asarray(picture, dtype=np.float32) / 255.0
    alpha = levels[..., 3] if levels.shape[-1] == 4 else None
    return encode_image(levels[..., :3], alpha, "jpeg", quality, 8)


@dataclass
class ThumbResult:
    """What one call of :meth:`ThumbnailCache.make` did."""

    made: int = 0
    failed: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # key -> reason (new ones)


class ThumbnailCache:
    """The thumbnails under ``<output root>/report/thumbs``: which exist, which failed, making more."""

    def __init__(self, output_root: Path) -> None:
        self.output_root = Path(output_root)
        self.folder = self.output_root / REPORT_DIR / THUMBS_DIR
        self.existing = set(self._scan())
        self.failed = self._load_failed()

    def _scan(self) -> Iterator[str]:
        """Keys of the thumbnail files present (one directory listing per sub-folder)."""
        if not self.folder.is_dir():
            return
        for sub in os.scandir(self.folder):
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub.path):
                if entry.name.endswith(".jpg") and entry.is_file(follow_symlinks=False):
                    yield entry.name[:-4]

    def _load_failed(self) -> dict[str, str]:
        try:
            data = json.loads((self.folder / FAILED_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def has(self, key: str) -> bool:
        return key in self.existing

    def wanted(self, key: str) -> bool:
        """True when the thumbnail is neither made nor known to fail."""
        return key not in self.existing and key not in self.failed

    def fail(self, key: str, reason: str, result: ThumbResult) -> None:
        self.failed[key] = reason
        result.failures[key] = reason
        result.failed += 1

    def save_failures(self, keep: set[str] | None) -> None:
        """Write ``failed.json`` (only the keys in ``keep``, when given), if it changed."""
        from imgflow.report.files import write_if_changed

        failed = {k: v for k, v in self.failed.items() if keep is None or k in keep}
        if not failed and not (self.folder / FAILED_FILE).exists():
            return
        self.failed = failed
        text = json.dumps(failed, indent=0, sort_keys=True, ensure_ascii=True)
        write_if_changed(self.output_root / REPORT_DIR, f"{THUMBS_DIR}/{FAILED_FILE}", text.encode())

    def prune(self, keep: set[str]) -> int:
        """Remove thumbnails whose key is not in ``keep``; how many were removed."""
        removed = 0
        for key in list(self.existing - keep):
            try:
                os.unlink(self.folder / key[:2] / f"{key}.jpg")
                removed += 1
            except FileNotFoundError:
                pass
            self.existing.discard(key)
        return removed


class ThumbnailMaker:
    """Makes thumbnails for a cache, batch after batch, with one decode pool for all batches.

    The pool (``limits``: the run's :class:`~imgflow.io.decode.DecodeLimits`, plus a DCT-scaling
    hint for the thumbnail size) starts on the first batch that has work, so a report with
    nothing new starts no process. Shrinking, encoding and the fsyncs of ``atomic_write`` run
    in threads (Pillow and fsync release the GIL) while the pool decodes the next files.
    """

    def __init__(self, cache: ThumbnailCache, limits: Any, workers: int, timeout_s: float) -> None:
        self.cache = cache
        self.limits = limits
        self.workers = workers
        self.timeout_s = timeout_s
        self.result = ThumbResult()
        self._pool: Any = None
        self._writers: ThreadPoolExecutor | None = None

    def __enter__(self) -> ThumbnailMaker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._writers is not None:
            self._writers.shutdown(wait=True)
        if self._pool is not None:
            self._pool.close()

    def _start(self) -> None:
        from imgflow.io.decodepool import DecodePool
        from imgflow.stage import DecodeHint

        limits = dataclasses.replace(self.limits, hint=DecodeHint(edge="longer", size=THUMB_SIZE))
        self._pool = DecodePool(workers=self.workers, limits=limits, timeout_s=self.timeout_s)
        self._writers = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imgflow-thumbs")

    def make(self, jobs: list[tuple[str, Path]]) -> None:
        """Decode each ``(key, path)`` and write its thumbnail; failures are remembered."""
        from imgflow.errors import ItemError

        if not jobs:
            return
        if self._pool is None:
            self._start()
        assert self._writers is not None
        in_flight: deque[tuple[str, Future]] = deque()
        for key, outcome, _seconds in self._pool.imap_unordered(jobs):
            if isinstance(outcome, ItemError):
                self.cache.fail(key, f"{outcome.code}: {outcome.message}", self.result)
                continue
            in_flight.append((key, self._writers.submit(self._write, key, outcome.pixels)))
            while len(in_flight) > 2 * self.workers or (in_flight and in_flight[0][1].done()):
                self._settle(*in_flight.popleft())
        while in_flight:
            self._settle(*in_flight.popleft())

    def _write(self, key: str, pixels: Any) -> None:
        from imgflow.io.atomic import atomic_write

        atomic_write(self.cache.output_root / REPORT_DIR, thumb_relpath(key), thumbnail_bytes(pixels))

    def _settle(self, key: str, future: Future) -> None:
        from imgflow.errors import ItemError

        exc = future.exception()
        if exc is None:
            self.cache.existing.add(key)
            self.result.made += 1
        elif isinstance(exc, (ItemError, OSError, ValueError)):
            self.cache.fail(key, f"write_error: {getattr(exc, 'message', exc)}", self.result)
        else:
            raise exc
