"""Writing the whole report of an output folder: thumbnails, item pages, index.html.

One streaming pass over the state store's items (sorted by input path), a page of items at a
time, so only a few numbers per item stay in memory (the timings for the percentiles, a status
letter), never the items themselves. The page's missing thumbnails are
made first (one decode pool serves every page, and starts only if some thumbnail is missing),
then the page's data file is written, linking only thumbnails that exist. The statistics the
static part of the page shows are gathered on the way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgflow.report.data import (
    MAX_OUTPUTS_SHOWN,
    ItemsSummary,
    RunView,
    Stats,
    compare_mode,
    input_root,
    iter_items,
    most_recent_inputs,
    run_view,
)
from imgflow.report.files import report_lock, write_if_changed
from imgflow.report.links import REPORT_DIR, is_safe_relpath
from imgflow.report.pages import FORMAT_VERSION, PageWriter, item_payload, write_index
from imgflow.report.thumbs import ThumbnailCache, ThumbnailMaker, ThumbResult, input_key, output_key

MAX_RUNS_SHOWN = 200
MAX_FAILURES_SHOWN = 100
SUMMARY_FILE = "data/summary.json"


@dataclass
class ReportResult:
    """What :func:`write_report` did."""

    path: Path  # report/index.html
    items: int
    thumbs_made: int
    thumbs_failed: int
    seconds: float
    thumb_failures: dict[str, str] = field(default_factory=dict)

    def summary_line(self) -> str:
        failed = f", {self.thumbs_failed} could not be made" if self.thumbs_failed else ""
        return (f"imgflow: report: {self.items} item(s), {self.thumbs_made} new thumbnail(s){failed} "
                f"in {self.seconds:.1f}s -> {self.path}")


def write_report(output_root: str | Path, *, limit: int | None = None, limits: Any = None,
                 workers: int | None = None, timeout_s: float = 60.0, reuse: bool = False) -> ReportResult:
    """Write ``<output_root>/report/index.html`` and its files from the state store.

    ``limit``: only the ``limit`` most recently recorded items (thumbnails of the others are
    kept). ``limits``: the :class:`~imgflow.io.decode.DecodeLimits` thumbnails are decoded under
    (the run's, when a run writes its report). ``reuse``: when no item was recorded since the
    last report, keep its item pages and thumbnails and rewrite only what a run changes (the
    runs, the done/skipped letters): what a run's own report does, so a cron rerun that skips
    100,000 items does not re-read them all. ``imgflow report`` always reads everything.
    """
    from imgflow import __version__
    from imgflow.state import StateStore

    started = time.perf_counter()
    root = Path(output_root)
    report_root = root / REPORT_DIR
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with StateStore(root, readonly=True) as store, report_lock(root):
        runs = [run_view(row) for row in store.iter_runs()]
        latest = runs[0] if runs else None
        latest_id = latest.run_id if latest else None
        key = {"items": list(store.items_marker()), "limit": limit, "format": FORMAT_VERSION, "imgflow": __version__}
        summary = _cached_summary(report_root, key) if reuse else None
        made = ThumbResult()
        if summary is None:
            summary, made = _write_items(store, root, runs, limit, limits, workers, timeout_s)
        summary.relabel(latest_id)
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        write_index(report_root, summary.facets, {"generated": generated, "latestRun": latest_id,
                                                  "compare": compare_mode(latest)})
        write_if_changed(report_root, SUMMARY_FILE,
                         json.dumps({"key": key, "summary": summary.to_json()}, ensure_ascii=True).encode())
        from imgflow.report.render import ReportContext, write_html
        from imgflow.report.training import preview_groups, trainer_views, training_files

        context = ReportContext(
            output_root=root.resolve(), generated=generated, runs=runs[:MAX_RUNS_SHOWN],
            runs_total=len(runs), latest=latest, summary=summary,
            trainers=trainer_views(store.iter_metrics()), previews=preview_groups(root),
            training_files=training_files(root), limit=limit, pipeline_text=_pipeline_text(latest),
        )
        path = write_html(report_root, context)
    return ReportResult(path=path, items=summary.total, thumbs_made=made.made, thumbs_failed=made.failed,
                        seconds=time.perf_counter() - started, thumb_failures=made.failures)


def _write_items(store: Any, root: Path, runs: list[RunView], limit: int | None, limits: Any,
                 workers: int | None, timeout_s: float) -> tuple[ItemsSummary, ThumbResult]:
    """Read every item: make missing thumbnails, write the item pages; what the page sums up."""
    from imgflow.io.decode import DecodeLimits

    latest_id = runs[0].run_id if runs else None
    stages_of_run = {r.run_id: r.stage_ids for r in runs}
    roots = {r.run_id: input_root(r) for r in runs}
    selected = most_recent_inputs(store, limit) if limit is not None else None
    cache = ThumbnailCache(root)
    stats = Stats()
    referenced: set[str] = set()
    failures: list[Any] = []
    pages = PageWriter(root / REPORT_DIR)
    maker = ThumbnailMaker(cache, limits or DecodeLimits(), workers or min(4, os.cpu_count() or 1), timeout_s)
    with maker:
        for batch in _batches(iter_items(store, latest_id, stages_of_run, selected), pages.chunk_size):
            # this page's thumbnails first, so that the page links only files that exist
            maker.make(list(_thumbnail_jobs(batch, roots, cache, root)))
            for item in batch:
                stats.add(item)
                if item.status == "f" and len(failures) < MAX_FAILURES_SHOWN:
                    failures.append(item)
                pages.add(item, item_payload(item, cache, referenced))
    facets = pages.finish(stats)
    if selected is None:
        cache.prune(referenced)
        cache.save_failures(keep=referenced)
    else:
        cache.save_failures(keep=None)
    return stats.summary(latest_id, failures, facets), maker.result


def _cached_summary(report_root: Path, key: dict[str, Any]) -> ItemsSummary | None:
    """The last report's summary of the items, if it was made from exactly these items."""
    try:
        data = json.loads((report_root / SUMMARY_FILE).read_text(encoding="utf-8"))
        if data.get("key") != key or not (report_root / "data" / "index.js").exists():
            return None
        return ItemsSummary.from_json(data["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or from another version: read the items


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pipeline_text(run: RunView | None) -> tuple[str | None, str]:
    """The latest run's pipeline file and where it comes from (the store, or the disk now)."""
    if run is None:
        return None, ""
    if run.pipeline_text is not None:
        return run.pipeline_text, "as recorded when the latest run started"
    try:
        return Path(run.pipeline_path).read_text(encoding="utf-8", errors="replace"), (
            "read from disk now (this store predates recording it): it may differ from what ran")
    except OSError:
        return None, "not recorded, and no longer readable"


def _thumbnail_jobs(items: list[Any], roots: dict[str, Path | None], cache: ThumbnailCache,
                    output_root: Path) -> Iterator[tuple[str, str]]:
    """(key, file) for every thumbnail the report shows that is neither made nor known to fail."""
    for item in items:
        base = roots.get(item.run_id)
        if base is not None and item.decodable and is_safe_relpath(item.relpath):
            key = input_key(item.relpath, item.size, item.mtime_ns)
            if cache.wanted(key):
                path = os.path.join(base, item.relpath)
                if _unchanged(path, item.size, item.mtime_ns):
                    yield key, path
        for out in item.outputs[:MAX_OUTPUTS_SHOWN]:
            if out.is_image and out.href is not None:
                key = output_key(out.relpath, item.updated_at)
                if cache.wanted(key):
                    path = os.path.join(output_root, out.relpath)
                    if os.path.isfile(path):
                        yield key, path


def _unchanged(path: str, size: int, mtime_ns: int) -> bool:
    """The input is still the file its record describes (else its "before" would be wrong)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns
