"""The report's item data: small script files the page loads lazily, a page of items at a time.

Browsers refuse ``fetch()`` of a ``file://`` URL, but load ``<script src>`` from the same
folder, so the data is JavaScript calling back into the page: ``data/index.js`` holds what the
filters need for every item (one status letter per item, the failures sparsely, each folder as
ranges of item positions), and ``data/items-NNNNN.js`` hold the items themselves, ``CHUNK`` per
file, in input-path order. The page loads the index, works out which positions the filters
select, and loads only the chunk files that hold the rows it shows. For 100,000 items that is
about 100 KB of index plus 2 to 50 small files per page shown, whatever the output's size.

Data files hold JSON (ASCII-only, so any file name round-trips); the page puts every string into
the document as text, never as markup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgflow.report.data import MAX_OUTPUTS_SHOWN, ItemView, Stats
from imgflow.report.files import write_if_changed
from imgflow.report.thumbs import ThumbnailCache, input_key, output_key, thumb_relpath

CHUNK = 200
DATA_DIR = "data"
FORMAT_VERSION = 1


def chunk_name(index: int) -> str:
    return f"{DATA_DIR}/items-{index:05d}.js"


def _js_call(function: str, *args: Any) -> bytes:
    body = ", ".join(json.dumps(a, ensure_ascii=True, separators=(",", ":")) for a in args)
    return f"imgflowReport.{function}({body});\n".encode("ascii")


def item_payload(item: ItemView, cache: ThumbnailCache, referenced: set[str]) -> dict[str, Any]:
    """One item as the page's row data; thumbnails only where the file exists."""
    in_key = input_key(item.relpath, item.size, item.mtime_ns)
    referenced.add(in_key)
    outputs = []
    for out in item.outputs[:MAX_OUTPUTS_SHOWN]:
        thumb = None
        if out.is_image and out.href is not None:
            key = output_key(out.relpath, item.updated_at)
            referenced.add(key)
            thumb = thumb_relpath(key) if cache.has(key) else None
        outputs.append([out.relpath, out.href, thumb])
    payload: dict[str, Any] = {  # no done/skipped letter: data/index.js has it (it depends on the latest run)
        "p": item.relpath,
        "i": thumb_relpath(in_key) if cache.has(in_key) else None,
        "o": outputs,
        "t": [round(item.timings[k] * 1000, 1) if k in item.timings else None
              for k in ("decode_s", "stages_s", "write_s")],
        "u": item.updated_at,
        "z": item.meta_text,
    }
    if len(item.outputs) > len(outputs):
        payload["x"] = len(item.outputs) - len(outputs)
    if item.code is not None:
        payload.update(c=item.code, m=item.message, g=item.step)
    if item.results_text:
        payload["r"] = item.results_text
    if item.boxes:
        payload["b"] = item.boxes
    return payload


class PageWriter:
    """Collects item payloads in order and writes them ``CHUNK`` per file, then the index."""

    def __init__(self, report_root: Path) -> None:
        self.report_root = Path(report_root)
        self.chunk_size = CHUNK  # read once, so one report never mixes two sizes
        self._buffer: list[dict[str, Any]] = []
        self._chunks = 0
        self._status: list[str] = []
        self._failures: list[tuple[int, str | None, str | None]] = []
        self.written = 0  # files actually rewritten (the rest were unchanged)
        self.bytes = 0

    def add(self, item: ItemView, payload: dict[str, Any]) -> None:
        self._status.append(item.status)
        if item.status == "f":
            self._failures.append((item.position, item.code, item.step))
        self._buffer.append(payload)
        if len(self._buffer) >= self.chunk_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        self._write(chunk_name(self._chunks), _js_call("chunk", self._chunks, self._buffer))
        self._chunks += 1
        self._buffer = []

    def _write(self, relpath: str, data: bytes) -> None:
        self.bytes += len(data)
        if write_if_changed(self.report_root, relpath, data):
            self.written += 1

    def finish(self, stats: Stats) -> dict[str, Any]:
        """Write the last chunk, remove chunk files left from a larger report; the filters' data."""
        self._flush()
        self._remove_stale_chunks()
        codes = sorted(stats.by_code)
        steps = sorted(stats.by_step)
        return {
            "version": FORMAT_VERSION,
            "total": len(self._status),
            "chunk": self.chunk_size,
            "chunks": self._chunks,
            "status": "".join(self._status),
            "codes": codes,
            "steps": steps,
            "failures": [[pos, codes.index(code or "unknown"), steps.index(step or "other")]
                         for pos, code, step in self._failures],
            "folders": [[name, ranges] for name, ranges in sorted(stats.folders.items())],
        }

    def _remove_stale_chunks(self) -> None:
        folder = self.report_root / DATA_DIR
        for path in folder.glob("items-*.js"):
            try:
                number = int(path.stem.split("-", 1)[1])
            except ValueError:
                continue
            if number >= self._chunks:
                path.unlink(missing_ok=True)


def write_index(report_root: Path, facets: dict[str, Any], meta: dict[str, Any]) -> None:
    """``data/index.js``: the filters' data and what the page needs to know about the report."""
    write_if_changed(Path(report_root), f"{DATA_DIR}/index.js", _js_call("index", {**facets, **meta}))
